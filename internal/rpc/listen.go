package rpc

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Listen creates a unix socket listener at path with mode 0600. The parent
// directory must exist. An existing socket file is removed only when
// nothing answers on it (a stale socket of a dead server); a live one is an
// error, and so is any other kind of file at path.
//
// The socket is bound inside a fresh 0700 directory next to path, set to
// 0600 and only then renamed into place, so it is never reachable with
// wider permissions (no process-wide umask change). Closing the listener
// removes the socket file if it is still the one Listen created.
func Listen(path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if st, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	} else if !st.IsDir() {
		return nil, fmt.Errorf("socket directory %s is not a directory", dir)
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}
	tmpDir, err := os.MkdirTemp(dir, ".sock-")
	if err != nil {
		return nil, fmt.Errorf("create socket: %w", err)
	}
	defer os.RemoveAll(tmpDir)
	tmp := filepath.Join(tmpDir, "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod socket: %w", err)
	}
	st, err := os.Lstat(tmp)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("stat socket: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		return nil, fmt.Errorf("place socket at %s: %w", path, err)
	}
	return &unixListener{UnixListener: ln, path: path, created: st}, nil
}

// removeStale removes a socket at path that nobody answers on.
func removeStale(path string) error {
	st, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("inspect %s: %w", path, err)
	}
	if st.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket (%s): move it away", path, st.Mode().Type())
	}
	conn, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		conn.Close()
		return fmt.Errorf("another server is already listening on %s (stop it first)", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("probe existing socket %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	return nil
}

type unixListener struct {
	*net.UnixListener
	path    string
	created os.FileInfo
}

// Close stops listening and removes the socket file if it is still ours.
func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	if st, serr := os.Lstat(l.path); serr == nil && os.SameFile(st, l.created) {
		_ = os.Remove(l.path)
	}
	return err
}
