package image

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrUnsafeEntry is wrapped when a layer holds an entry that would escape
// the root filesystem (.. traversal) or that banger's ext4 tools cannot
// represent (newline or carriage return in a name, over-long names).
var ErrUnsafeEntry = errors.New("unsafe layer entry")

// cleanEntry turns a tar entry name into a root-relative path without
// leading slash ("" is the root itself). Absolute names are taken relative
// to the image root, as container runtimes do; any ".." component is
// refused rather than resolved.
func cleanEntry(name string) (string, error) {
	if i := strings.IndexAny(name, "\n\r\x00"); i >= 0 {
		return "", fmt.Errorf("%w: %q contains %q, which banger's ext4 tools cannot represent", ErrUnsafeEntry, name, name[i])
	}
	var out []string
	for _, p := range strings.Split(name, "/") {
		switch p {
		case "", ".":
			continue
		case "..":
			return "", fmt.Errorf("%w: %q climbs out of the root with ..", ErrUnsafeEntry, name)
		}
		if len(p) > 255 {
			return "", fmt.Errorf("%w: %q has a name longer than 255 bytes", ErrUnsafeEntry, name)
		}
		out = append(out, p)
	}
	rel := strings.Join(out, "/")
	if len(rel) > 4000 {
		return "", fmt.Errorf("%w: path of %d bytes is too long", ErrUnsafeEntry, len(rel))
	}
	return rel, nil
}

func splitRel(rel string) (dir, base string) {
	i := strings.LastIndexByte(rel, '/')
	if i < 0 {
		return "", rel
	}
	return rel[:i], rel[i+1:]
}

func joinRel(dir, base string) string {
	if dir == "" {
		return base
	}
	return dir + "/" + base
}

// fileMeta is the ownership and mode an entry must end up with in the
// image; recorded when unpacking without root (the staging tree then has
// the caller's ownership and relaxed modes, fixed up in the ext4).
type fileMeta struct {
	uid, gid int
	mode     uint32 // permission + setuid/setgid/sticky bits
	symlink  bool
}

// unpacker flattens layers into a staging directory. Every write is made
// relative to a directory fd resolved with openat2(RESOLVE_IN_ROOT), so a
// symlink in the image (even one pointing to "/" or "../..") is resolved
// inside the staging root and never leads a write outside it; the final
// component is never followed.
type unpacker struct {
	root     int
	asRoot   bool
	added    map[string]bool // entries of the current layer
	addedAnc map[string]bool // ancestors of entries of the current layer
	dirTimes map[string]time.Time
	meta     map[string]fileMeta // only without root
	notes    []string
	entries  int64
	buf      []byte
	// Limits over all layers (a decompression bomb or a tar of millions
	// of empty files must fail, not fill the disk): 0 = the defaults.
	maxBytes, maxEntries int64
	seen, fileBytes      int64
}

// Default unpack limits over all of an image's layers.
const (
	DefaultMaxImageBytes   int64 = 64 << 30
	DefaultMaxImageEntries int64 = 2_000_000
)

// ErrImageTooLarge is returned when an image's layers unpack to more
// bytes or entries than the limits allow.
var ErrImageTooLarge = errors.New("image too large")

func newUnpacker(rootDir string, asRoot bool) (*unpacker, error) {
	fd, err := unix.Open(rootDir, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open staging root: %w", err)
	}
	u := &unpacker{root: fd, asRoot: asRoot, dirTimes: map[string]time.Time{}, buf: make([]byte, 1<<20)}
	if !asRoot {
		u.meta = map[string]fileMeta{}
	}
	return u, nil
}

func (u *unpacker) close() { unix.Close(u.root) }

func (u *unpacker) note(format string, args ...any) {
	if len(u.notes) < 50 {
		u.notes = append(u.notes, fmt.Sprintf(format, args...))
	} else if len(u.notes) == 50 {
		u.notes = append(u.notes, "(further notes omitted)")
	}
}

