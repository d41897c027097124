package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
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
// The last steps, `banger update` to a second build and a failed update
// that rolls back, are in systemd_update_test.go.
func survivalSteps() []survivalStep {
	return append([]survivalStep{
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
			// with the installed CLI, as the messages tell users to
			c.mustExec("/usr/local/bin/banger", "system", "install", "--owner", ctrOwner)
		}},
		{"uninstall refuses while the VM runs", func(t *testing.T, c *sysContainer) {
			out, err := c.exec("/usr/local/bin/banger", "system", "uninstall")
			if err == nil || !strings.Contains(out, "sv") || !strings.Contains(out, "--force") {
				t.Fatalf("uninstall with a running VM: %v\n%s", err, out)
			}
			c.mustExec("test", "-e", system.UnitDir+"/"+system.DaemonUnit)
		}},
	}, updateSteps()...)
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

	// The owner builds an image: debootstrap needs root, so the helper runs
	// it (as a transient unit allowed to set setuid bits; the double
	// copies the cached tree), and the daemon publishes the file.
	c.writeFile("/usr/local/sbin/debootstrap", fakeDebootstrap)
	c.mustExec("chmod", "0755", "/usr/local/sbin/debootstrap")
	start = time.Now()
	if out, err := c.banger("image", "build", "debian-bookworm", "--name", "built", "--variant", "minbase", "--size", "1G"); err != nil {
		t.Fatalf("image build as %s: %v\n%s\n%s", ctrOwner, err, out, c.journal())
	}
	t.Logf("image build as %s through the helper: %s", ctrOwner, time.Since(start).Round(time.Millisecond))
	if out := c.mustBanger("image", "list"); !strings.Contains(out, "built") {
		t.Errorf("image list lacks the built image:\n%s", out)
	}
	// debootstrap ran as a transient unit, and the setuid bit it set
	// survived into the published image.
	cg := c.mustExec("sh", "-c", "cat /var/cache/banger-root/debootstrap/*/debootstrap.cgroup")
	if !strings.Contains(cg, "/run-u") || strings.Contains(cg, "bangerd") {
		t.Errorf("debootstrap did not run as a transient unit of its own: cgroup %s", cg)
	}
	var img struct{ Path string }
	if err := json.Unmarshal([]byte(c.mustBanger("image", "show", "--json", "built")), &img); err != nil {
		t.Fatal(err)
	}
	if out := c.mustExec("debugfs", "-R", "stat /usr/bin/passwd", img.Path); !strings.Contains(out, "Mode:  04755") {
		t.Errorf("passwd in the built image is not setuid:\n%s", out)
	}
	if out := c.mustExec("sh", "-c", "ls -ln /var/cache/banger-root/out/ | tail -n +2"); strings.TrimSpace(out) != "" && !strings.Contains(out, fmt.Sprint(ctrUID)) {
		t.Errorf("helper output not given to the owner:\n%s", out)
	}

	// The share server the update step uses answers inside the container.
	if err := os.WriteFile(filepath.Join(c.Share(), "probe"), []byte("share-ok\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	url := c.ServeShare(t)
	hostPort := strings.TrimPrefix(url, "http://")
	host, port, _ := strings.Cut(hostPort, ":")
	probe := fmt.Sprintf(`exec 3<>/dev/tcp/%s/%s; printf 'GET /probe HTTP/1.0\r\n\r\n' >&3; cat <&3`, host, port)
	if out := c.mustExec("bash", "-c", probe); !strings.Contains(out, "share-ok") {
		t.Errorf("share server from inside the container: %s", out)
	}

	// Root's plain CLI talks to the same system daemon.
	if out := c.mustExec("/usr/local/bin/banger", "vm", "list"); !strings.Contains(out, "sv") {
		t.Errorf("root's vm list does not show the owner's VM:\n%s", out)
	}
	if out := c.mustExec("/usr/local/bin/banger", "daemon", "status"); !strings.Contains(out, "system (bangerd.service") {
		t.Errorf("root's daemon status:\n%s", out)
	}
	// doctor's system-mode checks pass, asking the daemon for what it owns.
	var outs []struct{ Name, Status, Message string }
	doc, _ := c.banger("doctor", "--json") // other checks (kvm...) may fail in the container
	if err := json.Unmarshal([]byte(doc), &outs); err != nil {
		t.Fatalf("doctor --json: %v\n%s", err, doc)
	}
	want := map[string]bool{"system units": true, "unit kill mode": true, "versions": true, "daemon user": true,
		"helper socket": true, "tun device": true, "state store": true, "daemon": true}
	for _, o := range outs {
		if want[o.Name] {
			delete(want, o.Name)
			if o.Status != "PASS" {
				t.Errorf("doctor %s: %s %s", o.Name, o.Status, o.Message)
			}
		}
	}
	if len(want) > 0 {
		t.Errorf("doctor lacks checks %v:\n%s", want, doc)
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

	// Uninstall: units stopped, disabled and gone, binaries and the
	// record gone; the state stays (no --purge). --force because the
	// daemon may not have noticed the dead VM yet.
	t.Run("uninstall", func(t *testing.T) {
		c.t = t
		defer func() { c.t = nil }()
		c.mustExec("/usr/local/bin/banger", "system", "uninstall", "--force")
		for _, p := range []string{system.UnitDir + "/" + system.DaemonUnit, system.UnitDir + "/" + system.HelperUnit,
			system.CLIPath, system.DaemonPath, system.RecordPath} {
			if _, err := c.exec("test", "-e", p); err == nil {
				t.Errorf("%s is still there after uninstall", p)
			}
		}
		if out, err := c.exec("pgrep", "-x", "bangerd"); err == nil {
			t.Errorf("bangerd still runs after uninstall: %s", out)
		}
		c.mustExec("test", "-e", "/var/lib/banger/banger.db")
		if out, err := c.exec(ctrBin+"/banger", "system", "status"); err == nil || !strings.Contains(out, "not installed") {
			t.Errorf("system status after uninstall: %v\n%s", err, out)
		}
	})
	c.t = t
}
