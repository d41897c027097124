package privops

// The Firecracker jailer's chroots.
//
// The jailer runs as root and, before it pivots into its chroot, creates
// the chroot directory and copies the firecracker binary into it by name.
// So the whole chroot must lie in a tree the owner cannot write: the chroot
// base is root's own configuration (Local.JailerChrootBase, the helper's
// Policy.JailerChrootBase; /var/lib/banger-jail in system mode), never a
// request's, and below it PrepareJail builds, on directory descriptors,
//
//	<base>/                 root's, not group/other-writable (checked)
//	  <exec>/               root, 0711
//	    <id>/               root, 0711 (a stale one is removed first)
//	      root/             root, 0755: the chroot; the owner cannot write here
//	        run/            the owner's, 0700: the API and vsock sockets
//	        <files>         hard links to the VM's files (bind mounts when the
//	                        source is on another mount), or dm device nodes
//	        <created>       empty files the owner's VMM writes (serial log ...)
//
// Every source file is opened once below a managed root without symlinks
// (openBeneath) and linked from that descriptor (linkat AT_EMPTY_PATH); it
// must be a regular file of the owner's (or root's); when it is on another
// mount than the base (systemd's ReadWritePaths= are separate bind mounts of
// one filesystem, and link(2) never crosses mounts) it is bind-mounted onto
// an empty file instead, and RemoveJail unmounts it. A block-device drive
// must be banger's device-mapper device (/dev/mapper/NAME, checked in
// sysfs) and is recreated with mknodat. RemoveJail deletes one VM's <id>
// directory on descriptors without following a symlink or crossing a mount
// (the owner can plant anything in run/).

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// JailSpec is one VM's Firecracker jail: <base>/<ExecName>/<ID>/root, with
// base the jailer chroot base of root's configuration.
type JailSpec struct {
	// ExecName is the base name of the firecracker binary the jailer runs
	// (its --exec-file), e.g. "firecracker".
	ExecName string `json:"exec_name"`
	// ID is the jailer's --id (the VM id).
	ID string `json:"id"`
	// UID and GID are the VMM's (the owner's): run/ and the Create files
	// are theirs.
	UID int `json:"uid"`
	GID int `json:"gid"`
	// Files are placed in the chroot (hard link, or device node for a dm
	// device); Create names empty files made for the VMM.
	Files  []JailFile `json:"files,omitempty"`
	Create []string   `json:"create,omitempty"`
}

// JailFile places Source (a file below a managed root, or banger's
// /dev/mapper/NAME) at Name (one path component) in the chroot.
type JailFile struct {
	Name   string `json:"name"`
	Source string `json:"source"`
}

// Limits of a JailSpec.
const (
	maxJailFiles = 32
	jailRunDir   = "run"
)

var jailEntryRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// ErrNoJailBase is returned (wrapped) when no jailer chroot base is
// configured: jailer mode is then unavailable.
var ErrNoJailBase = errors.New("no jailer chroot base configured")

// ValidateJailSpec checks the parts of a JailSpec that need no policy:
// names and ids of the jailer's alphabet, entry names one component that is
// not run/ or the exec file, clean absolute sources, uid/gid >= 0. Both the
// in-process (Local) and the helper (Policy.ValidateJail) paths run it.
func ValidateJailSpec(spec JailSpec) error {
	if err := checkJailerName("jail.exec_name", spec.ExecName); err != nil {
		return err
	}
	if !strings.HasPrefix(spec.ExecName, "firecracker") {
		return invalid("jail.exec_name", "%q is not a firecracker binary", clip(spec.ExecName))
	}
	if err := checkJailerID("jail.id", spec.ID); err != nil {
		return err
	}
	if spec.UID < 0 || spec.GID < 0 {
		return invalid("jail.uid", "uid/gid %d/%d must be >= 0", spec.UID, spec.GID)
	}
	if len(spec.Files)+len(spec.Create) > maxJailFiles {
		return invalid("jail.files", "%d entries (at most %d)", len(spec.Files)+len(spec.Create), maxJailFiles)
	}
	seen := map[string]bool{}
	entry := func(field, name string) error {
		if !jailEntryRE.MatchString(name) || name == jailRunDir || name == spec.ExecName || name == spec.ExecName+".pid" {
			return invalid(field, "%q must be one name of [A-Za-z0-9._-] (not run, the exec file or its pid file)", clip(name))
		}
		if seen[name] {
			return invalid(field, "%q given twice", name)
		}
		seen[name] = true
		return nil
	}
	for i, f := range spec.Files {
		field := fmt.Sprintf("jail.files[%d]", i)
		if err := entry(field+".name", f.Name); err != nil {
			return err
		}
		if err := checkCleanPath(field+".source", f.Source); err != nil {
			return err
		}
		if dm, ok := strings.CutPrefix(f.Source, "/dev/mapper/"); ok {
			if err := checkDMName(field+".source", DMNamePrefix, dm); err != nil {
				return err
			}
		}
	}
	for i, n := range spec.Create {
		if err := entry(fmt.Sprintf("jail.create[%d]", i), n); err != nil {
			return err
		}
	}
	return nil
}