// openDir opens directory rel (resolved inside the root). With create,
// missing directories are made (root:root 0755).
func (u *unpacker) openDir(rel string, create bool) (int, error) {
	if rel == "" {
		return unix.Dup(u.root)
	}
	how := &unix.OpenHow{
		Flags:   unix.O_DIRECTORY | unix.O_RDONLY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
	}
	fd, err := unix.Openat2(u.root, rel, how)
	if err == nil || !create || !errors.Is(err, unix.ENOENT) {
		if err != nil {
			return -1, fmt.Errorf("directory /%s: %w", rel, err)
		}
		return fd, nil
	}
	dir, base := splitRel(rel)
	pfd, err := u.openDir(dir, true)
	if err != nil {
		return -1, err
	}
	defer unix.Close(pfd)
	if err := unix.Mkdirat(pfd, base, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
		return -1, fmt.Errorf("create directory /%s: %w", rel, err)
	} else if err == nil {
		if err := u.setMeta(pfd, base, rel, 0, 0, 0o755, true, false); err != nil {
			return -1, err
		}
	}
	fd, err = unix.Openat2(u.root, rel, how)
	if err != nil {
		return -1, fmt.Errorf("directory /%s: %w", rel, err)
	}
	return fd, nil
}

// setMeta applies ownership and mode to dirfd/base (never following a
// symlink), or records them when not root.
func (u *unpacker) setMeta(dirfd int, base, rel string, uid, gid int, mode uint32, isDir, isLink bool) error {
	if u.asRoot {
		if err := unix.Fchownat(dirfd, base, uid, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("chown /%s: %w", rel, err)
		}
		if !isLink {
			// after chown, which clears setuid/setgid
			if err := unix.Fchmodat(dirfd, base, mode, 0); err != nil {
				return fmt.Errorf("chmod /%s: %w", rel, err)
			}
		}
		return nil
	}
	u.meta[rel] = fileMeta{uid: uid, gid: gid, mode: mode, symlink: isLink}
	if isLink {
		return nil
	}
	staged := mode&0o777 | 0o600 // the owner must read it (mkfs) and write into it (later layers)
	if isDir {
		staged |= 0o700
	}
	if err := unix.Fchmodat(dirfd, base, staged, 0); err != nil {
		return fmt.Errorf("chmod /%s: %w", rel, err)
	}
	return nil
}

func (u *unpacker) forget(rel string) {
	if u.meta == nil {
		return
	}
	delete(u.meta, rel)
	for k := range u.meta {
		if strings.HasPrefix(k, rel+"/") {
			delete(u.meta, k)
		}
	}
}

// removeAllAt removes dirfd/name recursively without following symlinks.
func removeAllAt(dirfd int, name string) error {
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return err
	}
	fd, err := unix.Openat(dirfd, name, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), name)
	names, err := f.Readdirnames(-1)
	if err != nil {
		f.Close()
		return err
	}
	for _, n := range names {
		if err := removeAllAt(fd, n); err != nil {
			f.Close()
			return err
		}
	}
	f.Close()
	return unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
}

func (u *unpacker) markAdded(rel string) {
	u.added[rel] = true
	for d, _ := splitRel(rel); d != ""; d, _ = splitRel(d) {
		if u.addedAnc[d] {
			break
		}
		u.addedAnc[d] = true
	}
	u.entries++
}

// applyLayer applies one uncompressed layer tar on top of the staging tree.
func (u *unpacker) applyLayer(r io.Reader) error {
	u.added = map[string]bool{}
	u.addedAnc = map[string]bool{}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read layer: %w", err)
		}
		if err := u.count(hdr); err != nil {
			return err
		}
		if err := u.entry(hdr, tr); err != nil {
			return err
		}
	}
}

// count charges one entry against the limits.
func (u *unpacker) count(hdr *tar.Header) error {
	maxB, maxE := u.maxBytes, u.maxEntries
	if maxB <= 0 {
		maxB = DefaultMaxImageBytes
	}
	if maxE <= 0 {
		maxE = DefaultMaxImageEntries
	}
	u.seen++
	if hdr.Typeflag == tar.TypeReg && hdr.Size > 0 {
		u.fileBytes += hdr.Size
	}
	switch {
	case u.seen > maxE:
		return fmt.Errorf("%w: the layers hold more than %d entries", ErrImageTooLarge, maxE)
	case u.fileBytes > maxB:
		return fmt.Errorf("%w: the layers unpack to more than %d bytes of files (at %s)", ErrImageTooLarge, maxB, hdr.Name)
	}
	return nil
}

