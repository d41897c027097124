package agent

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

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

// TestNetworkConfig: network.env wins, the kernel arguments fill in what it
// lacks, quotes and DNS lists are handled, no address is an error.
func TestNetworkConfig(t *testing.T) {
	root, proc := t.TempDir(), t.TempDir()
	g := &Guest{Root: root, ProcRoot: proc}
	if err := os.WriteFile(filepath.Join(proc, "cmdline"), []byte("console=ttyS0 banger.ip=10.0.0.9/24 banger.gw=10.0.0.1 banger.dns=9.9.9.9 banger.mac=02:AA:00:00:00:09\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	id, err := g.networkConfig()
	if err != nil || id.Address != "10.0.0.9/24" || id.Gateway != "10.0.0.1" || id.MAC != "02:aa:00:00:00:09" || strings.Join(id.DNS, " ") != "9.9.9.9" {
		t.Fatalf("cmdline only: %+v %v", id, err)
	}
	if err := os.MkdirAll(filepath.Join(root, "etc/banger"), 0o755); err != nil {
		t.Fatal(err)
	}
	env := "ADDRESS=\"172.30.0.5/24\"\nGATEWAY=172.30.0.1\nDNS=172.30.0.1, 172.30.0.2\njunk line\n"
	if err := os.WriteFile(filepath.Join(root, "etc/banger/network.env"), []byte(env), 0o644); err != nil {
		t.Fatal(err)
	}
	id, err = g.networkConfig()
	if err != nil || id.Address != "172.30.0.5/24" || id.Gateway != "172.30.0.1" || id.MAC != "02:aa:00:00:00:09" ||
		strings.Join(id.DNS, " ") != "172.30.0.1 172.30.0.2" {
		t.Fatalf("env + cmdline: %+v %v", id, err)
	}
	if err := os.WriteFile(filepath.Join(proc, "cmdline"), []byte("console=ttyS0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(root, "etc/banger/network.env")); err != nil {
		t.Fatal(err)
	}
	if _, err := g.networkConfig(); err == nil || !strings.Contains(err.Error(), "no address") {
		t.Fatalf("no address: %v", err)
	}
}

// TestBootNetworkWaitsForTheInterface: the boot step finds the NIC by the
// MAC in network.env once it appears, and configures it.
func TestBootNetworkWaitsForTheInterface(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc/banger"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/banger/network.env"), []byte("ADDRESS=10.9.0.7/24\nGATEWAY=10.9.0.1\nMAC=02:bb:00:00:00:07\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	g := &Guest{Root: root, ProcRoot: "/proc", Kernel: true}
	var iface string
	ns, err := inNetns(t, "", func() error {
		// The NIC shows up 300 ms after the step started.
		go func() {
			time.Sleep(300 * time.Millisecond)
			ns := fmt.Sprintf("bgagent%d", os.Getpid()) // inNetns's namespace
			_ = exec.Command("sh", "-c", "ip -n "+ns+" tuntap add dev eth0 mode tap && ip -n "+ns+" link set eth0 address 02:bb:00:00:00:07").Run()
		}()
		var err error
		iface, err = g.BootNetwork(context.Background(), 10*time.Second)
		return err
	})
	if err != nil || iface != "eth0" {
		t.Fatalf("BootNetwork: %q %v", iface, err)
	}
	if a := ipOut(t, ns, "-o", "-4", "addr", "show", "dev", "eth0"); !strings.Contains(a, "10.9.0.7/24") {
		t.Errorf("addresses: %s", a)
	}
}
