package agent

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// DialUnix reaches the agent through a unix socket that is the host end of
// the guest's virtio-serial port (QEMU listens on it). QEMU takes one
// connection at a time; a second one waits until the first closes, so keep
// one Conn per VM.
func DialUnix(path string) DialFunc {
	return func(ctx context.Context) (io.ReadWriteCloser, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", path)
		if err != nil {
			return nil, err
		}
		return c, nil
	}
}

// handshakeTimeout bounds the hybrid vsock handshake when ctx has no
// deadline.
const handshakeTimeout = 5 * time.Second

// DialHybridVsock reaches the agent through Firecracker's hybrid vsock: the
// unix socket udsPath, then "CONNECT <port>\n", answered "OK <hostport>\n"
// once the guest accepted. Anything else (Firecracker closes the socket when
// nothing listens on the port) is an error.
func DialHybridVsock(udsPath string, port uint32) DialFunc {
	return func(ctx context.Context) (io.ReadWriteCloser, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", udsPath)
		if err != nil {
			return nil, err
		}
		deadline, ok := ctx.Deadline()
		if !ok {
			deadline = time.Now().Add(handshakeTimeout)
		}
		_ = c.SetDeadline(deadline)
		if err := hybridHandshake(c, port); err != nil {
			c.Close()
			return nil, fmt.Errorf("vsock %s port %d: %w", udsPath, port, err)
		}
		_ = c.SetDeadline(time.Time{})
		return c, nil
	}
}

// hybridHandshake writes the CONNECT line and reads the answer one byte at
// a time, so no protocol byte after it is consumed.
func hybridHandshake(rw io.ReadWriter, port uint32) error {
	if _, err := fmt.Fprintf(rw, "CONNECT %d\n", port); err != nil {
		return err
	}
	var line []byte
	b := make([]byte, 1)
	for len(line) < 64 {
		if _, err := io.ReadFull(rw, b); err != nil {
			if err == io.EOF {
				return fmt.Errorf("connection closed during the handshake (is the agent listening on port %d?)", port)
			}
			return err
		}
		if b[0] == '\n' {
			f := strings.Fields(string(line))
			if len(f) != 2 || f[0] != "OK" {
				return fmt.Errorf("unexpected handshake answer %q", line)
			}
			if _, err := strconv.ParseUint(f[1], 10, 32); err != nil {
				return fmt.Errorf("unexpected handshake answer %q", line)
			}
			return nil
		}
		line = append(line, b[0])
	}
	return fmt.Errorf("handshake answer too long")
}