func (u *unpacker) entry(hdr *tar.Header, r io.Reader) error {
	rel, err := cleanEntry(hdr.Name)
	if err != nil {
		return err
	}
	if rel == "" {
		return nil // the root itself stays root:root 0755
	}
	dir, base := splitRel(rel)
	switch {
	case base == ".wh..wh..opq":
		return u.opaque(dir)
	case strings.HasPrefix(base, ".wh..wh."):
		return nil // other aufs metadata
	case strings.HasPrefix(base, ".wh."):
		return u.whiteout(dir, strings.TrimPrefix(base, ".wh."))
	}
	switch hdr.Typeflag {
	case tar.TypeChar, tar.TypeBlock:
		u.note("skipped device node /%s (the guest's devtmpfs provides devices)", rel)
		return nil
	case tar.TypeXGlobalHeader, tar.TypeXHeader, tar.TypeGNULongName, tar.TypeGNULongLink:
		return nil
	case tar.TypeReg, tar.TypeDir, tar.TypeSymlink, tar.TypeLink, tar.TypeFifo, tar.TypeRegA, tar.TypeGNUSparse:
	default:
		u.note("skipped /%s of unsupported tar type %q", rel, hdr.Typeflag)
		return nil
	}
	if hdr.Typeflag == tar.TypeSymlink {
		if hdr.Linkname == "" || strings.ContainsAny(hdr.Linkname, "\n\r\x00") || len(hdr.Linkname) > 4000 {
			return fmt.Errorf("%w: symlink /%s has a target banger cannot represent (%q)", ErrUnsafeEntry, rel, hdr.Linkname)
		}
	}
	if hdr.Uid < 0 || hdr.Gid < 0 || hdr.Uid > 1<<31 || hdr.Gid > 1<<31 {
		return fmt.Errorf("%w: /%s has owner %d:%d", ErrUnsafeEntry, rel, hdr.Uid, hdr.Gid)
	}
	pfd, err := u.openDir(dir, true)
	if err != nil {
		return fmt.Errorf("layer entry /%s: %w", rel, err)
	}
	defer unix.Close(pfd)

	var st unix.Stat_t
	if unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW) == nil {
		keep := hdr.Typeflag == tar.TypeDir && st.Mode&unix.S_IFMT == unix.S_IFDIR
		if !keep {
			if err := removeAllAt(pfd, base); err != nil {
				return fmt.Errorf("replace /%s: %w", rel, err)
			}
			u.forget(rel)
		}
	}
	mode := uint32(hdr.Mode & 0o7777)
	isDir, isLink := false, false
	switch hdr.Typeflag {
	case tar.TypeDir:
		isDir = true
		if err := unix.Mkdirat(pfd, base, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("mkdir /%s: %w", rel, err)
		}
	case tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse:
		fd, err := unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return fmt.Errorf("create /%s: %w", rel, err)
		}
		f := os.NewFile(uintptr(fd), rel)
		_, err = io.CopyBuffer(struct{ io.Writer }{f}, r, u.buf)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("write /%s: %w", rel, err)
		}
	case tar.TypeSymlink:
		isLink = true
		if err := unix.Symlinkat(hdr.Linkname, pfd, base); err != nil {
			return fmt.Errorf("symlink /%s: %w", rel, err)
		}
	case tar.TypeFifo:
		if err := unix.Mknodat(pfd, base, unix.S_IFIFO|0o600, 0); err != nil {
			return fmt.Errorf("mkfifo /%s: %w", rel, err)
		}
	case tar.TypeLink:
		return u.hardlink(pfd, base, rel, hdr.Linkname)
	}
	if err := u.setMeta(pfd, base, rel, hdr.Uid, hdr.Gid, mode, isDir, isLink); err != nil {
		return err
	}
	if u.asRoot && hdr.Typeflag != tar.TypeSymlink && len(hdr.PAXRecords) > 0 {
		if err := u.setXattrs(pfd, base, rel, hdr); err != nil {
			return err
		}
	}
	if isDir {
		u.dirTimes[rel] = hdr.ModTime
	} else {
		ts := []unix.Timespec{unix.NsecToTimespec(hdr.AccessTime.UnixNano()), unix.NsecToTimespec(hdr.ModTime.UnixNano())}
		if hdr.AccessTime.IsZero() {
			ts[0] = ts[1]
		}
		_ = unix.UtimesNanoAt(pfd, base, ts, unix.AT_SYMLINK_NOFOLLOW)
	}
	u.markAdded(rel)
	return nil
}

