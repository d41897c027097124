package agent

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// TCP stdin (FeatureTCPStdin): see the package doc.

const (
	// tcpStdinAcceptWait bounds how long the agent listens for the host.
	tcpStdinAcceptWait = 30 * time.Second
	// tcpStdinNonceWait bounds how long a connection may take to present
	// the nonce.
	tcpStdinNonceWait = 5 * time.Second
	// tcpStdinTries is how many connections without the nonce the agent
	// closes before it stops listening.
	tcpStdinTries = 16
	// tcpStdinDrain bounds how long the agent keeps reading a connection
	// whose process stopped reading, so the host's copy ends cleanly.
	tcpStdinDrain = 30 * time.Second
)

// listenStdin opens the guest side of a TCP stdin: a listener on a random
// port and the goroutine that accepts the connection presenting nonce.
// The connection (nil when none came) arrives on the channel; ctx ending
// closes the listener.
func listenStdin(ctx context.Context, nonce []byte) (port int, conns <-chan net.Conn, err error) {
	ln, err := net.Listen("tcp", ":0")
	if err != nil {
		return 0, nil, err
	}
	ch := make(chan net.Conn, 1)
	go func() {
		stop := context.AfterFunc(ctx, func() { _ = ln.Close() })
		defer stop()
		defer ln.Close()
		if tl, ok := ln.(*net.TCPListener); ok {
			_ = tl.SetDeadline(time.Now().Add(tcpStdinAcceptWait))
		}
		for i := 0; i < tcpStdinTries; i++ {
			c, err := ln.Accept()
			if err != nil {
				break
			}
			got := make([]byte, NonceBytes)
			_ = c.SetReadDeadline(time.Now().Add(tcpStdinNonceWait))
			if _, err := io.ReadFull(c, got); err == nil && subtle.ConstantTimeCompare(got, nonce) == 1 {
				_ = c.SetReadDeadline(time.Time{})
				ch <- c
				return
			}
			_ = c.Close()
		}
		ch <- nil
	}()
	return ln.Addr().(*net.TCPAddr).Port, ch, nil
}

// copyStdinConn copies c to the process's stdin w; when the process stops
// reading, the rest of c is drained (bounded) so the host's copy ends
// without an error. c is closed when ctx ends.
func copyStdinConn(ctx context.Context, w io.Writer, c net.Conn) {
	stop := context.AfterFunc(ctx, func() { _ = c.Close() })
	defer stop()
	defer c.Close()
	if _, err := io.Copy(w, c); err != nil && !errors.Is(err, net.ErrClosed) {
		_ = c.SetReadDeadline(time.Now().Add(tcpStdinDrain))
		_, _ = io.Copy(io.Discard, c)
	}
}

// sendStdinConn is the host side: dial port, present nonce, copy r, then
// half-close. dialed reports whether it got as far as reading r.
func sendStdinConn(ctx context.Context, dial func(context.Context, int) (net.Conn, error), port int, nonce []byte, r io.Reader) (dialed bool, err error) {
	c, err := dial(ctx, port)
	if err != nil {
		return false, fmt.Errorf("connect to guest port %d: %w", port, err)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.Close() })
	defer stop()
	defer c.Close()
	if _, err := c.Write(nonce); err != nil {
		return false, fmt.Errorf("guest port %d: %w", port, err)
	}
	n, err := io.Copy(c, r)
	if err != nil {
		return true, fmt.Errorf("guest port %d after %d bytes: %w", port, n, err)
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		if err := cw.CloseWrite(); err != nil {
			return true, fmt.Errorf("guest port %d: %w", port, err)
		}
	}
	// Hold the connection until the exec ends (ctx): closing it now could
	// reset bytes the guest has not read yet.
	<-ctx.Done()
	return true, nil
}
