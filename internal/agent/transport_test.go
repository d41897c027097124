package agent_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"

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
