package e2e

import (
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/vm"
)

// TestE2ECrashDuringCreate kills the daemon with SIGKILL in the middle of a
// create, at several steps (before the root disk, the work disk, the tap,
// the NAT, the VMM, the DNS record and the ssh wait: the last two with the
// VMM already running), restarts it, and checks that reconcile rolled the
// create back: the VM is in state error naming the step, and no tap, lease,
// loop, process, file or nft element is left. One rolled-back VM is then
// started for real, and the daemon is killed again at the start of its
// stop: after the restart the stop is finished. One boot.
func TestE2ECrashDuringCreate(t *testing.T) {
	e := newEnv(t, envOptions{TapPool: 1})
	steps := []string{vm.StepRootDisk, vm.StepWorkDisk, vm.StepTap, vm.StepNAT, vm.StepVMM, vm.StepDNS, vm.StepSSH}
	var last string
	for i, step := range steps {
		name := fmt.Sprintf("c%d", i)
		e.stopDaemon(syscall.SIGTERM)
		e.startDaemon("BANGER_TEST_CRASH_AT=" + vm.OpCreate + ":" + step)
		out, serr, err := e.banger("vm", "create", "--name", name, "--nat")
		if err == nil {
			t.Fatalf("create %s survived a crash at %s: %s", name, step, out)
		}
		if !e.waitDaemonExit(30 * time.Second) {
			t.Fatalf("the daemon did not crash at %s (create said: %v %s)", step, err, serr)
		}
		e.startDaemon()
		got := e.show(name)
		if got.State != model.StateError || !strings.Contains(got.Error, `"`+step+`"`) || got.IP != "" || got.Runtime.Tap != "" || got.Runtime.PID != 0 {
			t.Errorf("after a crash at %s: %s is %s (%q) ip %q tap %q pid %d", step, name, got.State, got.Error, got.IP, got.Runtime.Tap, got.Runtime.PID)
		}
		e.assertNoLeaks("after a crash at " + step)
		last = name
	}

	// The rolled-back VM starts normally.
	e.must("vm", "start", last)
	running := e.show(last)
	if running.State != model.StateRunning || running.Error != "" {
		t.Fatalf("start after rollback: %+v", running)
	}
	e.mustSSH(running.IP, "true")

	// A crash as the stop begins: the restarted daemon finishes the stop.
	e.stopDaemon(syscall.SIGTERM)
	e.startDaemon("BANGER_TEST_CRASH_AT=" + vm.OpStop + ":" + vm.StepShutdown)
	if _, _, err := e.banger("vm", "stop", last); err == nil {
		t.Fatal("stop survived the crash")
	}
	if !e.waitDaemonExit(30 * time.Second) {
		t.Fatal("the daemon did not crash at the stop")
	}
	e.startDaemon()
	if got := e.show(last); got.State != model.StateStopped || got.Runtime.PID != 0 {
		t.Errorf("after a crash during stop: %+v", got)
	}
	e.assertNoLeaks("after a crash during stop")
	e.must("vm", "prune", "-f")
	if vms := e.list(); len(vms) != 0 {
		t.Errorf("after prune: %d VMs left", len(vms))
	}
	e.assertNoLeaks("after prune")
}

// TestE2EParallelCreatesAndPrune creates 8 VMs at once (records, leases on
// start), while racing second creates of 4 of the names (exactly one create
// per name wins, the others get already_exists), starts two of them
// concurrently for real, then prunes: only the 6 VMs that are not running
// go. Two boots.
func TestE2EParallelCreatesAndPrune(t *testing.T) {
	e := newEnv(t, envOptions{TapPool: 2})
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins, conflicts := map[string]int{}, 0
	for i := 0; i < 12; i++ {
		name := fmt.Sprintf("p%d", i%8)
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, serr, err := e.banger("vm", "create", "--no-start", "--name", name)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				wins[name]++
			case strings.Contains(serr, "already exists"):
				conflicts++
			default:
				t.Errorf("create %s: %v %s", name, err, serr)
			}
		}()
	}
	wg.Wait()
	if len(wins) != 8 || conflicts != 4 {
		t.Fatalf("wins %v, conflicts %d; want 8 names once each and 4 conflicts", wins, conflicts)
	}
	for n, c := range wins {
		if c != 1 {
			t.Errorf("%s created %d times", n, c)
		}
	}

	start := time.Now()
	e.must("vm", "start", "p0", "p1")
	t.Logf("two concurrent starts: %s", time.Since(start).Round(time.Millisecond))
	e.logTimings()
	p0, p1 := e.show("p0"), e.show("p1")
	if p0.State != model.StateRunning || p1.State != model.StateRunning || p0.IP == p1.IP {
		t.Fatalf("after start: %+v %+v", p0, p1)
	}

	out := e.must("vm", "prune", "-f")
	for i := 2; i < 8; i++ {
		if !strings.Contains(out, fmt.Sprintf("p%d deleted", i)) {
			t.Errorf("prune did not delete p%d:\n%s", i, out)
		}
	}
	vms := e.list()
	if len(vms) != 2 {
		t.Fatalf("after prune: %d VMs, want p0 and p1", len(vms))
	}
	for _, v := range vms {
		if v.State != model.StateRunning {
			t.Errorf("%s is %s after prune", v.Name, v.State)
		}
	}
	e.mustSSH(p1.IP, "true")
	e.assertNoLeaks("after prune")
	e.must("vm", "delete", "p0", "p1")
	e.assertNoLeaks("after delete")
}
