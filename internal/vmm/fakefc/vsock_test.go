package fakefc

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/agent"
)

// guestPort stands in for QEMU's host end of a virtio-serial port: a unix
// socket serving one connection at a time that upper-cases each line and
// reports on closed when the host side went away.
func guestPort(t *testing.T, dir string) (string, <-chan struct{}) {
	t.Helper()
	p := filepath.Join(dir, "port.sock")
	ln, err := net.Listen("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	closed := make(chan struct{}, 8)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r := bufio.NewReader(c)
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					break
				}
				if line == "bye\n" {
					break // the guest side ends the stream
				}
				if _, err := io.WriteString(c, strings.ToUpper(line)); err != nil {
					break
				}
			}
			c.Close()
			closed <- struct{}{}
		}
	}()
	return p, closed
}

func listenBridge(t *testing.T) (*VsockBridge, <-chan struct{}) {
	t.Helper()
	dir := t.TempDir()
	port, closed := guestPort(t, dir)
	b, err := ListenVsock(filepath.Join(dir, "v.sock"), map[uint32]string{agent.VsockPort: port}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b, closed
}

func dialVsock(t *testing.T, b *VsockBridge, port uint32) (io.ReadWriteCloser, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return agent.DialHybridVsock(b.Path, port)(ctx)
}

func TestVsockBridgeConnectsTheAgentPort(t *testing.T) {
	b, closed := listenBridge(t)
	for i := 0; i < 2; i++ { // sequential sessions, like the daemon's redials
		c, err := dialVsock(t, b, agent.VsockPort)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		r := bufio.NewReader(c)
		for _, msg := range []string{"ping\n", "frame two\n"} {
			if _, err := io.WriteString(c, msg); err != nil {
				t.Fatal(err)
			}
			got, err := r.ReadString('\n')
			if err != nil || got != strings.ToUpper(msg) {
				t.Fatalf("echo of %q: %q, %v", msg, got, err)
			}
		}
		c.Close()
		select { // the host closing ends the guest port's connection
		case <-closed:
		case <-time.After(5 * time.Second):
			t.Fatal("the guest side was not closed after the host closed")
		}
	}
}

func TestVsockBridgeAnswersLikeFirecracker(t *testing.T) {
	b, _ := listenBridge(t)
	raw, err := net.Dial("unix", b.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	io.WriteString(raw, "CONNECT 1024\nhello\n")
	r := bufio.NewReader(raw)
	ok, err := r.ReadString('\n')
	if err != nil || !strings.HasPrefix(ok, "OK ") {
		t.Fatalf("handshake answer %q, %v", ok, err)
	}
	if f := strings.Fields(ok); len(f) != 2 || f[1] != "1073741824" {
		t.Errorf("first host port %q, want Firecracker's 1073741824", ok)
	}
	// Bytes written right after the CONNECT line belong to the stream.
	if got, err := r.ReadString('\n'); err != nil || got != "HELLO\n" {
		t.Fatalf("data after the handshake: %q, %v", got, err)
	}
}

func TestVsockBridgeRefuses(t *testing.T) {
	b, _ := listenBridge(t)
	if _, err := dialVsock(t, b, 52); err == nil || !strings.Contains(err.Error(), "connection closed") {
		t.Errorf("port without a listener: %v", err)
	}
	for _, line := range []string{"HELLO\n", "CONNECT\n", "CONNECT x\n", "CONNECT 1024 extra\n",
		"CONNECT 99999999999\n", strings.Repeat("C", 100) + "\n"} {
		c, err := net.Dial("unix", b.Path)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, line)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(make([]byte, 16))
		// Closed with unread input, the socket may reset instead of EOF.
		if n != 0 || (err != io.EOF && !errors.Is(err, syscall.ECONNRESET)) {
			t.Errorf("handshake %q: read %d bytes, %v; want the connection closed", line, n, err)
		}
		c.Close()
	}
}

func TestVsockBridgeGuestSideCloses(t *testing.T) {
	b, _ := listenBridge(t)
	c, err := dialVsock(t, b, agent.VsockPort)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "bye\n")
	done := make(chan error, 1)
	go func() { _, err := io.ReadAll(c); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("read after the guest closed: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the host side stayed open after the guest side closed")
	}
}

func TestVsockBridgeBindAndClose(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "v.sock")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ListenVsock(p, nil, nil); err == nil || !strings.Contains(err.Error(), "address in use") {
		t.Fatalf("bind over an existing file: %v", err)
	}
	os.Remove(p)
	port, _ := guestPort(t, dir)
	b, err := ListenVsock(p, map[uint32]string{agent.VsockPort: port}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := dialVsock(t, b, agent.VsockPort)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	c.(net.Conn).SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Errorf("a bridged connection after Close: %d, %v", n, err)
	}
	if _, err := os.Lstat(p); err != nil {
		t.Errorf("the socket file went with Close (Firecracker leaves it): %v", err)
	}
	if _, err := net.Dial("unix", p); err == nil {
		t.Error("the socket still accepts after Close")
	}
}

func FuzzParseConnect(f *testing.F) {
	for _, s := range []string{"CONNECT 1024", "CONNECT 0", "CONNECT 4294967295", "CONNECT 4294967296", "CONNECT", "OK 1", "CONNECT -1", " CONNECT\t7 "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		p, err := parseConnect(line)
		if err != nil {
			return
		}
		w := strings.Fields(line)
		if len(w) != 2 || w[0] != "CONNECT" {
			t.Fatalf("%q accepted as port %d", line, p)
		}
		if n, err := strconv.ParseUint(w[1], 10, 32); err != nil || uint32(n) != p {
			t.Fatalf("%q parsed as port %d", line, p)
		}
	})
}
