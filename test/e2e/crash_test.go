package e2e

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/vm"
)

// envInt reads a positive count from the environment (def when unset).
func envInt(t testing.TB, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		t.Fatalf("%s=%q: want a count", name, v)
	}
	return n
}

// crashPoint is one place the daemon is killed: the crash hook fires when
// operation op reaches step.
type crashPoint struct{ op, step string }

func (p crashPoint) String() string { return p.op + ":" + p.step }

// Every step of create, start, stop (the shutdown and the teardown it
// runs) and delete (the teardown and the destroy steps).
var (
	createSteps   = []string{vm.StepArtifacts, vm.StepLease, vm.StepRootDisk, vm.StepWorkDisk, vm.StepGuestConfig, vm.StepTap, vm.StepNAT, vm.StepVMM, vm.StepDNS, vm.StepSSH}
	teardownSteps = []string{vm.StepRelease, vm.StepUnPorts, vm.StepUnNAT, vm.StepUntap, vm.StepUnDNS, vm.StepDetach, vm.StepRunDir}
	destroySteps  = []string{vm.StepRemove, vm.StepForgetKey, vm.StepUnlease}
)

func stopPoints() []crashPoint {
	ps := []crashPoint{{vm.OpStop, vm.StepShutdown}}
	for _, s := range teardownSteps {
		ps = append(ps, crashPoint{vm.OpTeardown, s})
	}
	return ps
}

func deletePoints() []crashPoint {
	var ps []crashPoint
	for _, s := range destroySteps {
		ps = append(ps, crashPoint{vm.OpDestroy, s})
	}
	for _, s := range teardownSteps {
		ps = append(ps, crashPoint{vm.OpTeardown, s})
	}
	return ps
}

// crashAt runs the CLI command args against a daemon that kills itself
// (SIGKILL) when p is reached, then starts a clean daemon, which
// reconciles. It fails the test when the command succeeded or the daemon
// did not die.
func (e *env) crashAt(p crashPoint, args ...string) {
	e.t.Helper()
	e.stopDaemon(syscall.SIGTERM)
	e.startDaemon("BANGER_TEST_CRASH_AT=" + p.String())
	out, serr, err := e.banger(args...)
	if err == nil {
		e.t.Fatalf("banger %s survived a crash at %s: %s", strings.Join(args, " "), p, out)
	}
	if !e.waitDaemonExit(60 * time.Second) {
		e.t.Fatalf("the daemon did not crash at %s (banger %s said: %v %s)", p, strings.Join(args, " "), err, serr)
	}
	e.startDaemon()
}

// assertSettled checks that every VM is running (and, with reach, answers
// ssh) or cleanly stopped or in error with a reason: nothing is left
// creating, starting or stopping after reconcile.
func (e *env) assertSettled(when string, reach bool) {
	e.t.Helper()
	for _, v := range e.list() {
		switch v.State {
		case model.StateRunning:
			if v.IP == "" || v.Runtime.PID == 0 || v.Runtime.Tap == "" {
				e.t.Errorf("%s: running VM %s lacks ip/pid/tap: %+v", when, v.Name, v.Runtime)
			}
			if reach {
				if out, err := e.ssh(v.IP, "true"); err != nil {
					e.t.Errorf("%s: running VM %s does not answer ssh: %v %s", when, v.Name, err, out)
				}
			}
		case model.StateStopped:
			if v.Runtime.PID != 0 || v.Runtime.Tap != "" || v.Runtime.RuntimeDir != "" || v.Runtime.NATActive {
				e.t.Errorf("%s: stopped VM %s still holds %+v", when, v.Name, v.Runtime)
			}
		case model.StateError:
			if v.Error == "" {
				e.t.Errorf("%s: VM %s is in error without a reason", when, v.Name)
			}
			if v.Runtime.PID != 0 || v.Runtime.Tap != "" {
				e.t.Errorf("%s: VM %s in error still holds pid %d tap %q", when, v.Name, v.Runtime.PID, v.Runtime.Tap)
			}
		default:
			e.t.Errorf("%s: VM %s is %s after reconcile", when, v.Name, v.State)
		}
	}
}

