package e2e

import (
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/testreq"
)

// Fake upstream ("the internet" behind NAT): a veth from the test's netns to
// a netns of its own, with a TCP service that answers with the peer address
// it sees.
const (
	upstreamGW   = "198.18.0.1"
	upstreamHost = "198.18.0.2"
	upstreamPort = "8080"
)

// fakeUpstream makes the upstream netns and its service; removed at cleanup.
func (e *env) fakeUpstream() {
	t := e.t
	t.Helper()
	testreq.Tools(t, "socat")
	up := e.ns + "-up"
	run(t, "ip", "netns", "add", up)
	tag := randHex(3)
	v0, v1 := "bgv0"+tag, "bgv1"+tag
	var srv *exec.Cmd
	t.Cleanup(func() {
		if srv != nil && srv.Process != nil {
			_ = srv.Process.Kill()
			_ = srv.Wait()
		}
		_ = exec.Command("ip", "netns", "del", up).Run()
	})
	run(t, "ip", "link", "add", v0, "netns", e.ns, "type", "veth", "peer", "name", v1, "netns", up)
	run(t, "ip", "-n", e.ns, "addr", "add", upstreamGW+"/24", "dev", v0)
	run(t, "ip", "-n", e.ns, "link", "set", v0, "up")
	run(t, "ip", "-n", up, "addr", "add", upstreamHost+"/24", "dev", v1)
	run(t, "ip", "-n", up, "link", "set", v1, "up")
	run(t, "ip", "-n", up, "link", "set", "lo", "up")
	srv = exec.Command("ip", "netns", "exec", up, "socat", "TCP-LISTEN:"+upstreamPort+",bind="+upstreamHost+",fork,reuseaddr",
		`SYSTEM:echo peer=$SOCAT_PEERADDR`)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
}

// upstreamProbe is run in a guest: it prints the upstream's answer.
const upstreamProbe = `timeout 5 bash -c 'exec 3<>/dev/tcp/` + upstreamHost + `/` + upstreamPort + `; head -1 <&3'`

// dig resolves name with the daemon's DNS server inside the netns.
func (e *env) dig(name string) string {
	out, _ := exec.Command("ip", "netns", "exec", e.ns, "dig", "+time=2", "+tries=1", "@127.0.0.1", "-p", "53", name).CombinedOutput()
	return string(out)
}