// setXattrs applies SCHILY.xattr.* PAX records (file capabilities such as
// ping's cap_net_raw) after chown, which would clear them.
func (u *unpacker) setXattrs(pfd int, base, rel string, hdr *tar.Header) error {
	keys := make([]string, 0)
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "SCHILY.xattr.") {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil
	}
	sort.Strings(keys)
	fd, err := unix.Openat(pfd, base, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("xattrs of /%s: %w", rel, err)
	}
	defer unix.Close(fd)
	for _, k := range keys {
		name := strings.TrimPrefix(k, "SCHILY.xattr.")
		if err := unix.Fsetxattr(fd, name, []byte(hdr.PAXRecords[k]), 0); err != nil {
			u.note("xattr %s on /%s not kept: %v", name, rel, err)
		}
	}
	return nil
}

func (u *unpacker) hardlink(pfd int, base, rel, linkname string) error {
	target, err := cleanEntry(linkname)
	if err != nil {
		return fmt.Errorf("hard link /%s: %w", rel, err)
	}
	if target == "" {
		return fmt.Errorf("%w: hard link /%s points at the root", ErrUnsafeEntry, rel)
	}
	tdir, tbase := splitRel(target)
	tfd, err := u.openDir(tdir, false)
	if err != nil {
		return fmt.Errorf("hard link /%s -> /%s: %w", rel, target, err)
	}
	defer unix.Close(tfd)
	// flags 0: a symlink target is linked itself, never followed
	if err := unix.Linkat(tfd, tbase, pfd, base, 0); err != nil {
		return fmt.Errorf("hard link /%s -> /%s: %w", rel, target, err)
	}
	if u.meta != nil {
		if m, ok := u.meta[target]; ok {
			u.meta[rel] = m
		}
	}
	u.markAdded(rel)
	return nil
}

// whiteout removes dir/name from lower layers.
func (u *unpacker) whiteout(dir, name string) error {
	if name == "" || name == "." || name == ".." || strings.Contains(name, "/") {
		return fmt.Errorf("%w: bad whiteout for %q in /%s", ErrUnsafeEntry, name, dir)
	}
	pfd, err := u.openDir(dir, false)
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
			return nil // nothing to hide
		}
		return err
	}
	defer unix.Close(pfd)
	if err := removeAllAt(pfd, name); err != nil {
		return fmt.Errorf("whiteout /%s: %w", joinRel(dir, name), err)
	}
	u.forget(joinRel(dir, name))
	return nil
}

// opaque empties dir of everything that did not come from the current
// layer.
func (u *unpacker) opaque(dir string) error {
	fd, err := u.openDir(dir, true)
	if err != nil {
		return fmt.Errorf("opaque directory /%s: %w", dir, err)
	}
	defer unix.Close(fd)
	return u.clearExcept(fd, dir)
}

func (u *unpacker) clearExcept(fd int, rel string) error {
	dup, err := unix.Dup(fd)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(dup), rel)
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return fmt.Errorf("read /%s: %w", rel, err)
	}
	for _, n := range names {
		child := joinRel(rel, n)
		if !u.added[child] && !u.addedAnc[child] {
			if err := removeAllAt(fd, n); err != nil {
				return fmt.Errorf("opaque /%s: %w", child, err)
			}
			u.forget(child)
			continue
		}
		cfd, err := unix.Openat(fd, n, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			continue // a kept non-directory
		}
		err = u.clearExcept(cfd, child)
		unix.Close(cfd)
		if err != nil {
			return err
		}
	}
	return nil
}

// finish restores directory modification times (changed by later writes
// inside them).
func (u *unpacker) finish() {
	rels := make([]string, 0, len(u.dirTimes))
	for r := range u.dirTimes {
		rels = append(rels, r)
	}
	sort.Sort(sort.Reverse(sort.StringSlice(rels)))
	for _, rel := range rels {
		dir, base := splitRel(rel)
		pfd, err := u.openDir(dir, false)
		if err != nil {
			continue
		}
		t := unix.NsecToTimespec(u.dirTimes[rel].UnixNano())
		_ = unix.UtimesNanoAt(pfd, base, []unix.Timespec{t, t}, unix.AT_SYMLINK_NOFOLLOW)
		unix.Close(pfd)
	}
}

// relPaths returns the recorded metadata paths in lexical order (parents
// before children).
func (u *unpacker) relPaths() []string {
	out := make([]string, 0, len(u.meta))
	for k := range u.meta {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
