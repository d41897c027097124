package privops

// Path operations on file descriptors.
//
// The root side treats the owner as hostile, and every path it is handed
// lies in a tree the owner can write (the managed roots). Checking a path
// and then using it by name lets the owner swap a parent directory for a
// symlink in between (a RENAME_EXCHANGE loop wins such races within a few
// dozen tries). So every operation here resolves its path exactly once,
// with openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|RESOLVE_NO_MAGICLINKS)
// relative to a descriptor of the managed root that contains it, and then
// works only on descriptors: the parent directory's fd for creating and
// renaming (openat O_CREAT|O_EXCL|O_NOFOLLOW, renameat), the file's own fd
// for fstat and fchown (fchownat AT_EMPTY_PATH). A regular file with more
// than one link is refused: it may be a hard link to a file elsewhere.
//
// A Local without Roots (the owner daemon running as root itself, where
// there is nobody to defend against) resolves from "/" and still refuses a
// symlink in the last component.

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/bangerdev/banger/internal/paths"
)

// ErrUnsafePath is returned (wrapped, with ErrInvalidArgument) when a path
// cannot be resolved below a managed root without symlinks, or names a
// file that may not be touched (a hard link, a device).
var ErrUnsafePath = errors.New("unsafe path")

// openBeneath opens path with flags (O_CLOEXEC is added) relative to the
// managed root in roots that contains it, refusing any symlink below the
// root and any escape. With no roots it opens from "/" with O_NOFOLLOW.
func openBeneath(roots []string, path string, flags int, mode uint32) (*os.File, error) {
	if !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return nil, fmt.Errorf("%w: %w: %q must be a clean absolute path", ErrInvalidArgument, ErrUnsafePath, path)
	}
	if len(roots) == 0 {
		fd, err := unix.Open(path, flags|unix.O_CLOEXEC|unix.O_NOFOLLOW, mode)
		if err != nil {
			return nil, &os.PathError{Op: "open", Path: path, Err: err}
		}
		return os.NewFile(uintptr(fd), path), nil
	}
	for _, root := range roots {
		rel, err := paths.Beneath(root, path)
		if err != nil {
			continue
		}
		// The root itself is opened by name: it is root's configuration
		// (the owner cannot replace /var/lib/banger, only what is in it).
		rfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, &os.PathError{Op: "open", Path: root, Err: err}
		}
		defer unix.Close(rfd)
		if rel == "" || rel == "." {
			rel = "."
		}
		fd, err := unix.Openat2(rfd, rel, &unix.OpenHow{
			Flags:   uint64(flags | unix.O_CLOEXEC),
			Mode:    uint64(mode),
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
		})
		if errors.Is(err, unix.ENOSYS) {
			// No openat2 here: kernels before 5.6, and systemd units with
			// RestrictSUIDSGID=yes (bangerd-root.service), whose seccomp
			// filter answers openat2 with ENOSYS because it cannot see the
			// flags. Walk the components on descriptors instead.
			fd, err = walkBeneath(rfd, rel, flags|unix.O_CLOEXEC, mode)
		}
		if err != nil {
			if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV) {
				return nil, fmt.Errorf("%w: %w: %s reaches a symlink or leaves %s", ErrInvalidArgument, ErrUnsafePath, path, root)
			}
			return nil, &os.PathError{Op: "open", Path: path, Err: err}
		}
		return os.NewFile(uintptr(fd), path), nil
	}
	return nil, fmt.Errorf("%w: %w: %s is not inside banger's directories (%s)", ErrInvalidArgument, ErrUnsafePath, path, strings.Join(roots, ", "))
}