// sshName runs cmd on NAME.vm through the ssh_config banger installed
// (`banger ssh-config --install` wrote an Include into $HOME/.ssh/config;
// OpenSSH reads the passwd home, so the test names that file with -F).
func (e *env) sshName(name, cmd string) (string, error) {
	c := exec.Command("ip", "netns", "exec", e.ns, "ssh", "-F", filepath.Join(e.dir, "home", ".ssh", "config"),
		"-o", "BatchMode=yes", name+".vm", cmd)
	c.Env = e.environ()
	out, err := c.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func (e *env) mustSSHName(name, cmd string) string {
	e.t.Helper()
	out, err := e.sshName(name, cmd)
	if err != nil {
		e.t.Fatalf("ssh %s.vm %q: %v\n%s", name, cmd, err, out)
	}
	return out
}

// TestE2EDaemonRestartAndNetwork boots two guests at once, one with --nat:
// `ssh NAME.vm` works for both through `banger ssh-config --install`, the
// DNS server answers their names, and only the NAT one reaches a fake
// upstream (seen there with the host's address). Then the daemon is
// restarted, first after SIGTERM and then after SIGKILL: the VMMs keep their
// pids, the guests their boot ids, ssh and DNS keep working and `vm list`
// shows them running. Two boots.
func TestE2EDaemonRestartAndNetwork(t *testing.T) {
	e := newEnv(t, envOptions{TapPool: 2})
	testreq.Tools(t, "dig")
	e.fakeUpstream()

	var wg sync.WaitGroup
	start := time.Now()
	for _, args := range [][]string{{"--name", "na", "--nat"}, {"--name", "nb"}} {
		wg.Add(1)
		go func(args []string) {
			defer wg.Done()
			if _, serr, err := e.banger(append([]string{"vm", "create"}, args...)...); err != nil {
				t.Errorf("create %v: %v\n%s", args, err, serr)
			}
		}(args)
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("two parallel creates -> ssh ready: %s", time.Since(start).Round(time.Millisecond))
	e.logTimings()
	a, b := e.show("na"), e.show("nb")
	if a.IP == b.IP || a.Runtime.Tap == b.Runtime.Tap {
		t.Fatalf("shared address or tap: %+v %+v", a, b)
	}

	// DNS
	if out := e.dig("na.vm"); !strings.Contains(out, a.IP) || !strings.Contains(out, "NOERROR") {
		t.Errorf("dig na.vm: %s", out)
	}
	if out := e.dig("nosuchvm.vm"); !strings.Contains(out, "NXDOMAIN") {
		t.Errorf("dig nosuchvm.vm: %s", out)
	}

	// ssh NAME.vm through the installed Include.
	e.must("ssh-config", "--install")
	bootA := e.mustSSHName("na", "cat /proc/sys/kernel/random/boot_id")
	bootB := e.mustSSHName("nb", "cat /proc/sys/kernel/random/boot_id")
	// Each VM has its own machine id, and D-Bus's copy is the same one
	// (#16 defect 3: every VM used to get the image's).
	idA := e.mustSSHName("na", "cat /etc/machine-id; cat /var/lib/dbus/machine-id")
	idB := e.mustSSHName("nb", "cat /etc/machine-id; cat /var/lib/dbus/machine-id")
	for _, ids := range []string{idA, idB} {
		if f := strings.Fields(ids); len(f) != 2 || f[0] != f[1] || len(f[0]) != 32 {
			t.Errorf("machine ids in a guest: %q", ids)
		}
	}
	if a, b := strings.Fields(idA), strings.Fields(idB); len(a) > 0 && len(b) > 0 && a[0] == b[0] {
		t.Errorf("two VMs share the machine id %s", a[0])
	}
	if bootA == "" || bootA == bootB {
		t.Fatalf("boot ids %q %q", bootA, bootB)
	}

	// NAT: only na reaches the upstream, masqueraded behind the host.
	if out := e.mustSSHName("na", upstreamProbe); out != "peer="+upstreamGW {
		t.Errorf("na (--nat) -> upstream: %q, want peer=%s", out, upstreamGW)
	}
	if out, err := e.sshName("nb", upstreamProbe); err == nil || strings.Contains(out, "peer=") {
		t.Errorf("nb (no NAT) reached the upstream: %q %v", out, err)
	}
	e.assertNoLeaks("two running VMs")

	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		e.stopDaemon(sig)
		e.startDaemon()
		for _, before := range []*model.VM{a, b} {
			after := e.show(before.Name)
			if after.State != model.StateRunning || after.Runtime.PID != before.Runtime.PID || after.Runtime.Tap != before.Runtime.Tap {
				t.Fatalf("after %v: %s is %s pid %d tap %s, want running pid %d tap %s\n%s", sig, before.Name, after.State,
					after.Runtime.PID, after.Runtime.Tap, before.Runtime.PID, before.Runtime.Tap, e.daemonLog())
			}
		}
		if ps := e.must("vm", "ps"); !strings.Contains(ps, "na") || !strings.Contains(ps, "nb") {
			t.Errorf("vm ps after %v:\n%s", sig, ps)
		}
		if got := e.mustSSHName("na", "cat /proc/sys/kernel/random/boot_id"); got != bootA {
			t.Errorf("after %v: na boot id %q, want %q (the guest rebooted)", sig, got, bootA)
		}
		if got := e.mustSSHName("nb", "cat /proc/sys/kernel/random/boot_id"); got != bootB {
			t.Errorf("after %v: nb boot id %q, want %q", sig, got, bootB)
		}
		if out := e.dig("nb.vm"); !strings.Contains(out, b.IP) {
			t.Errorf("after %v: dig nb.vm: %s", sig, out)
		}
		e.assertNoLeaks("after a daemon restart (" + sig.String() + ")")
	}
	if out := e.mustSSHName("na", upstreamProbe); out != "peer="+upstreamGW {
		t.Errorf("NAT after the restarts: %q", out)
	}

	e.must("vm", "delete", "na", "nb")
	e.assertNoLeaks("after delete")
	if els := e.natElements(); len(els) != 0 {
		t.Errorf("NAT set after delete: %v", els)
	}
}
