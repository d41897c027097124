package portfwd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/model"
)

// echoGuest is a "guest" service on loopback: it answers "hello" and then
// echoes what it reads, upper-cased line by line.
func echoGuest(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fmt.Fprintln(c, "hello")
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					fmt.Fprintln(c, strings.ToUpper(sc.Text()))
				}
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func fwd(host, guest int) model.PortForward {
	return model.PortForward{HostAddr: "127.0.0.1", HostPort: host, GuestPort: guest, Proto: "tcp"}
}

var loopback = netip.MustParseAddr("127.0.0.1")

func talk(t *testing.T, addr string) error {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	r := bufio.NewReader(c)
	if l, err := r.ReadString('\n'); err != nil || l != "hello\n" {
		return fmt.Errorf("greeting %q: %v", l, err)
	}
	fmt.Fprintln(c, "ping")
	if l, err := r.ReadString('\n'); err != nil || l != "PING\n" {
		return fmt.Errorf("echo %q: %v", l, err)
	}
	// Half-close: the guest sees EOF and closes; we see EOF.
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return err
	}
	if rest, err := io.ReadAll(r); err != nil || len(rest) != 0 {
		return fmt.Errorf("after half-close: %q %v", rest, err)
	}
	return nil
}

func TestForwardServesRemovesAndRestores(t *testing.T) {
	m := New(nil)
	t.Cleanup(func() { _ = m.Close() })
	ctx := context.Background()
	guest := echoGuest(t)
	host := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", host)
	if err := talk(t, addr); err == nil {
		t.Fatal("something answers before the forward exists")
	}
	fw := []model.PortForward{fwd(host, guest)}
	if err := m.Set(ctx, "vm1", loopback, fw); err != nil {
		t.Fatal(err)
	}
	if err := talk(t, addr); err != nil {
		t.Fatalf("through the forward: %v", err)
	}
	// An open connection ends when the forward is removed.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	r := bufio.NewReader(c)
	if _, err := r.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	m.Remove("vm1")
	if _, err := io.ReadAll(r); err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("open connection after Remove: %v", err)
	}
	if err := talk(t, addr); err == nil {
		t.Fatal("the forward still answers after Remove")
	}
	m.Remove("vm1") // no-op
	// Restored (a VM start, or a daemon restart's reconcile).
	if err := m.Set(ctx, "vm1", loopback, fw); err != nil {
		t.Fatal(err)
	}
	if err := talk(t, addr); err != nil {
		t.Fatalf("after restore: %v", err)
	}
	if got := m.Forwards("vm1"); len(got) != 1 || got[0] != fw[0] {
		t.Fatalf("Forwards = %v", got)
	}
}

func TestPortInUseIsClearAndLeavesNothingBehind(t *testing.T) {
	m := New(nil)
	t.Cleanup(func() { _ = m.Close() })
	ctx := context.Background()
	guest := echoGuest(t)
	busy, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyPort := busy.Addr().(*net.TCPAddr).Port
	ok := freePort(t)
	err = m.Set(ctx, "vm1", loopback, []model.PortForward{fwd(ok, guest), fwd(busyPort, guest)})
	if !errors.Is(err, ErrPortInUse) || !strings.Contains(err.Error(), fmt.Sprintf("127.0.0.1:%d", busyPort)) || !strings.Contains(err.Error(), "pick another host port") {
		t.Fatalf("Set with a busy port: %v", err)
	}
	if err := talk(t, fmt.Sprintf("127.0.0.1:%d", ok)); err == nil {
		t.Fatal("a forward of the failed set was left listening")
	}
	// Replacing keeps unchanged forwards and the old set on failure.
	if err := m.Set(ctx, "vm1", loopback, []model.PortForward{fwd(ok, guest)}); err != nil {
		t.Fatal(err)
	}
	if err := m.Set(ctx, "vm1", loopback, []model.PortForward{fwd(ok, guest), fwd(busyPort, guest)}); !errors.Is(err, ErrPortInUse) {
		t.Fatalf("replace with a busy port: %v", err)
	}
	if err := talk(t, fmt.Sprintf("127.0.0.1:%d", ok)); err != nil {
		t.Fatalf("the old forward stopped after a failed replace: %v", err)
	}
	// Another VM cannot take a port this one serves.
	if err := m.Set(ctx, "vm2", loopback, []model.PortForward{fwd(ok, guest)}); !errors.Is(err, ErrPortInUse) {
		t.Fatalf("second VM on the same port: %v", err)
	}
	if err := m.Set(ctx, "vm1", loopback, nil); err != nil {
		t.Fatal(err)
	}
	if err := talk(t, fmt.Sprintf("127.0.0.1:%d", ok)); err == nil {
		t.Fatal("Set(nil) left the forward")
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Set(ctx, "vm1", loopback, []model.PortForward{fwd(ok, guest)}); err == nil {
		t.Fatal("Set after Close succeeded")
	}
}

func TestBadForwardsAndUnreachableGuest(t *testing.T) {
	m := New(nil)
	t.Cleanup(func() { _ = m.Close() })
	ctx := context.Background()
	if err := m.Set(ctx, "vm1", loopback, []model.PortForward{{HostAddr: "127.0.0.1", HostPort: 0, GuestPort: 1, Proto: "tcp"}}); !errors.Is(err, model.ErrBadPortSpec) {
		t.Fatalf("bad spec: %v", err)
	}
	if err := m.Set(ctx, "vm1", loopback, []model.PortForward{{HostAddr: "192.0.2.77", HostPort: freePort(t), GuestPort: 1, Proto: "tcp"}}); err == nil || !strings.Contains(err.Error(), "not an address of this host") {
		t.Fatalf("foreign host address: %v", err)
	}
	// A guest that does not listen: the client's connection is closed.
	host := freePort(t)
	if err := m.Set(ctx, "vm1", loopback, []model.PortForward{fwd(host, freePort(t))}); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", host))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(DialTimeout + 2*time.Second))
	if b, err := io.ReadAll(c); len(b) != 0 {
		t.Fatalf("read %q %v from a forward to nothing", b, err)
	}
}