// TestE2ECrashLoop kills the daemon (SIGKILL, through the crash hook) at
// every step of create, start, stop and delete, restarts it after each
// kill and lets reconcile run, then checks the host with the leak checker
// (taps, loops, nft elements and rules, VMM processes, files, leases, DNS)
// and that every VM is running, stopped or in error, never half-way; VMs
// that run answer ssh, and every VM can be deleted at the end.
//
// One pass (38 kills, 10 boots, never more than two guests at once): 10
// create kills (fresh VMs, with NAT); a survivor VM boots and must stay
// running through every later restart; 8 stop kills (the shutdown and each
// teardown step; the VM is booted again before each); 10 start kills on
// that provisioned VM, which then starts for real, and both VMs answer
// ssh; 10 delete kills (destroy steps on the two running VMs and a
// rolled-back one, teardown steps on the other rolled-back VMs), each VM
// then gone or deleted again. CI runs one pass; BANGER_CRASH_PASSES=N
// (`make soak`) runs N.
func TestE2ECrashLoop(t *testing.T) {
	passes := envInt(t, "BANGER_CRASH_PASSES", 1)
	e := newEnv(t, envOptions{TapPool: 2})
	kills := 0
	began := time.Now()
	for pass := 0; pass < passes; pass++ {
		passStart := time.Now()
		name := func(kind string, i int) string { return fmt.Sprintf("%s%d-%d", kind, pass, i) }

		// Create: each step kills a fresh VM's first start.
		var created []string
		for i, step := range createSteps {
			n := name("c", i)
			e.crashAt(crashPoint{vm.OpCreate, step}, "vm", "create", "--name", n, "--nat")
			kills++
			got := e.show(n)
			if got.State != model.StateError || !strings.Contains(got.Error, `"`+step+`"`) || got.IP != "" || got.Runtime.Tap != "" || got.Runtime.PID != 0 {
				t.Errorf("pass %d, after a crash at create:%s: %s is %s (%q) ip %q tap %q pid %d", pass, step, n, got.State, got.Error, got.IP, got.Runtime.Tap, got.Runtime.PID)
			}
			e.assertSettled("after a crash at create:"+step, false)
			e.assertNoLeaks(fmt.Sprintf("pass %d, after a crash at create:%s", pass, step))
			created = append(created, n)
		}
		t.Logf("pass %d: %d create kills in %s", pass, len(createSteps), time.Since(passStart).Round(time.Second))

		// A survivor boots and runs through every later restart: reconcile
		// must keep it running and reachable.
		survivor, r := created[0], created[1]
		bootStart := time.Now()
		e.must("vm", "start", survivor)
		t.Logf("pass %d: survivor booted in %s", pass, time.Since(bootStart).Round(time.Second))
		checkSurvivor := func(when string) {
			if got := e.show(survivor); got.State != model.StateRunning {
				t.Errorf("pass %d, %s: the survivor %s is %s, want running (a restart must not touch it)", pass, when, survivor, got.State)
			}
		}

		// Stop: the shutdown and each teardown step. One VM (r) is booted
		// for each (only two guests run at a time: idle TCG guests cost
		// CPU too).
		phase := time.Now()
		for _, p := range stopPoints() {
			e.must("vm", "start", r)
			e.crashAt(p, "vm", "stop", r)
			kills++
			if got := e.show(r); got.State != model.StateStopped && got.State != model.StateError {
				t.Errorf("pass %d, after a crash at %s during stop: %s is %s", pass, p, r, got.State)
			}
			checkSurvivor("after a crash at " + p.String())
			e.assertSettled("after a crash at "+p.String()+" during stop", false)
			e.assertNoLeaks(fmt.Sprintf("pass %d, after a crash at %s during stop", pass, p))
		}
		t.Logf("pass %d: %d stop kills (a boot each) in %s", pass, len(stopPoints()), time.Since(phase).Round(time.Second))

		// Start: each step on the provisioned, stopped r.
		phase = time.Now()
		for _, step := range createSteps {
			e.crashAt(crashPoint{vm.OpStart, step}, "vm", "start", r)
			kills++
			if got := e.show(r); got.State != model.StateError && got.State != model.StateStopped {
				t.Errorf("pass %d, after a crash at start:%s: %s is %s", pass, step, r, got.State)
			}
			checkSurvivor("after a crash at start:" + step)
			e.assertSettled("after a crash at start:"+step, false)
			e.assertNoLeaks(fmt.Sprintf("pass %d, after a crash at start:%s", pass, step))
		}
		t.Logf("pass %d: %d start kills in %s", pass, len(createSteps), time.Since(phase).Round(time.Second))

		// r starts for real after all that, and both guests answer.
		e.must("vm", "start", r)
		if got := e.show(r); got.State != model.StateRunning || got.Error != "" {
			t.Fatalf("pass %d: start after the start kills: %+v", pass, got)
		}
		e.assertSettled("after the start kills", true)
		e.assertNoLeaks(fmt.Sprintf("pass %d, after the start kills", pass))

		// Delete: the destroy steps on the two running, provisioned VMs and
		// a rolled-back one, the teardown steps on the other rolled-back
		// VMs; the VM is then gone or deletes again.
		phase = time.Now()
		victims := append([]string{r, survivor}, created[2:]...)
		for i, p := range deletePoints() {
			v := victims[i]
			e.crashAt(p, "vm", "delete", v)
			kills++
			e.assertSettled("after a crash at "+p.String()+" during delete", false)
			if out, serr, err := e.banger("vm", "delete", v); err != nil && !strings.Contains(serr, "not found") {
				t.Errorf("pass %d, after a crash at %s: delete %s again: %v %s %s", pass, p, v, err, out, serr)
			}
			e.assertNoLeaks(fmt.Sprintf("pass %d, after a crash at %s during delete", pass, p))
		}
		t.Logf("pass %d: %d delete kills in %s", pass, len(deletePoints()), time.Since(phase).Round(time.Second))
		if vms := e.list(); len(vms) != 0 {
			t.Errorf("pass %d: %d VMs left after deleting all", pass, len(vms))
		}
		e.assertNoLeaks(fmt.Sprintf("pass %d, after deleting all", pass))
		t.Logf("pass %d: done in %s (%d kills so far)", pass, time.Since(passStart).Round(time.Second), kills)
		if t.Failed() {
			break
		}
	}
	t.Logf("crash loop: %d pass(es), %d daemon kills, %s", passes, kills, time.Since(began).Round(time.Second))
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
