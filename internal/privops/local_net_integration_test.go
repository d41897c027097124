package privops

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/testreq"
)

// netnsFixture is a network namespace owned by one test (deleted in
// t.Cleanup with everything in it: links, addresses, nft tables).
type netnsFixture struct{ name string }

func newNetns(t *testing.T) *netnsFixture {
	t.Helper()
	testreq.Root(t)
	testreq.Tools(t, "ip")
	name := fmt.Sprintf("bgpo-%d-%s", os.Getpid(), strings.ReplaceAll(t.Name(), "/", "-"))
	if len(name) > 60 {
		name = name[:60]
	}
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	return &netnsFixture{name: name}
}

// do runs fn on a fresh OS thread moved into the namespace, so netlink acts
// there. The thread is never returned to the scheduler: it exits with the
// goroutine.
func (n *netnsFixture) do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with this goroutine
		fd, err := unix.Open("/run/netns/"+n.name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		unix.Close(fd)
		if err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", n.name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// runner runs host tools inside the namespace with `ip netns exec`.
func (n *netnsFixture) runner() hostexec.Runner { return netnsRunner{ns: n.name} }

type netnsRunner struct{ ns string }

func (r netnsRunner) Run(ctx context.Context, c hostexec.Cmd) (hostexec.Result, error) {
	if _, err := exec.LookPath(c.Name); err != nil {
		return hostexec.Result{ExitCode: -1}, fmt.Errorf("%s: %w", c.Name, hostexec.ErrNotFound)
	}
	c.Args = append([]string{"netns", "exec", r.ns, c.Name}, c.Args...)
	c.Name = "ip"
	return hostexec.Real{}.Run(ctx, c)
}

// TestEnsureBridgeConcurrent runs 8 EnsureBridge calls for one new bridge
// at once, through one shared Local (callers in one daemon) and through 8
// Locals (separate processes), and checks that all succeed and leave one
// bridge, up, with the address once.
func TestEnsureBridgeConcurrent(t *testing.T) {
	for _, shared := range []bool{true, false} {
		t.Run(fmt.Sprintf("shared=%v", shared), func(t *testing.T) {
			ns := newNetns(t)
			spec := BridgeSpec{Name: "bgtnbr0", CIDR: "172.31.250.1/24", MTU: 1400}
			ctx := context.Background()
			one := NewLocal(ns.runner(), nil)
			var wg, entered sync.WaitGroup
			start := make(chan struct{})
			errs := make([]error, 8)
			for i := range errs {
				l := one
				if !shared {
					l = NewLocal(ns.runner(), nil)
				}
				wg.Add(1)
				entered.Add(1)
				go func() {
					defer wg.Done()
					errs[i] = ns.do(func() error {
						entered.Done()
						<-start // all 8 threads are in the namespace: go at once
						return l.EnsureBridge(ctx, spec)
					})
				}()
			}
			entered.Wait()
			close(start)
			wg.Wait()
			if err := errors.Join(errs...); err != nil {
				t.Fatalf("concurrent EnsureBridge: %v", err)
			}
			err := ns.do(func() error {
				link, err := netlink.LinkByName(spec.Name)
				if err != nil {
					return err
				}
				if link.Type() != "bridge" || link.Attrs().MTU != spec.MTU || link.Attrs().Flags&net.FlagUp == 0 {
					return fmt.Errorf("link %s: type %s, mtu %d, flags %v", spec.Name, link.Type(), link.Attrs().MTU, link.Attrs().Flags)
				}
				addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
				if err != nil {
					return err
				}
				if len(addrs) != 1 || addrs[0].IPNet.String() != spec.CIDR {
					return fmt.Errorf("addresses of %s: %v, want only %s", spec.Name, addrs, spec.CIDR)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			// Once more, serially: still a no-op that succeeds.
			if err := ns.do(func() error { return one.EnsureBridge(ctx, spec) }); err != nil {
				t.Fatalf("EnsureBridge again: %v", err)
			}
		})
	}
}
