package e2e

import (
	"encoding/json"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/testreq"
)

// guestServer listens on 8080 in the guest and greets every client (perl
// is in every Debian image: perl-base is essential).
const guestServer = `setsid nohup perl -MIO::Socket::INET -e '$s = IO::Socket::INET->new(LocalPort => 8080, Listen => 5, ReuseAddr => 1) or die "listen: $!"; while ($c = $s->accept) { print $c "hello from the guest\n"; close $c }' >/dev/null 2>&1 < /dev/null &`

// hostProbe reads one line from addr inside the test's netns (where the
// daemon and its forwards live).
func (e *env) hostProbe(addr string) (string, error) {
	host, port, _ := strings.Cut(addr, ":")
	out, err := exec.Command("ip", "netns", "exec", e.ns, "timeout", "5", "bash", "-c",
		"exec 3<>/dev/tcp/"+host+"/"+port+"; head -1 <&3").CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// TestE2EPortForwardAndIsolation: `vm run -d -p 18080:8080` (one boot),
// then a server in the guest answers on 127.0.0.1:18080 in the test's
// netns; `vm ports` lists it from the guest; the forward survives a daemon
// restart and is gone after stop. On the same guest: a host service on all
// addresses is out of the guest's reach (input chain), a port in use and
// a bad spec give clear errors without a boot.
func TestE2EPortForwardAndIsolation(t *testing.T) {
	e := newRunEnv(t, envOptions{TapPool: 1})
	testreq.Tools(t, "socat")
	const fwdAddr = "127.0.0.1:18080"

	// A bad spec is refused before anything is made.
	if r := e.bangerIn(t.TempDir(), nil, "vm", "run", "-d", "--name", "bad", "-p", "99999:80"); r.code == 0 || !strings.Contains(r.stderr, "HOSTPORT:GUESTPORT") {
		t.Errorf("vm run -p 99999:80: %s", r)
	}

	start := time.Now()
	r := e.bangerIn(t.TempDir(), nil, "vm", "run", "-d", "--name", "pf", "--image", devImageName, "-p", "18080:8080")
	if r.code != 0 {
		t.Fatalf("vm run -d -p: %s\n%s", r, e.daemonLog())
	}
	t.Logf("vm run -d -p: %s", time.Since(start).Round(time.Millisecond))
	vm := e.show("pf")
	if len(vm.Ports) != 1 || vm.Ports[0].HostAddrPort() != fwdAddr || vm.Ports[0].GuestPort != 8080 {
		t.Fatalf("recorded ports %+v", vm.Ports)
	}
	if out := e.must("vm", "show", "pf"); !strings.Contains(out, "127.0.0.1:18080:8080/tcp") || !strings.Contains(out, "isolated") {
		t.Errorf("vm show lacks the forward or the network policy:\n%s", out)
	}
	// Nothing answers yet (the guest does not listen): the client is let
	// go, not hung.
	if out, err := e.hostProbe(fwdAddr); err == nil && strings.Contains(out, "hello") {
		t.Fatalf("forward answered before the guest listens: %q", out)
	}
	e.mustSSH(vm.IP, guestServer)
	var got string
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
		if got, _ = e.hostProbe(fwdAddr); got == "hello from the guest" {
			break
		}
	}
	if got != "hello from the guest" {
		t.Fatalf("127.0.0.1:18080 -> guest 8080: %q", got)
	}

	// vm ports, from the guest.
	var ports api.VMPorts
	if err := json.Unmarshal([]byte(e.must("vm", "ports", "--json", "pf")), &ports); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range ports.Listening {
		if p.Port == 8080 && strings.HasPrefix(p.Proto, "tcp") && p.Process == "perl" && p.PID > 0 {
			found = true
		}
	}
	if !found || len(ports.Forwards) != 1 {
		t.Errorf("vm ports --json: %+v", ports)
	}
	if out := e.must("vm", "ports", "pf"); !strings.Contains(out, "8080") || !strings.Contains(out, fwdAddr) || !strings.Contains(out, "sshd") {
		t.Errorf("vm ports:\n%s", out)
	}

	// The input chain: a host service on all addresses is not reachable
	// from the guest through the gateway.
	gw := strings.TrimSpace(e.mustSSH(vm.IP, "ip route show default | awk '{print $3}'"))
	srv := exec.Command("ip", "netns", "exec", e.ns, "socat", "TCP-LISTEN:2222,fork,reuseaddr", "SYSTEM:echo host-service")
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Process.Kill(); _ = srv.Wait() })
	time.Sleep(300 * time.Millisecond)
	if out, err := e.hostProbe("127.0.0.1:2222"); err != nil || out != "host-service" {
		t.Fatalf("host service does not answer on the host: %q %v", out, err)
	}
	if out, err := e.ssh(vm.IP, "timeout 3 bash -c 'exec 3<>/dev/tcp/"+gw+"/2222; head -1 <&3'"); err == nil || strings.Contains(out, "host-service") {
		t.Errorf("guest reached a host service at %s:2222: %q", gw, out)
	}

	// A port in use: clear error at start, before any boot.
	e.must("vm", "create", "--name", "pf2", "--image", devImageName, "-p", "18080:80", "--no-start")
	if out, serr, err := e.banger("vm", "start", "pf2"); err == nil || !strings.Contains(serr, "already in use") {
		t.Errorf("vm start with a taken port: %v\n%s%s", err, out, serr)
	}
	e.must("vm", "delete", "pf2")

	// Kept across a daemon restart.
	e.stopDaemon(syscall.SIGTERM)
	e.startDaemon()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
		if got, _ = e.hostProbe(fwdAddr); got == "hello from the guest" {
			break
		}
	}
	if got != "hello from the guest" {
		t.Errorf("after a daemon restart: %q\n%s", got, e.daemonLog())
	}

	// Gone after stop.
	e.must("vm", "stop", "pf")
	if out, err := e.hostProbe(fwdAddr); err == nil || strings.Contains(out, "hello") {
		t.Errorf("forward still answers after stop: %q", out)
	}
	e.must("vm", "delete", "pf")
	e.assertNoLeaks("after the port forward test")
}