// walkBeneath resolves rel (clean, relative, no "..") below dirfd one
// component at a time: every directory is opened with
// O_PATH|O_DIRECTORY|O_NOFOLLOW relative to the previous one's descriptor
// and the last component with flags|O_NOFOLLOW, so a symlink fails (ELOOP)
// and nothing is re-resolved by name: what openat2 with
// RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS does (including returning the link
// itself for a final symlink opened O_PATH|O_NOFOLLOW).
func walkBeneath(dirfd int, rel string, flags int, mode uint32) (int, error) {
	if rel == "." {
		return unix.Openat(dirfd, ".", flags, mode)
	}
	parts := strings.Split(rel, "/")
	for _, p := range parts {
		if p == "" || p == "." || p == ".." {
			return -1, unix.EXDEV
		}
	}
	cur, err := unix.Dup(dirfd)
	if err != nil {
		return -1, err
	}
	defer func() { unix.Close(cur) }()
	// symlinkErr turns ENOTDIR for a symlink into ELOOP, as openat2 says.
	symlinkErr := func(name string, err error) error {
		var st unix.Stat_t
		if errors.Is(err, unix.ENOTDIR) && unix.Fstatat(cur, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
			return unix.ELOOP
		}
		return err
	}
	last := len(parts) - 1
	for _, p := range parts[:last] {
		next, err := unix.Openat(cur, p, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return -1, symlinkErr(p, err)
		}
		unix.Close(cur)
		cur = next
	}
	fd, err := unix.Openat(cur, parts[last], flags|unix.O_NOFOLLOW, mode)
	if err != nil {
		return -1, symlinkErr(parts[last], err)
	}
	return fd, nil
}

// openParent opens the directory that will hold path.
func openParent(roots []string, path string) (*os.File, error) {
	return openBeneath(roots, filepath.Dir(path), unix.O_PATH|unix.O_DIRECTORY, 0)
}

// checkSingleLink refuses anything but a directory, a socket, a fifo or a
// regular file with exactly one link.
func checkSingleLink(f *os.File) (unix.Stat_t, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return st, fmt.Errorf("fstat %s: %w", f.Name(), err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		if st.Nlink != 1 {
			return st, fmt.Errorf("%w: %w: %s has %d hard links", ErrInvalidArgument, ErrUnsafePath, f.Name(), st.Nlink)
		}
	case unix.S_IFDIR, unix.S_IFSOCK, unix.S_IFIFO:
	default:
		return st, fmt.Errorf("%w: %w: %s is not a regular file, directory or socket", ErrInvalidArgument, ErrUnsafePath, f.Name())
	}
	return st, nil
}

// createFileAt writes data to a new file in dir (a descriptor) under a
// temporary name, gives it to uid/gid when chown is set, and renames it to
// name: a symlink or file already at name is replaced, never followed.
func createFileAt(dir *os.File, name string, data []byte, perm uint32, uid, gid int, chown bool) error {
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	tmp := "." + name + "." + hex.EncodeToString(rnd[:]) + ".tmp"
	dfd := int(dir.Fd())
	fd, err := unix.Openat(dfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, perm)
	if err != nil {
		return fmt.Errorf("create %s: %w", filepath.Join(dir.Name(), tmp), err)
	}
	f := os.NewFile(uintptr(fd), tmp)
	fail := func(err error) error {
		f.Close()
		_ = unix.Unlinkat(dfd, tmp, 0)
		return err
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	if chown {
		if err := f.Chown(uid, gid); err != nil {
			return fail(fmt.Errorf("chown %s: %w", tmp, err))
		}
	}
	if err := f.Close(); err != nil {
		_ = unix.Unlinkat(dfd, tmp, 0)
		return err
	}
	if err := unix.Renameat(dfd, tmp, dfd, name); err != nil {
		_ = unix.Unlinkat(dfd, tmp, 0)
		return fmt.Errorf("rename %s: %w", filepath.Join(dir.Name(), name), err)
	}
	return nil
}

// openAppendAt opens (creating it 0640) the file name in dir for
// appending, without following a symlink, and refuses hard links.
func openAppendAt(dir *os.File, name string) (*os.File, error) {
	fd, err := unix.Openat(int(dir.Fd()), name, unix.O_WRONLY|unix.O_APPEND|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0o640)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return nil, fmt.Errorf("%w: %w: %s is a symlink", ErrInvalidArgument, ErrUnsafePath, filepath.Join(dir.Name(), name))
		}
		return nil, fmt.Errorf("open %s: %w", filepath.Join(dir.Name(), name), err)
	}
	f := os.NewFile(uintptr(fd), filepath.Join(dir.Name(), name))
	st, err := checkSingleLink(f)
	if err == nil && st.Mode&unix.S_IFMT != unix.S_IFREG {
		err = fmt.Errorf("%w: %w: %s is not a regular file", ErrInvalidArgument, ErrUnsafePath, f.Name())
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
