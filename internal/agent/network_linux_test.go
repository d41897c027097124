package agent

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/bangerdev/banger/internal/testreq"
)

// inNetns runs fn on a thread switched into a fresh network namespace.
func inNetns(t *testing.T, setup string, fn func() error) (string, error) {
	t.Helper()
	testreq.Root(t)
	testreq.Tools(t, "ip")
	name := fmt.Sprintf("bgagent%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	cmd := exec.Command("ip", "-n", name, "-b", "-")
	cmd.Stdin = strings.NewReader(setup)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("setup: %v: %s", err, out)
	}
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := netns.Set(h); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return name, <-errc
}

func ipOut(t *testing.T, ns string, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %v: %v: %s", args, err, out)
	}
	return string(out)
}

// TestSetNetworkRestoredNIC: a restored guest's only NIC carries the
// template's MAC and address; setNetwork gives it the VM's MAC, replaces
// the address, sets the default route and writes resolv.conf, without any
// host tool.
func TestSetNetworkRestoredNIC(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	// resolv.conf as a dangling symlink (systemd-resolved style) is replaced.
	if err := os.Symlink("/run/nowhere/resolv.conf", filepath.Join(root, "etc/resolv.conf")); err != nil {
		t.Fatal(err)
	}
	g := &Guest{Root: root, ProcRoot: "/proc", Kernel: true}
	id := Identity{MAC: "02:bb:00:00:00:07", Address: "10.9.0.7/24", Gateway: "10.9.0.1", DNS: []string{"10.9.0.1", " 10.9.0.2"}}
	var iface string
	ns, err := inNetns(t, "tuntap add dev eth0 mode tap\nlink set eth0 address 02:aa:00:00:00:01\naddr add 169.254.0.2/16 dev eth0\n", func() error {
		var err error
		iface, err = g.setNetwork(id)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if iface != "eth0" {
		t.Errorf("iface = %q", iface)
	}
	link := ipOut(t, ns, "-o", "link", "show", "eth0")
	if !strings.Contains(link, "link/ether 02:bb:00:00:00:07") || !strings.Contains(link, "UP") {
		t.Errorf("eth0 after setNetwork: %s", link)
	}
	addrs := ipOut(t, ns, "-o", "-4", "addr", "show", "dev", "eth0")
	if !strings.Contains(addrs, "10.9.0.7/24") || strings.Contains(addrs, "169.254.0.2") {
		t.Errorf("addresses: %s", addrs)
	}
	if r := ipOut(t, ns, "route", "show", "default"); !strings.Contains(r, "default via 10.9.0.1 dev eth0") {
		t.Errorf("default route: %q", r)
	}
	if lo := ipOut(t, ns, "-o", "link", "show", "lo"); !strings.Contains(lo, "UP") {
		t.Errorf("lo: %s", lo)
	}
	rc, err := os.ReadFile(filepath.Join(root, "etc/resolv.conf"))
	if err != nil || string(rc) != "nameserver 10.9.0.1\nnameserver 10.9.0.2\n" {
		t.Errorf("resolv.conf = %q, %v", rc, err)
	}
}

// TestSetNetworkRefusesAmbiguousNIC: with two candidate NICs and none
// carrying the MAC, nothing is guessed.
func TestSetNetworkRefusesAmbiguousNIC(t *testing.T) {
	g := &Guest{Root: t.TempDir(), ProcRoot: "/proc", Kernel: true}
	ns, err := inNetns(t, "tuntap add dev eth0 mode tap\ntuntap add dev eth1 mode tap\n", func() error {
		_, err := g.setNetwork(Identity{MAC: "02:bb:00:00:00:07", Address: "10.9.0.7/24"})
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "2 others") {
		t.Fatalf("err = %v", err)
	}
	if a := ipOut(t, ns, "-o", "-4", "addr"); strings.Contains(a, "10.9.0.7") {
		t.Errorf("an address was set anyway: %s", a)
	}
}