// checkJailerName: what the jailer accepts as a file or directory name.
func checkJailerName(field, name string) error {
	if !jailerNameRE.MatchString(name) || len(name) > 64 || name == "." || name == ".." {
		return invalid(field, "%q must be one name of [A-Za-z0-9._-] (at most 64 bytes)", clip(name))
	}
	return nil
}

// checkJailerID: the jailer's --id, 1-64 bytes of [A-Za-z0-9-].
func checkJailerID(field, id string) error {
	if !jailerIDRE.MatchString(id) {
		return invalid(field, "%q must be 1-64 bytes of [A-Za-z0-9-]", clip(id))
	}
	return nil
}

var jailerIDRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9-]{0,63}$`)

// PrepareJail builds one VM's chroot below the configured base (see the file
// comment) and returns its path (<base>/<exec>/<id>/root). A jail left from
// an earlier start is removed first. On failure nothing is left behind.
func (l *Local) PrepareJail(ctx context.Context, spec JailSpec) (string, error) {
	if err := ValidateJailSpec(spec); err != nil {
		return "", fmt.Errorf("prepare jail: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	exec, err := l.openJailExecDir(spec.ExecName, true)
	if err != nil {
		return "", fmt.Errorf("prepare jail: %w", err)
	}
	defer exec.Close()
	efd := int(exec.Fd())
	if err := removeJailAt(efd, spec.ID); err != nil {
		return "", fmt.Errorf("prepare jail: remove stale jail %s: %w", filepath.Join(exec.Name(), spec.ID), err)
	}
	chroot := filepath.Join(exec.Name(), spec.ID, "root")
	if err := l.buildJail(efd, chroot, spec); err != nil {
		if rerr := removeJailAt(efd, spec.ID); rerr != nil {
			err = errors.Join(err, fmt.Errorf("undo: %w", rerr))
		}
		return "", fmt.Errorf("prepare jail for %s: %w", spec.ID, err)
	}
	return chroot, nil
}

func (l *Local) buildJail(efd int, chroot string, spec JailSpec) error {
	idDir, err := mkdirOpenAt(efd, spec.ID, 0o711, true)
	if err != nil {
		return err
	}
	defer idDir.Close()
	root, err := mkdirOpenAt(int(idDir.Fd()), "root", 0o755, true)
	if err != nil {
		return err
	}
	defer root.Close()
	rfd := int(root.Fd())
	run, err := mkdirOpenAt(rfd, jailRunDir, 0o700, true)
	if err != nil {
		return err
	}
	err = unix.Fchownat(int(run.Fd()), "", spec.UID, spec.GID, unix.AT_EMPTY_PATH)
	run.Close()
	if err != nil {
		return fmt.Errorf("chown %s/run: %w", chroot, err)
	}
	for _, f := range spec.Files {
		if err := l.placeJailFile(rfd, f, spec.UID); err != nil {
			return fmt.Errorf("%s: %w", f.Name, err)
		}
	}
	for _, name := range spec.Create {
		fd, err := unix.Openat(rfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o640)
		if err != nil {
			return fmt.Errorf("create %s/%s: %w", chroot, name, err)
		}
		err = unix.Fchown(fd, spec.UID, spec.GID)
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("chown %s/%s: %w", chroot, name, err)
		}
	}
	return nil
}

// placeJailFile links f.Source into the chroot (rfd) as f.Name.
func (l *Local) placeJailFile(rfd int, f JailFile, owner int) error {
	if name, ok := strings.CutPrefix(f.Source, "/dev/mapper/"); ok {
		return placeDMNode(rfd, f.Name, name)
	}
	src, err := openBeneath(l.Roots, f.Source, unix.O_PATH|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer src.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(src.Fd()), &st); err != nil {
		return fmt.Errorf("fstat %s: %w", f.Source, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("%w: %w: %s is not a regular file", ErrInvalidArgument, ErrUnsafePath, f.Source)
	}
	if len(l.Roots) > 0 && int(st.Uid) != owner && st.Uid != 0 {
		return fmt.Errorf("%w: %w: %s belongs to uid %d, not to the owner (%d)", ErrInvalidArgument, ErrUnsafePath, f.Source, st.Uid, owner)
	}
	err = unix.Linkat(int(src.Fd()), "", rfd, f.Name, unix.AT_EMPTY_PATH)
	if errors.Is(err, unix.EXDEV) {
		// Another filesystem, or another mount of the same one (systemd's
		// ReadWritePaths= and StateDirectory= are separate bind mounts):
		// bind-mount the opened file instead. The jailer carries it into
		// its mount namespace (it bind-mounts the chroot with MS_REC).
		return bindInto(src, rfd, f.Name)
	}
	if err != nil {
		return fmt.Errorf("hard link %s into the jail: %w", f.Source, err)
	}
	return nil
}

// bindInto bind-mounts the file src (a descriptor) onto a new empty file
// name in the directory rfd, both named through /proc/self/fd so nothing is
// resolved by path.
func bindInto(src *os.File, rfd int, name string) error {
	tfd, err := unix.Openat(rfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("create mount point %s: %w", name, err)
	}
	defer unix.Close(tfd)
	if err := unix.Mount("/proc/self/fd/"+strconv.Itoa(int(src.Fd())), "/proc/self/fd/"+strconv.Itoa(tfd), "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s into the jail (not on the jail's filesystem, and a bind mount failed): %w", src.Name(), err)
	}
	return nil
}

// unmountJailFiles detaches the bind mounts bindInto made directly in the
// chroot <id>/root (below dirfd). The chroot is root's, so the owner cannot
// have swapped its entries; a mount is recognised with statx
// (STATX_ATTR_MOUNT_ROOT) and unmounted through /proc/self/fd, without
// following a symlink.
func unmountJailFiles(dirfd int, id string) error {
	fd, err := unix.Openat(dirfd, id+"/root", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open %s/root: %w", id, err)
	}
	d := os.NewFile(uintptr(fd), id+"/root")
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return fmt.Errorf("read %s/root: %w", id, err)
	}
	var errs []error
	for _, n := range names {
		var stx unix.Statx_t
		if err := unix.Statx(fd, n, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_TYPE, &stx); err != nil {
			continue
		}
		if stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT == 0 || stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT == 0 || stx.Mode&unix.S_IFMT == unix.S_IFLNK {
			continue
		}
		if err := unix.Unmount("/proc/self/fd/"+strconv.Itoa(fd)+"/"+n, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil {
			errs = append(errs, fmt.Errorf("unmount %s/root/%s: %w", id, n, err))
		}
	}
	return errors.Join(errs...)
}

// removeJailAt removes the jail id in the exec directory dirfd: its bind
// mounts first, then the tree.
func removeJailAt(dirfd int, id string) error {
	if err := unmountJailFiles(dirfd, id); err != nil {
		return err
	}
	return removeAllAt(dirfd, id, 0)
}

// placeDMNode recreates banger's device-mapper device NAME as a block
// device node in the chroot, with the node's mode and owner. The device is
// identified by its sysfs dm/name, so a name that is not a dm device (or a
// /dev/mapper entry pointing elsewhere) is refused.
func placeDMNode(rfd int, entry, name string) error {
	if err := checkDMName("jail.files.source", DMNamePrefix, name); err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Stat("/dev/mapper/"+name, &st); err != nil {
		return fmt.Errorf("stat /dev/mapper/%s: %w", name, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return invalid("jail.files.source", "/dev/mapper/%s is not a block device", name)
	}
	major, minor := unix.Major(st.Rdev), unix.Minor(st.Rdev)
	got, err := os.ReadFile("/sys/dev/block/" + strconv.FormatUint(uint64(major), 10) + ":" + strconv.FormatUint(uint64(minor), 10) + "/dm/name")
	if err != nil || strings.TrimSpace(string(got)) != name {
		return invalid("jail.files.source", "/dev/mapper/%s is not the device-mapper device %s", name, name)
	}
	if err := unix.Mknodat(rfd, entry, st.Mode&(unix.S_IFMT|0o777), int(st.Rdev)); err != nil {
		return fmt.Errorf("mknod %s (device nodes in the jail need root): %w", entry, err)
	}
	if err := unix.Fchownat(rfd, entry, int(st.Uid), int(st.Gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("chown %s: %w", entry, err)
	}
	return nil
}

// RemoveJail removes one VM's jail (<base>/<exec>/<id>), on descriptors:
// no symlink is followed and no mount crossed. A jail that does not exist
// is not an error.
func (l *Local) RemoveJail(ctx context.Context, spec JailSpec) error {
	if err := checkJailerName("jail.exec_name", spec.ExecName); err != nil {
		return fmt.Errorf("remove jail: %w", err)
	}
	if err := checkJailerID("jail.id", spec.ID); err != nil {
		return fmt.Errorf("remove jail: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	exec, err := l.openJailExecDir(spec.ExecName, false)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove jail: %w", err)
	}
	defer exec.Close()
	if err := removeJailAt(int(exec.Fd()), spec.ID); err != nil {
		return fmt.Errorf("remove jail %s: %w", filepath.Join(exec.Name(), spec.ID), err)
	}
	return nil
}

// openJailExecDir opens <base>/<exec> (creating base and it when create is
// set). The base is root's configuration and opened by name, after checking
// that it and every directory above it are root's and not writable by
// group or others (sticky directories like /tmp excepted above it).
func (l *Local) openJailExecDir(execName string, create bool) (*os.File, error) {
	base := l.JailerChrootBase
	if base == "" {
		return nil, fmt.Errorf("%w: the Firecracker jailer needs one (system mode, or a daemon running as root)", ErrNoJailBase)
	}
	if !filepath.IsAbs(base) || filepath.Clean(base) != base || base == "/" {
		return nil, fmt.Errorf("%w: jailer chroot base %q must be a clean absolute path other than /", ErrInvalidArgument, base)
	}
	if create {
		if err := os.MkdirAll(filepath.Dir(base), 0o755); err != nil {
			return nil, fmt.Errorf("create jailer chroot base: %w", err)
		}
		if err := unix.Mkdir(base, 0o711); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("create jailer chroot base %s: %w", base, err)
		}
	}
	if err := checkRootDir(base); err != nil {
		return nil, err
	}
	bfd, err := unix.Open(base, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: base, Err: err}
	}
	defer unix.Close(bfd)
	if create {
		return mkdirOpenAt(bfd, execName, 0o711, false)
	}
	fd, err := unix.Openat(bfd, execName, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: filepath.Join(base, execName), Err: err}
	}
	f := os.NewFile(uintptr(fd), filepath.Join(base, execName))
	if err := checkRootOwnedFd(f); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// checkRootDir refuses a jailer chroot base that anyone but root could
// change: the directory and every one above it must be root's (the
// process's euid) and not writable by group or others; a sticky directory
// above it (/tmp) is allowed.
func checkRootDir(path string) error {
	uid := uint32(os.Geteuid())
	for p := path; ; p = filepath.Dir(p) {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return fmt.Errorf("jailer chroot base %s: %w", path, err)
		}
		sticky := st.Mode&unix.S_ISVTX != 0 && p != path
		if st.Mode&unix.S_IFMT != unix.S_IFDIR || st.Uid != uid && st.Uid != 0 || st.Mode&0o022 != 0 && !sticky {
			return fmt.Errorf("%w: %w: jailer chroot base %s: %s is owned by uid %d with mode %04o (it must be a directory of root's, not writable by group or others)",
				ErrInvalidArgument, ErrUnsafePath, path, p, st.Uid, st.Mode&0o7777)
		}
		if p == "/" {
			return nil
		}
	}
}

// checkRootOwnedFd: a directory of root's (the euid), not group/other-writable.
func checkRootOwnedFd(f *os.File) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fmt.Errorf("fstat %s: %w", f.Name(), err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR || st.Uid != uint32(os.Geteuid()) || st.Mode&0o022 != 0 {
		return fmt.Errorf("%w: %w: %s is owned by uid %d with mode %04o (it must be root's and not writable by group or others)",
			ErrInvalidArgument, ErrUnsafePath, f.Name(), st.Uid, st.Mode&0o7777)
	}
	return nil
}

// mkdirOpenAt creates the directory name in dirfd with mode (exclusive:
// an existing one is an error; otherwise an existing one is reused after
// checking it is root's) and opens it without following a symlink.
func mkdirOpenAt(dirfd int, name string, mode uint32, exclusive bool) (*os.File, error) {
	dirName := dirPath(dirfd)
	err := unix.Mkdirat(dirfd, name, mode)
	if err != nil && (exclusive || !errors.Is(err, unix.EEXIST)) {
		return nil, fmt.Errorf("mkdir %s: %w", filepath.Join(dirName, name), err)
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: %w: open %s: %w", ErrInvalidArgument, ErrUnsafePath, filepath.Join(dirName, name), err)
	}
	f := os.NewFile(uintptr(fd), filepath.Join(dirName, name))
	if err := unix.Fchmod(fd, mode); err != nil { // not the umask's
		f.Close()
		return nil, fmt.Errorf("chmod %s: %w", f.Name(), err)
	}
	if err := checkRootOwnedFd(f); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// dirPath names a directory descriptor for messages.
func dirPath(fd int) string {
	p, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return "fd " + strconv.Itoa(fd)
	}
	return p
}

// maxRemoveDepth bounds removeAllAt's recursion (a hostile owner can make
// deep trees in run/).
const maxRemoveDepth = 64

// removeAllAt removes name in dirfd and everything below it without
// following symlinks (fstatat AT_SYMLINK_NOFOLLOW, openat O_NOFOLLOW,
// unlinkat relative to each directory's own descriptor) and without
// descending into another filesystem. A missing name is not an error.
func removeAllAt(dirfd int, name string, depth int) error {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("stat %s: %w", name, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		if err := unix.Unlinkat(dirfd, name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("unlink %s: %w", name, err)
		}
		return nil
	}
	if depth >= maxRemoveDepth {
		return fmt.Errorf("%w: %s is nested more than %d levels deep", ErrUnsafePath, name, maxRemoveDepth)
	}
	var parent unix.Stat_t
	if err := unix.Fstat(dirfd, &parent); err != nil {
		return err
	}
	if st.Dev != parent.Dev {
		return fmt.Errorf("%w: %s is a mount point: not removing it", ErrUnsafePath, name)
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("open %s: %w", name, err)
	}
	d := os.NewFile(uintptr(fd), name)
	defer d.Close()
	// The owner may add entries while this runs (run/ is its): a few
	// passes, then give up.
	for pass := 0; ; pass++ {
		names, err := d.Readdirnames(-1)
		if err != nil {
			return fmt.Errorf("read %s: %w", name, err)
		}
		var errs []error
		for _, n := range names {
			if err := removeAllAt(fd, n, depth+1); err != nil {
				errs = append(errs, fmt.Errorf("%s/%w", name, err))
			}
		}
		if len(errs) > 0 {
			return errors.Join(errs...)
		}
		err = unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.ENOTEMPTY) || pass >= 3 {
			return fmt.Errorf("rmdir %s: %w", name, err)
		}
		if _, err := d.Seek(0, 0); err != nil {
			return fmt.Errorf("read %s: %w", name, err)
		}
	}
}
