package paths

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrUnsafePath is wrapped by every refusal of CheckNoSymlinks and
// OpenNoSymlinks: the path is relative, contains "..", leaves its root, or
// passes through a symlink.
var ErrUnsafePath = errors.New("unsafe path")

func unsafe(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrUnsafePath, fmt.Sprintf(format, args...))
}

// Beneath is the lexical part of CheckNoSymlinks: root and path must be
// absolute, free of ".." elements and NUL bytes, and path must be root or
// below it. It returns path relative to root ("." for root itself), with
// no ".." element. It touches no file.
func Beneath(root, path string) (string, error) {
	for _, p := range []struct{ name, v string }{{"root", root}, {"path", path}} {
		if !filepath.IsAbs(p.v) {
			return "", unsafe("%s %q is not absolute", p.name, p.v)
		}
		if strings.IndexByte(p.v, 0) >= 0 {
			return "", unsafe("%s %q contains a NUL byte", p.name, p.v)
		}
		for _, el := range strings.Split(p.v, "/") {
			if el == ".." {
				return "", unsafe("%s %q contains \"..\"", p.name, p.v)
			}
		}
	}
	root, path = filepath.Clean(root), filepath.Clean(path)
	rel, err := filepath.Rel(root, path)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", unsafe("%s is not under %s", path, root)
	}
	return rel, nil
}

// CheckNoSymlinks checks that path is root or below it (Beneath) and that
// no component from root down to path is a symlink (each is Lstat'ed, root
// included; components above root are not checked). The final component
// may not exist yet; every other one must be an existing directory.
// Refusals wrap ErrUnsafePath; a missing parent wraps os.ErrNotExist.
//
// The check is only as good as the moment it ran: a process that can write
// below root can swap a directory for a symlink afterwards. Open files with
// OpenNoSymlinks, which resolves race-free in the kernel.
func CheckNoSymlinks(root, path string) error {
	rel, err := Beneath(root, path)
	if err != nil {
		return err
	}
	root = filepath.Clean(root)
	st, err := os.Lstat(root)
	if err != nil {
		return fmt.Errorf("managed root %s: %w", root, err)
	}
	if st.Mode()&os.ModeSymlink != 0 {
		return unsafe("managed root %s is a symlink", root)
	}
	if !st.IsDir() {
		return fmt.Errorf("managed root %s is not a directory: %w", root, syscall.ENOTDIR)
	}
	if rel == "." {
		return nil
	}
	parts := strings.Split(rel, "/")
	cur := root
	for i, part := range parts {
		cur = filepath.Join(cur, part)
		last := i == len(parts)-1
		st, err := os.Lstat(cur)
		if errors.Is(err, os.ErrNotExist) {
			if last {
				return nil
			}
			return fmt.Errorf("%s: directory %s does not exist: %w", path, cur, os.ErrNotExist)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if st.Mode()&os.ModeSymlink != 0 {
			return unsafe("%s: %s is a symlink", path, cur)
		}
		if !last && !st.IsDir() {
			return fmt.Errorf("%s: %s is not a directory: %w", path, cur, syscall.ENOTDIR)
		}
	}
	return nil
}

// OpenNoSymlinks opens path like os.OpenFile, but only if it is root or
// below it and no component from root down (the final one included) is a
// symlink. Resolution happens in the kernel (openat2 with RESOLVE_BENEATH
// and RESOLVE_NO_SYMLINKS), so it cannot be raced. On kernels without
// openat2 it falls back to CheckNoSymlinks plus O_NOFOLLOW. Refusals wrap
// ErrUnsafePath.
func OpenNoSymlinks(root, path string, flag int, perm os.FileMode) (*os.File, error) {
	rel, err := Beneath(root, path)
	if err != nil {
		return nil, err
	}
	root = filepath.Clean(root)
	rootFD, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
			return nil, unsafe("managed root %s is a symlink or not a directory", root)
		}
		return nil, fmt.Errorf("open managed root %s: %w", root, err)
	}
	defer unix.Close(rootFD)
	how := &unix.OpenHow{
		Flags:   uint64(flag) | unix.O_CLOEXEC,
		Mode:    uint64(perm.Perm()),
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	}
	if flag&(os.O_CREATE|unix.O_TMPFILE) == 0 {
		how.Mode = 0
	}
	var fd int
	for range 16 { // EAGAIN: a concurrent rename raced the lookup; retry
		fd, err = unix.Openat2(rootFD, rel, how)
		if !errors.Is(err, unix.EINTR) && !errors.Is(err, unix.EAGAIN) {
			break
		}
	}
	switch {
	case err == nil:
		return os.NewFile(uintptr(fd), filepath.Join(root, rel)), nil
	case errors.Is(err, unix.ENOSYS):
		if err := CheckNoSymlinks(root, path); err != nil {
			return nil, err
		}
		f, err := os.OpenFile(path, flag|unix.O_NOFOLLOW, perm)
		if errors.Is(err, unix.ELOOP) {
			return nil, unsafe("%s is a symlink", path)
		}
		return f, err
	case errors.Is(err, unix.ELOOP), errors.Is(err, unix.EXDEV):
		return nil, unsafe("%s passes through a symlink below %s", path, root)
	default:
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
}
