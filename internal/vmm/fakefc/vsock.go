package fakefc

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Hybrid vsock emulation (boot mode qemu).
//
// Firecracker's vsock device is a unix socket on the host (uds_path of PUT
// /vsock, or vsock_override of a snapshot load) that Firecracker binds when
// it builds the device and that stays after it exits. A host process
// connects, writes "CONNECT <port>\n" and, once a guest listener on that
// AF_VSOCK port accepted, reads "OK <host port>\n"; from then on the
// connection is a byte stream to the guest. When nothing in the guest
// listens on the port, Firecracker closes the connection.
//
// The QEMU guest behind the fake has no vsock device: each emulated port is
// a virtio-serial port of that guest instead, whose host end is a unix
// socket QEMU listens on (VsockBridge.Ports). The bridge answers the
// handshake, connects to that socket and copies bytes both ways until
// either side closes, then closes both. A port with no virtio-serial port,
// or a malformed or too long handshake line, closes the connection without
// an answer, as Firecracker does for a port nobody listens on.
//
// Differences a client can see: "OK" is sent once QEMU's socket accepted
// the connection, not when a guest program accepted it (a request written
// before the guest opened its port waits in the socket instead of failing);
// and QEMU serves one connection per port at a time, so a second concurrent
// connection to a port waits until the first closes, where Firecracker
// would give the guest a second stream.

// VsockBridge is the fake's hybrid vsock: it listens on a unix socket and
// bridges each handshaken connection to a virtio-serial port's host socket.
type VsockBridge struct {
	Path  string            // the hybrid vsock socket (host path)
	Ports map[uint32]string // vsock port -> host unix socket of the guest's virtio-serial port
	Log   *slog.Logger

	ln       net.Listener
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	closed   bool
	nextPort uint32
	wg       sync.WaitGroup
}

// maxHandshake bounds the CONNECT line ("CONNECT 4294967295\n" is 19 bytes).
const maxHandshake = 32

// handshakeWait bounds how long a connection may take to send its CONNECT
// line.
const handshakeWait = 10 * time.Second

// firstHostPort is the first local port Firecracker's muxer hands out for
// host-initiated connections (it counts up from 2^30).
const firstHostPort = 1 << 30

// ListenVsock binds path like Firecracker binds uds_path (an existing file
// there is "address in use") and serves connections until Close.
func ListenVsock(path string, ports map[uint32]string, log *slog.Logger) (*VsockBridge, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if _, err := os.Lstat(path); err == nil {
		return nil, fmt.Errorf("vsock: cannot bind the unix socket %s: address in use", path)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("vsock: cannot bind the unix socket %s: %w", path, err)
	}
	// Like Firecracker, the socket file stays after the VMM is gone.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	b := &VsockBridge{Path: path, Ports: ports, Log: log, ln: ln, conns: map[net.Conn]struct{}{}, nextPort: firstHostPort}
	b.wg.Add(1)
	go b.serve()
	return b, nil
}

// Close stops listening and ends every bridged connection. The socket file
// stays (see ListenVsock).
func (b *VsockBridge) Close() error {
	b.mu.Lock()
	b.closed = true
	for c := range b.conns {
		_ = c.Close()
	}
	b.mu.Unlock()
	err := b.ln.Close()
	b.wg.Wait()
	return err
}

func (b *VsockBridge) serve() {
	defer b.wg.Done()
	for {
		c, err := b.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				b.Log.Warn("vsock accept", "path", b.Path, "err", err)
			}
			return
		}
		if !b.track(c) {
			_ = c.Close()
			return
		}
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			defer b.untrack(c)
			b.handle(c)
		}()
	}
}

// track registers a connection so Close can end it; false once closed.
func (b *VsockBridge) track(c net.Conn) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return false
	}
	b.conns[c] = struct{}{}
	return true
}

func (b *VsockBridge) untrack(c net.Conn) {
	b.mu.Lock()
	delete(b.conns, c)
	b.mu.Unlock()
	_ = c.Close()
}

// handle runs one host connection: handshake, then the bridge.
func (b *VsockBridge) handle(c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(handshakeWait))
	port, err := readConnect(c)
	if err != nil {
		b.Log.Info("vsock: refusing a connection", "path", b.Path, "err", err)
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	target, ok := b.Ports[port]
	if !ok {
		b.Log.Info("vsock: nothing listens on the port; closing", "path", b.Path, "port", port)
		return
	}
	g, err := net.Dial("unix", target)
	if err != nil {
		b.Log.Info("vsock: the guest port is not reachable; closing", "port", port, "err", err)
		return
	}
	if !b.track(g) {
		_ = g.Close()
		return
	}
	defer b.untrack(g)
	b.mu.Lock()
	local := b.nextPort
	b.nextPort++
	b.mu.Unlock()
	if _, err := fmt.Fprintf(c, "OK %d\n", local); err != nil {
		return
	}
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		done <- struct{}{}
	}
	go pipe(g, c)
	go pipe(c, g)
	<-done
	// Either side ended: end both (the deferred closes), and wait for
	// the other copy to see it.
	_ = c.Close()
	_ = g.Close()
	<-done
}

// readConnect reads "CONNECT <port>\n" one byte at a time (nothing after
// the newline is consumed) and returns the port.
func readConnect(r io.Reader) (uint32, error) {
	var line []byte
	b := make([]byte, 1)
	for len(line) <= maxHandshake {
		if _, err := io.ReadFull(r, b); err != nil {
			return 0, fmt.Errorf("handshake: %w", err)
		}
		if b[0] == '\n' {
			return parseConnect(string(line))
		}
		line = append(line, b[0])
	}
	return 0, fmt.Errorf("handshake line longer than %d bytes", maxHandshake)
}

// parseConnect parses the CONNECT line without its newline: two
// whitespace-separated words, like Firecracker's muxer reads it.
func parseConnect(line string) (uint32, error) {
	f := strings.Fields(line)
	if len(f) != 2 || f[0] != "CONNECT" {
		return 0, fmt.Errorf("handshake: want \"CONNECT <port>\", got %q", line)
	}
	p, err := strconv.ParseUint(f[1], 10, 32)
	if err != nil {
		return 0, fmt.Errorf("handshake: bad port %q", f[1])
	}
	return uint32(p), nil
}
