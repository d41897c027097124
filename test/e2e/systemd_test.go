package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/system"
)

// survivalStep is one operation a running VM must survive in system mode.
type survivalStep struct {
	Name string
	Do   func(t *testing.T, c *sysContainer)
}

// survivalSteps are run in order against one running VM; after each, the
// VMM pid is unchanged, `vm list` says running and the guest's boot_id is
// unchanged.
//
// Hook for `banger update`: its end-to-end step belongs here, as another
// survivalStep (build a second banger into c.Share(), serve a signed
// release from a loopback HTTP server in the container's network
// namespace, run `banger update --manifest-url ... --pubkey-file ...`
// in the container, then c.waitHelper() and c.waitDaemon()).
func survivalSteps() []survivalStep {
	return []survivalStep{
		{"system restart", func(t *testing.T, c *sysContainer) {
			c.mustExec("/usr/local/bin/banger", "system", "restart")
		}},
		{"restart the root helper alone", func(t *testing.T, c *sysContainer) {
			c.mustExec("systemctl", "restart", system.HelperUnit)
			c.waitHelper()
		}},
		{"restart the owner daemon alone", func(t *testing.T, c *sysContainer) {
			c.mustExec("systemctl", "restart", system.DaemonUnit)
			c.waitDaemon()
		}},
		{"re-install over a running install", func(t *testing.T, c *sysContainer) {
			c.mustExec(ctrBin+"/banger", "system", "install", "--owner", ctrOwner)
		}},
	}
}

// TestE2ESystemModeVMsSurviveRestarts installs banger as a system service
// in a systemd host, creates a VM as the non-root owner (a real guest under
// QEMU), and checks that the VM survives `banger system restart`, a
// restart of each unit alone and a re-install. The negative control then
// renders KillMode=control-group into the units and shows the same restart
// kills the VM: the test catches the bug it guards against.
func TestE2ESystemModeVMsSurviveRestarts(t *testing.T) {
	c := newSysContainer(t)
	c.installBanger()

	// The owner's plain CLI talks to the system daemon, which runs as the
	// owner, never as root.
	c.waitDaemon()
	out := c.mustExec("ps", "-o", "user=,comm=", "-C", "bangerd")
	if !strings.Contains(out, ctrOwner+" ") || !strings.Contains(out, "root ") {
		t.Fatalf("bangerd processes (want the daemon as %s, the helper as root):\n%s", ctrOwner, out)
	}
	status := c.mustExec("/usr/local/bin/banger", "system", "status")
	for _, want := range []string{"Owner:", ctrOwner, "bangerd.service", "bangerd-root.service", "process", "current"} {
		if !strings.Contains(status, want) {
			t.Errorf("system status lacks %q:\n%s", want, status)
		}
	}

	start := time.Now()
	c.mustBanger("vm", "create", "--name", "sv")
	t.Logf("vm create as %s -> ssh ready: %s", ctrOwner, time.Since(start).Round(time.Millisecond))
	before := c.observe("sv")
	if out := c.mustExec("ps", "-o", "user=", "-p", fmt.Sprint(before.PID)); strings.TrimSpace(out) != ctrOwner {
		t.Errorf("the VMM runs as %q, want %s", strings.TrimSpace(out), ctrOwner)
	}

	for _, step := range survivalSteps() {
		t.Run(strings.ReplaceAll(step.Name, " ", "_"), func(t *testing.T) {
			c.t = t
			defer func() { c.t = nil }()
			s := time.Now()
			step.Do(t, c)
			after := c.observe("sv")
			if after != before {
				t.Fatalf("after %s the VM changed: before %+v, after %+v", step.Name, before, after)
			}
			t.Logf("%s: VM survived (pid %d, boot_id %s) in %s", step.Name, after.PID, after.BootID, time.Since(s).Round(time.Millisecond))
		})
		if t.Failed() {
			c.t = t
			return
		}
	}
	c.t = t

	// Negative control: the same helper restart with KillMode=control-group
	// kills the VMM (it lives in the helper's cgroup).
	t.Run("negative_control_KillMode_control-group", func(t *testing.T) {
		c.t = t
		defer func() { c.t = nil }()
		recText := c.mustExec("cat", system.RecordPath)
		rec, err := system.ParseRecord([]byte(recText))
		if err != nil {
			t.Fatal(err)
		}
		units, err := system.RenderUnits(rec, system.RenderOptions{KillMode: "control-group"})
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range units {
			c.writeFile(system.UnitDir+"/"+u.Name, u.Content)
		}
		c.mustExec("systemctl", "daemon-reload")
		c.mustExec("systemctl", "restart", system.HelperUnit)
		deadline := time.Now().Add(30 * time.Second)
		for {
			if _, err := c.exec("test", "-e", fmt.Sprintf("/proc/%d", before.PID)); err != nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("KillMode=control-group: VMM pid %d still alive 30s after the helper restart", before.PID)
			}
			time.Sleep(200 * time.Millisecond)
		}
		if out, err := c.banger("vm", "exec", "sv", "--", "cat", "/proc/sys/kernel/random/boot_id"); err == nil {
			t.Fatalf("the guest still answers after its VMM died: %s", out)
		}
		t.Logf("KillMode=control-group: the helper restart killed VMM pid %d", before.PID)
	})
	c.t = t
}
