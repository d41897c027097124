package netw

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/privops"
)

// Every kernel object these tests create lives in a network namespace named
// testNSPrefix-PID-N, created and deleted by the test. Interfaces use the
// test prefixes below so the leak check can tell them from real ones.
const (
	testNSPrefix  = "bgtn-"
	testTapPrefix = "bgtapt"
	testBridge    = "bgtnbr0"
)

var nsCounter atomic.Int64

// TestMain fails the package when the tests left a network namespace,
// interface or nft table behind, in the host namespace or in /run/netns.
func TestMain(m *testing.M) {
	before := hostSnapshot()
	code := m.Run()
	if leaks := leaked(before, hostSnapshot()); len(leaks) > 0 {
		fmt.Fprintf(os.Stderr, "LEAK CHECK FAILED: the tests left behind:\n  %s\n", strings.Join(leaks, "\n  "))
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

type snapshot struct {
	netns     []string
	links     []string
	nftTables []string
}

func hostSnapshot() snapshot {
	var s snapshot
	if entries, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), testNSPrefix) {
				s.netns = append(s.netns, e.Name())
			}
		}
	}
	if links, err := netlink.LinkList(); err == nil {
		for _, l := range links {
			name := l.Attrs().Name
			if strings.HasPrefix(name, testTapPrefix) || strings.HasPrefix(name, "bgtn") || name == DefaultBridge {
				s.links = append(s.links, name)
			}
		}
	}
	if os.Geteuid() == 0 {
		if out, err := exec.Command("nft", "list", "tables").Output(); err == nil {
			for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				if line != "" {
					s.nftTables = append(s.nftTables, line)
				}
			}
		}
	}
	return s
}

func leaked(before, after snapshot) []string {
	var out []string
	diff := func(kind string, b, a []string) {
		for _, x := range a {
			if !slices.Contains(b, x) {
				out = append(out, kind+" "+x)
			}
		}
	}
	diff("netns", before.netns, after.netns)
	diff("host interface", before.links, after.links)
	diff("host nft", before.nftTables, after.nftTables)
	return out
}

// testNS is a network namespace owned by one test.
type testNS struct {
	name   string
	handle netns.NsHandle
}

func newTestNS(t *testing.T) *testNS {
	t.Helper()
	name := fmt.Sprintf("%s%d-%d", testNSPrefix, os.Getpid(), nsCounter.Add(1))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	h, err := netns.GetFromName(name)
	if err != nil {
		_ = exec.Command("ip", "netns", "del", name).Run()
		t.Fatalf("open netns %s: %v", name, err)
	}
	ns := &testNS{name: name, handle: h}
	t.Cleanup(func() {
		h.Close()
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	ns.sh(t, "ip link set lo up")
	return ns
}

// do runs fn on an OS thread switched into the namespace, so netlink calls,
// /dev/net/tun, sockets and /proc/sys/net all act inside it. The thread is
// switched back afterwards (or discarded if that fails).
func (n *testNS) do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(n.handle); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", n.name, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("leave netns: %w", err)) // thread stays locked and dies
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// openTapAs opens the tap name the way an unprivileged VMM would: on a
// throw-away thread inside the namespace whose effective uid/gid are changed
// (which also drops its capabilities). The thread is never reused.
func (n *testNS) openTapAs(name string, uid, gid int) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with this goroutine
		if err := netns.Set(n.handle); err != nil {
			errc <- err
			return
		}
		// Open the device first: its node may be 0600 (then a jailer-made
		// node or a passed fd gives the VMM access); TUNSETIFF is where the
		// kernel checks the tap's owner.
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(fd)
		keep := ^uintptr(0) // -1: leave unchanged
		if _, _, e := syscall.RawSyscall(syscall.SYS_SETRESGID, keep, uintptr(gid), keep); e != 0 {
			errc <- fmt.Errorf("setresgid: %w", e)
			return
		}
		if _, _, e := syscall.RawSyscall(syscall.SYS_SETGROUPS, 0, 0, 0); e != 0 {
			errc <- fmt.Errorf("setgroups: %w", e)
			return
		}
		if _, _, e := syscall.RawSyscall(syscall.SYS_SETRESUID, keep, uintptr(uid), keep); e != 0 {
			errc <- fmt.Errorf("setresuid: %w", e)
			return
		}
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			errc <- err
			return
		}
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
		errc <- unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
	}()
	return <-errc
}

// sh runs a command line inside the namespace (test setup only).
func (n *testNS) sh(t *testing.T, cmdline string) string {
	t.Helper()
	args := append([]string{"netns", "exec", n.name}, strings.Fields(cmdline)...)
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("in %s: %s: %v: %s", n.name, cmdline, err, out)
	}
	return string(out)
}

// nsRunner runs host tools inside a namespace with `ip netns exec`. With
// hide it pretends the named programs are not installed.
type nsRunner struct {
	ns   string
	hide []string
}

func (r nsRunner) Run(ctx context.Context, c hostexec.Cmd) (hostexec.Result, error) {
	if _, err := exec.LookPath(c.Name); err != nil || slices.Contains(r.hide, c.Name) {
		return hostexec.Result{ExitCode: -1}, fmt.Errorf("%s: %w", c.Name, hostexec.ErrNotFound)
	}
	c.Args = append([]string{"netns", "exec", r.ns, c.Name}, c.Args...)
	c.Name = "ip"
	return hostexec.Real{}.Run(ctx, c)
}

// nsOps runs a privops.Local entirely inside a namespace.
type nsOps struct {
	privops.Ops
	ns    *testNS
	local *privops.Local
}

func newNSOps(ns *testNS, hide ...string) *nsOps {
	return &nsOps{ns: ns, local: privops.NewLocal(nsRunner{ns: ns.name, hide: hide}, nil)}
}

func (o *nsOps) EnsureBridge(ctx context.Context, spec privops.BridgeSpec) error {
	return o.ns.do(func() error { return o.local.EnsureBridge(ctx, spec) })
}
func (o *nsOps) DeleteBridge(ctx context.Context, name string) error {
	return o.ns.do(func() error { return o.local.DeleteBridge(ctx, name) })
}
func (o *nsOps) CreateTap(ctx context.Context, spec privops.TapSpec) error {
	return o.ns.do(func() error { return o.local.CreateTap(ctx, spec) })
}
func (o *nsOps) DeleteTap(ctx context.Context, name string) error {
	return o.ns.do(func() error { return o.local.DeleteTap(ctx, name) })
}
func (o *nsOps) EnsureVMNet(ctx context.Context, spec privops.VMNetSpec) error {
	return o.ns.do(func() error { return o.local.EnsureVMNet(ctx, spec) })
}
func (o *nsOps) ClearVMNet(ctx context.Context, spec privops.VMNetSpec) error {
	return o.ns.do(func() error { return o.local.ClearVMNet(ctx, spec) })
}
func (o *nsOps) SetResolverRouting(ctx context.Context, spec privops.ResolverSpec) error {
	return o.ns.do(func() error { return o.local.SetResolverRouting(ctx, spec) })
}
func (o *nsOps) SignalVMM(context.Context, privops.ProcessIdentity, syscall.Signal) error {
	panic("not a network op")
}

// link looks an interface up inside the namespace (nil if absent).
func (n *testNS) link(t *testing.T, name string) netlink.Link {
	t.Helper()
	var link netlink.Link
	err := n.do(func() error {
		l, err := netlink.LinkByName(name)
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		link = l
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return link
}
