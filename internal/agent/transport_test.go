package agent_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/agent"
	"github.com/bangerdev/banger/internal/agent/agenttest"
)

// guestListener serves the agent on a unix socket, one session per
// connection, like the guest behind QEMU's chardev or Firecracker's vsock.
type guestListener struct {
	ln        net.Listener
	handshake bool // expect Firecracker's "CONNECT <port>\n" first

	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

func startGuest(t *testing.T, srv *agent.Server, handshake bool) (*guestListener, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	g := &guestListener{ln: ln, handshake: handshake}
	ctx, cancel := context.WithCancel(context.Background())
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			g.mu.Lock()
			g.conns = append(g.conns, c)
			g.mu.Unlock()
			g.wg.Add(1)
			go func() {
				defer g.wg.Done()
				defer c.Close()
				if g.handshake {
					r := bufio.NewReader(c)
					line, err := r.ReadString('\n')
					if err != nil || line != fmt.Sprintf("CONNECT %d\n", agent.VsockPort) {
						return // firecracker closes the socket
					}
					if r.Buffered() > 0 {
						t.Errorf("client sent protocol bytes before the handshake answer")
						return
					}
					fmt.Fprintf(c, "OK 1073741824\n")
				}
				_ = srv.Serve(ctx, c)
			}()
		}
	}()
	t.Cleanup(func() {
		cancel()
		ln.Close()
		g.drop()
		g.wg.Wait()
	})
	return g, path
}

func (g *guestListener) drop() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, c := range g.conns {
		c.Close()
	}
	g.conns = nil
}

func TestConformanceUnix(t *testing.T) {
	sys := &agenttest.FakeSystem{PortList: []agent.Port{{Proto: "tcp", Address: "0.0.0.0", Port: 22, PID: 1, Process: "sshd"}}}
	g, path := startGuest(t, agenttest.NewServer(sys, t.TempDir()), false)
	agenttest.Run(t, agenttest.Harness{
		System: sys,
		Client: func(t *testing.T, token string) agent.Client {
			return agent.NewConn(agent.DialUnix(path), token, "virtio-serial "+path)
		},
		Drop: func(t *testing.T) { g.drop() },
	})
}

func TestConformanceHybridVsock(t *testing.T) {
	sys := &agenttest.FakeSystem{}
	g, path := startGuest(t, agenttest.NewServer(sys, t.TempDir()), true)
	agenttest.Run(t, agenttest.Harness{
		System: sys,
		Client: func(t *testing.T, token string) agent.Client {
			return agent.NewConn(agent.DialHybridVsock(path, agent.VsockPort), token, "vsock "+path)
		},
		Drop: func(t *testing.T) { g.drop() },
	})
}

func TestHybridVsockRefused(t *testing.T) {
	// Firecracker closes the socket when nothing listens on the port.
	sys := &agenttest.FakeSystem{}
	_, path := startGuest(t, agenttest.NewServer(sys, t.TempDir()), true)
	c := agent.NewConn(agent.DialHybridVsock(path, 7), agenttest.Token, "vsock")
	defer c.Close()
	_, err := c.Ping(context.Background())
	if err == nil || !errorsIs(err, agent.ErrUnavailable) {
		t.Fatalf("ping on a port nobody listens on: %v", err)
	}
}

// oneClientGuest serves the agent on a unix socket one connection at a
// time, the next only after the last ended: QEMU's virtio-serial chardev.
func oneClientGuest(t *testing.T, srv *agent.Server) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var mu sync.Mutex
	var cur net.Conn
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			cur = c
			mu.Unlock()
			_ = srv.Serve(ctx, c)
			c.Close()
		}
	}()
	t.Cleanup(func() {
		cancel()
		ln.Close()
		mu.Lock()
		if cur != nil {
			cur.Close()
		}
		mu.Unlock()
		<-done
	})
	return path
}

// TestConnFreesAOneClientChannelWhenIdle: a second client reaches the
// agent once the first has no call in flight for IdleClose, never during a
// call; and with IdleClose off the first holds the channel (what locked
// the e2e test out of a VM whose daemon synced its clock).
func TestConnFreesAOneClientChannelWhenIdle(t *testing.T) {
	path := oneClientGuest(t, agenttest.NewServer(&agenttest.FakeSystem{}, t.TempDir()))
	ctx := context.Background()
	ping := func(c *agent.Conn, d time.Duration) error {
		pctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		_, err := c.Ping(pctx)
		return err
	}

	holder := agent.NewConn(agent.DialUnix(path), agenttest.Token, "holder")
	holder.IdleClose = 0
	if err := ping(holder, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	other := agent.NewConn(agent.DialUnix(path), agenttest.Token, "other")
	defer other.Close()
	if err := ping(other, 500*time.Millisecond); err == nil {
		t.Fatal("a second client got through while the first held the channel")
	}
	holder.Close()
	if err := ping(other, 5*time.Second); err != nil {
		t.Fatalf("after the holder closed: %v", err)
	}
	other.Close()

	a := agent.NewConn(agent.DialUnix(path), agenttest.Token, "a")
	defer a.Close()
	a.IdleClose = 150 * time.Millisecond
	// A call longer than IdleClose keeps its session.
	var out strings.Builder
	res, err := a.Exec(ctx, agent.ExecRequest{Argv: []string{"sh", "-c", "sleep 0.5; echo done"}, Stdout: &out})
	if err != nil || res.ExitCode != 0 || out.String() != "done\n" {
		t.Fatalf("exec across the idle deadline: %+v %q %v", res, out.String(), err)
	}
	b := agent.NewConn(agent.DialUnix(path), agenttest.Token, "b")
	defer b.Close()
	b.IdleClose = 150 * time.Millisecond
	start := time.Now()
	if err := ping(b, 5*time.Second); err != nil {
		t.Fatalf("second client after the first went idle: %v", err)
	}
	if waited := time.Since(start); waited > 3*time.Second {
		t.Errorf("second client waited %s", waited)
	}
	// And the first redials once the second has let go.
	if err := ping(a, 5*time.Second); err != nil {
		t.Fatalf("first client again: %v", err)
	}
}
