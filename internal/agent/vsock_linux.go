package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// DialVsock reaches the agent over AF_VSOCK (QEMU with vhost-vsock): guest
// context id cid, port port.
func DialVsock(cid, port uint32) DialFunc {
	return func(ctx context.Context) (io.ReadWriteCloser, error) {
		fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("vsock socket: %w", err)
		}
		f := os.NewFile(uintptr(fd), fmt.Sprintf("vsock:%d:%d", cid, port))
		rc, err := f.SyscallConn()
		if err != nil {
			f.Close()
			return nil, err
		}
		var cerr error
		_ = rc.Control(func(fd uintptr) {
			cerr = unix.Connect(int(fd), &unix.SockaddrVM{CID: cid, Port: port})
		})
		if errors.Is(cerr, unix.EINPROGRESS) {
			if dl, ok := ctx.Deadline(); ok {
				_ = f.SetWriteDeadline(dl)
			} else {
				_ = f.SetWriteDeadline(time.Now().Add(handshakeTimeout))
			}
			first := true
			werr := rc.Write(func(fd uintptr) bool {
				if first {
					first = false
					return false // wait for writability
				}
				n, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
				if err == nil && n != 0 {
					err = unix.Errno(n)
				}
				cerr = err
				return true
			})
			if werr != nil && cerr == nil {
				cerr = werr
			}
			_ = f.SetWriteDeadline(time.Time{})
		}
		if cerr != nil {
			f.Close()
			return nil, fmt.Errorf("vsock connect cid %d port %d: %w", cid, port, cerr)
		}
		return f, nil
	}
}

// ListenVsock listens on AF_VSOCK port in the guest. Accept returns each
// connection as an *os.File.
func ListenVsock(port uint32) (*VsockListener, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("vsock socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vsock bind port %d: %w", port, err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vsock listen: %w", err)
	}
	return &VsockListener{fd: fd}, nil
}

// VsockListener is a listening AF_VSOCK socket.
type VsockListener struct{ fd int }

// Accept waits for the next connection.
func (l *VsockListener) Accept() (*os.File, error) {
	for {
		nfd, _, err := unix.Accept4(l.fd, unix.SOCK_CLOEXEC)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, err
		}
		return os.NewFile(uintptr(nfd), "vsock-conn"), nil
	}
}

// Close stops listening (a blocked Accept returns an error).
func (l *VsockListener) Close() error {
	_ = unix.Shutdown(l.fd, unix.SHUT_RDWR)
	return unix.Close(l.fd)
}

// FindSerialPort returns the device of the virtio-serial port called name:
// /dev/virtio-ports/NAME when udev made the link, else the /dev/vportNpM
// whose sysfs name matches (banger's init has no udev). fs.ErrNotExist
// (wrapped) when the VM has no such port.
func FindSerialPort(sysRoot, devRoot, name string) (string, error) {
	link := filepath.Join(devRoot, "virtio-ports", name)
	if _, err := os.Stat(link); err == nil {
		return link, nil
	}
	ports, _ := filepath.Glob(filepath.Join(sysRoot, "class", "virtio-ports", "vport*"))
	for _, p := range ports {
		b, err := os.ReadFile(filepath.Join(p, "name"))
		if err != nil || strings.TrimSpace(string(b)) != name {
			continue
		}
		dev := filepath.Join(devRoot, filepath.Base(p))
		if _, err := os.Stat(dev); err != nil {
			return "", fmt.Errorf("virtio port %s is %s: %w", name, dev, err)
		}
		return dev, nil
	}
	return "", fmt.Errorf("virtio port %s: %w", name, os.ErrNotExist)
}
