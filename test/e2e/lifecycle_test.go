package e2e

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/model"
)

// TestE2ELifecycle drives one VM through create, ssh, a synced marker in
// /root, stop, start (marker still there), stats, logs, kill, set and
// delete, checking for leaks after each teardown. Two boots.
func TestE2ELifecycle(t *testing.T) {
	e := newEnv(t, envOptions{TapPool: 1})
	start := time.Now()
	out := e.must("vm", "create", "--name", "t1")
	t.Logf("create -> ssh ready: %s (%s)", time.Since(start).Round(time.Millisecond), strings.TrimSpace(out))
	vm := e.show("t1")
	if vm.State != model.StateRunning || vm.IP == "" || vm.Runtime.PID == 0 || vm.Runtime.Accel != "tcg" {
		t.Fatalf("after create: %+v", vm)
	}

	// ssh with the system client, banger's key and banger's known_hosts
	// (the host key was pinned before boot: StrictHostKeyChecking=yes).
	if got := e.mustSSH(vm.IP, "hostname; cat /etc/banger/network.env; findmnt -n -o SOURCE /root"); !strings.Contains(got, "t1") ||
		!strings.Contains(got, "ADDRESS="+vm.IP+"/24") || !strings.Contains(got, "/dev/vdb") {
		t.Fatalf("guest view: %q", got)
	}
	marker := "marker-" + randHex(8)
	e.mustSSH(vm.IP, "echo "+marker+" > /root/marker && test -s /root/.ssh/authorized_keys && sync")

	t0 := time.Now()
	e.must("vm", "stop", "t1")
	t.Logf("stop (agent halt: sync, read-only, reset): %s", time.Since(t0).Round(time.Millisecond))
	if log := e.daemonLog(); strings.Contains(log, "did not power off in time") || strings.Contains(log, "killing the VMM") ||
		strings.Contains(log, "poweroff over ssh") || strings.Contains(log, "fast stop") {
		t.Errorf("the guest did not power off by itself:\n%s\n--- guest console ---\n%s", tail(log, 3000), e.consoleTail(vm.ID, 4000))
	}
	if out := e.must("vm", "stop", "t1"); !strings.Contains(out, "t1 is not running") {
		t.Errorf("second stop: %q", out)
	}
	stopped := e.show("t1")
	if stopped.State != model.StateStopped || stopped.Runtime.PID != 0 || stopped.Runtime.Tap != "" || stopped.IP != vm.IP {
		t.Fatalf("after stop: %+v", stopped)
	}
	e.assertNoLeaks("after stop")

	t0 = time.Now()
	e.must("vm", "start", "t1")
	t.Logf("start of the stopped VM -> ssh ready: %s", time.Since(t0).Round(time.Millisecond))
	again := e.show("t1")
	if again.IP != vm.IP || again.MAC != vm.MAC || again.State != model.StateRunning {
		t.Fatalf("after start: %+v (before: ip %s mac %s)", again, vm.IP, vm.MAC)
	}
	if got := e.mustSSH(vm.IP, "cat /root/marker"); got != marker {
		t.Fatalf("marker after stop/start: %q, want %q", got, marker)
	}
	// The fast stop left /root clean: its journal was written out by the
	// read-only remount, so the kernel had nothing to recover.
	if got := e.mustSSH(vm.IP, "dmesg | grep -i 'vdb' | grep -i recover || true"); got != "" {
		t.Errorf("/root needed a journal recovery after the fast stop: %q", got)
	}

	var st api.VMStats
	if err := json.Unmarshal([]byte(e.must("vm", "stats", "--json", "t1")), &st); err != nil {
		t.Fatal(err)
	}
	if st.PID != again.Runtime.PID || st.CPUSeconds <= 0 || st.RSSBytes < 16<<20 || st.WorkDisk.SizeBytes != 1<<30 ||
		st.RootDisk.AllocatedBytes <= 0 {
		t.Errorf("stats: %+v", st)
	}
	if logs := e.must("vm", "logs", "t1"); !strings.Contains(logs, "banger: starting t1") {
		t.Errorf("vm logs lacks the start marker: %q", tail(logs, 500))
	}

	e.must("vm", "kill", "t1")
	killed := e.show("t1")
	if killed.State != model.StateStopped || killed.Runtime.PID != 0 {
		t.Fatalf("after kill: %+v", killed)
	}
	e.assertNoLeaks("after kill")

	// set while stopped: grow /root, change vcpu/memory/nat.
	e.must("vm", "set", "t1", "--disk-size", "2G", "--vcpu", "2", "--memory", "640M", "--nat")
	set := e.show("t1")
	if set.DiskSizeMiB != 2048 || set.VCPU != 2 || set.MemoryMiB != 640 || !set.NAT {
		t.Fatalf("after set: %+v", set)
	}
	if fi, err := os.Stat(set.Runtime.WorkDisk); err != nil || fi.Size() != 2<<30 {
		t.Fatalf("work disk after grow: %v %v", fi, err)
	}
	if _, serr, err := e.banger("vm", "set", "t1", "--disk-size", "1G"); err == nil || !strings.Contains(serr, "shrink") {
		t.Errorf("shrinking was not refused: %v %s", err, serr)
	}

	e.must("vm", "delete", "t1")
	if _, serr, err := e.banger("vm", "show", "t1"); err == nil || !strings.Contains(serr, "no VM") {
		t.Errorf("show after delete: %v %s", err, serr)
	}
	e.assertNoLeaks("after delete")
	if kh, _ := os.ReadFile(e.layout.SSHDir() + "/known_hosts"); strings.Contains(string(kh), vm.IP) || strings.Contains(string(kh), "t1.vm") {
		t.Errorf("known_hosts still has t1: %s", kh)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
