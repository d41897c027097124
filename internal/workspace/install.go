//go:build linux

package workspace

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bangerdev/banger/internal/hostexec"
)

// Install is GuestScript done in-process, for a guest agent that installs
// workspaces itself (the Installer side of a Remote): it reads a native
// stream (every file as bytes, plus nativeCleanFile) from stream and
// leaves at req.Dest the same repository, work tree, index and refs as the
// script would. It runs no process at all when the host shipped
// PreparedRef (a clean tree): under emulation each process costs the guest
// 50–150 ms, and the script runs about nine. Otherwise it runs git for
// what it cannot do itself: refreshing the entries of files whose bytes
// differ from their blobs (conversions, dirty files) and recording the
// prepared tree.
//
// The result is an *InstallError carrying the script's exit status
// (2 the destination is in the way, 3 the stream was cut short, 127 git is
// missing when needed, 1 anything else) and its message; nothing at
// req.Dest changes unless the whole stream arrived. git runs through run
// (nil = hostexec.Real) in the new tree.
func Install(ctx context.Context, run hostexec.Runner, req InstallRequest, stream io.Reader) (InstallResult, error) {
	res := InstallResult{PhasesMS: map[string]int64{}}
	t0 := time.Now()
	phase := func(name string) {
		now := time.Now()
		res.PhasesMS[name] += now.Sub(t0).Milliseconds()
		t0 = now
	}
	if run == nil {
		run = hostexec.Real{}
	}
	counted := &countingRunner{r: run}
	err := install(ctx, counted, req, stream, phase)
	res.GitRuns = counted.n
	return res, err
}

// InstallResult tells how an Install went, for the host's logs.
type InstallResult struct {
	PhasesMS map[string]int64 `json:"phases_ms"` // wall time of each phase
	GitRuns  int              `json:"git_runs"`  // git processes run
}

// countingRunner counts the commands run through it.
type countingRunner struct {
	r hostexec.Runner
	n int
}

func (c *countingRunner) Run(ctx context.Context, cmd hostexec.Cmd) (hostexec.Result, error) {
	c.n++
	return c.r.Run(ctx, cmd)
}

func install(ctx context.Context, run hostexec.Runner, req InstallRequest, stream io.Reader, phase func(string)) error {
	if err := CheckGuestPath(req.Dest); err != nil {
		return installErr(1, "%v", err)
	}
	dest := req.Dest
	if fi, err := os.Lstat(dest); err == nil {
		if !fi.IsDir() {
			return installErr(2, "%s exists and is not a directory; remove it or pick another guest path", dest)
		}
		if !req.Replace {
			ents, err := os.ReadDir(dest)
			if err != nil {
				return installErr(1, "%s: %v", dest, err)
			}
			if len(ents) > 0 {
				return installErr(2, "%s is not empty; re-sync with replace, or pick another guest path", dest)
			}
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return installErr(1, "%s: %v", dest, err)
	}
	if err := os.MkdirAll(filepath.Dir(dest), 0o755); err != nil {
		return installErr(1, "make the parent of %s: %v", dest, err)
	}
	tmp, err := installTemp(dest)
	if err != nil {
		return installErr(1, "%v", err)
	}
	ok := false
	defer func() {
		if !ok {
			removeTree(tmp)
		}
	}()
	phase("check")
	x := &extractor{root: tmp, links: map[string]bool{}, dirs: map[string]time.Time{}}
	if err := x.extract(ctx, stream); err != nil {
		return installErr(3, "extracting the workspace failed (%v); nothing was changed in %s", err, dest)
	}
	if _, err := os.Lstat(filepath.Join(tmp, completeMarker)); err != nil {
		return installErr(3, "the workspace stream ended early; nothing was changed in %s", dest)
	}
	phase("extract") // with the wait for the stream
	if err := installGit(ctx, run, tmp, phase); err != nil {
		return err
	}
	if req.ReadOnly {
		if err := readOnlyDirs(tmp); err != nil {
			return installErr(1, "%v", err)
		}
	}
	if err := x.dirTimes(); err != nil {
		return installErr(1, "%v", err)
	}
	if err := swapInto(tmp, dest); err != nil {
		return installErr(1, "%v", err)
	}
	phase("move")
	ok = true
	return nil
}

// InstallRequest is what Install (and an Installer) is asked to do.
type InstallRequest struct {
	Dest     string `json:"dest"`
	Replace  bool   `json:"replace,omitempty"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

// InstallError is a failed Install: the exit status GuestScript would have
// ended with, and its message.
type InstallError struct {
	Status int
	Msg    string
}

func (e *InstallError) Error() string { return e.Msg }

// installErr is an InstallError with status and a message that starts
// "banger: " like the script's.
func installErr(status int, format string, args ...any) *InstallError {
	return &InstallError{Status: status, Msg: "banger: " + fmt.Sprintf(format, args...)}
}

// installTemp makes the temporary sibling of dest (mode 0755).
func installTemp(dest string) (string, error) {
	var b [6]byte
	for i := 0; i < 10; i++ {
		if _, err := rand.Read(b[:]); err != nil {
			return "", err
		}
		p := dest + ".banger-" + hex.EncodeToString(b[:])
		if err := os.Mkdir(p, 0o755); err == nil {
			return p, os.Chmod(p, 0o755)
		} else if !errors.Is(err, fs.ErrExist) {
			return "", fmt.Errorf("make a directory beside %s: %w", dest, err)
		}
	}
	return "", fmt.Errorf("make a directory beside %s: too many collisions", dest)
}

// removeTree removes p, giving its directories write permission first (a
// read-only workspace has none).
func removeTree(p string) {
	_ = filepath.WalkDir(p, func(q string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			_ = os.Chmod(q, 0o700)
		}
		return nil
	})
	_ = os.RemoveAll(p)
}

// extractor writes a tar stream under root like `tar -x -p -o`: modes as
// given (no umask), owner the caller, file modification times as given,
// directory times set at the end. It refuses absolute names, "..", names
// through a symlink it made, and anything but directories, regular files
// and symlinks.
type extractor struct {
	root  string
	links map[string]bool      // symlinks made, by name
	dirs  map[string]time.Time // directories made, with their times
}

func (x *extractor) extract(ctx context.Context, r io.Reader) error {
	tr := tar.NewReader(bufio.NewReaderSize(r, 1<<20))
	buf := make([]byte, 1<<20)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		name := strings.TrimSuffix(hdr.Name, "/")
		if err := x.checkName(name); err != nil {
			return err
		}
		full := filepath.Join(x.root, filepath.FromSlash(name))
		mode := hdr.FileInfo().Mode()
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.Mkdir(full, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return err
			}
			if fi, err := os.Lstat(full); err != nil || !fi.IsDir() {
				return fmt.Errorf("%s: not a directory", name)
			}
			if err := os.Chmod(full, mode&(fs.ModePerm|fs.ModeSetgid|fs.ModeSticky)|0o700); err != nil {
				return err
			}
			x.dirs[full] = hdr.ModTime
		case tar.TypeReg:
			if err := x.file(full, hdr, mode, tr, buf); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		case tar.TypeSymlink:
			if hdr.Linkname == "" || strings.ContainsRune(hdr.Linkname, 0) {
				return fmt.Errorf("%s: bad symlink target", name)
			}
			_ = os.Remove(full)
			if err := os.Symlink(hdr.Linkname, full); err != nil {
				return err
			}
			x.links[name] = true
			ts := []unix.Timespec{unix.NsecToTimespec(hdr.ModTime.UnixNano()), unix.NsecToTimespec(hdr.ModTime.UnixNano())}
			_ = unix.UtimesNanoAt(unix.AT_FDCWD, full, ts, unix.AT_SYMLINK_NOFOLLOW)
		default:
			return fmt.Errorf("%s: unsupported entry type %q", name, hdr.Typeflag)
		}
	}
}

// checkName refuses names that would leave root.
func (x *extractor) checkName(name string) error {
	if name == "" || name == "." || strings.HasPrefix(name, "/") || strings.ContainsRune(name, 0) || path.Clean(name) != name {
		return fmt.Errorf("unsafe name %q in the stream", name)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return fmt.Errorf("unsafe name %q in the stream", name)
		}
	}
	for d := path.Dir(name); d != "."; d = path.Dir(d) {
		if x.links[d] {
			return fmt.Errorf("name %q goes through the symlink %q", name, d)
		}
	}
	return nil
}

func (x *extractor) file(full string, hdr *tar.Header, mode fs.FileMode, r io.Reader, buf []byte) error {
	f, err := os.OpenFile(full, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if errors.Is(err, fs.ErrExist) {
		// A later entry replaces an earlier one, as tar does.
		if fi, lerr := os.Lstat(full); lerr == nil && fi.IsDir() {
			return errors.New("a directory is in the way")
		}
		if err := os.Remove(full); err != nil {
			return err
		}
		f, err = os.OpenFile(full, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	}
	if err != nil {
		return err
	}
	n, err := io.CopyBuffer(onlyWriter{f}, r, buf)
	if err == nil && n != hdr.Size {
		err = io.ErrUnexpectedEOF
	}
	if err == nil {
		err = f.Chmod(mode & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky))
	}
	if err == nil {
		ts := []unix.Timespec{unix.NsecToTimespec(hdr.ModTime.UnixNano()), unix.NsecToTimespec(hdr.ModTime.UnixNano())}
		err = unix.UtimesNanoAt(int(f.Fd()), "", ts, 0)
		if err != nil {
			// Kernels without AT_EMPTY_PATH for utimensat: by name.
			err = unix.UtimesNano(full, ts)
		}
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// onlyWriter hides ReaderFrom so CopyBuffer uses the caller's buffer.
type onlyWriter struct{ io.Writer }

// dirTimes gives the directories made their times from the stream, deepest
// first (setting a child's time changes its parent's).
func (x *extractor) dirTimes() error {
	dirs := make([]string, 0, len(x.dirs))
	for d := range x.dirs {
		dirs = append(dirs, d)
	}
	sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Lstat(d); err != nil {
			continue // .git/banger, removed
		}
		t := x.dirs[d]
		if err := os.Chtimes(d, t, t); err != nil {
			return err
		}
	}
	return nil
}

// installGit turns the extracted .git into the repository GuestScript
// leaves: the index written from the shipped entries with the stat data
// of the files, the host's info/attributes in place, refreshed entries
// and PreparedRef when the host did not ship it, .git/banger removed.
func installGit(ctx context.Context, run hostexec.Runner, root string, phase func(string)) error {
	fail := func(err error) error { return installErr(1, "%v", err) }
	gitDir := filepath.Join(root, ".git")
	info, err := os.ReadFile(filepath.Join(root, indexInfoFile))
	if err != nil {
		return fail(fmt.Errorf("read the index entries: %w", err))
	}
	clean := map[string]bool{}
	if data, err := os.ReadFile(filepath.Join(root, nativeCleanFile)); err == nil {
		for _, p := range strings.Split(string(data), "\x00") {
			if p != "" {
				clean[p] = true
			}
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fail(err)
	}
	stale, err := writeIndex(root, info, clean)
	if err != nil {
		return fail(err)
	}
	phase("index")
	if _, err := os.Lstat(filepath.Join(root, attributesFile)); err == nil {
		if err := os.Rename(filepath.Join(root, attributesFile), filepath.Join(gitDir, "info", "attributes")); err != nil {
			return fail(err)
		}
	}
	_, err = os.Lstat(filepath.Join(gitDir, PreparedRef))
	prepared := err == nil
	if stale > 0 || !prepared {
		if err := gitRecord(ctx, run, root, stale > 0, !prepared); err != nil {
			return err
		}
	}
	phase("git")
	if err := os.RemoveAll(filepath.Join(gitDir, "banger")); err != nil {
		return fail(err)
	}
	return nil
}

// gitRecord runs git in root: the index refresh (for entries whose files
// are not byte-equal to their blobs), and the recording of the prepared
// tree, both as GuestScript does.
func gitRecord(ctx context.Context, run hostexec.Runner, root string, refresh, record bool) error {
	git := func(env []string, args ...string) (hostexec.Result, error) {
		return run.Run(ctx, hostexec.Cmd{Name: "git", Args: args, Dir: root, Env: env})
	}
	missing := installErr(127, "git is not installed in the guest; install it in the image (the default image has it)")
	if refresh {
		// Exit status 1 lists entries that still differ: dirty files.
		if _, err := git(nil, "update-index", "-q", "--unmerged", "--refresh"); err != nil {
			var ee *hostexec.ExitError
			if errors.Is(err, hostexec.ErrNotFound) {
				return missing
			}
			if !errors.As(err, &ee) || ee.ExitCode != 1 {
				return installErr(1, "refresh the index: %v", err)
			}
		}
	}
	if !record {
		return nil
	}
	pidx := filepath.Join(root, ".git", "banger", "prepared-index")
	data, err := os.ReadFile(filepath.Join(root, ".git", "index"))
	if err != nil {
		return installErr(1, "%v", err)
	}
	if err := os.WriteFile(pidx, data, 0o644); err != nil {
		return installErr(1, "%v", err)
	}
	idx := []string{"GIT_INDEX_FILE=" + pidx}
	if _, err := git(idx, "-c", "core.looseCompression=0", "add", "-A", "--ignore-errors"); err != nil {
		if errors.Is(err, hostexec.ErrNotFound) {
			return missing
		}
		var ee *hostexec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode != 1 {
			return nil // as the script: no prepared tree, Export falls back to the base
		}
	}
	res, err := git(idx, "write-tree")
	if err != nil {
		return nil
	}
	tree := strings.TrimSpace(string(res.Stdout))
	if err := os.MkdirAll(filepath.Join(root, ".git", "refs", "banger"), 0o755); err != nil {
		return installErr(1, "%v", err)
	}
	if err := os.WriteFile(filepath.Join(root, ".git", PreparedRef), []byte(tree+"\n"), 0o644); err != nil {
		return installErr(1, "%v", err)
	}
	return nil
}

// writeIndex writes root/.git/index (version 2) from the shipped entries
// (`git update-index --index-info` lines: mode SP oid SP stage TAB path,
// NUL-terminated). An entry gets its file's stat data when the file's
// bytes are its blob's: the host says so for the clean files (clean), the
// others are hashed here. The rest get none, like entries git has not
// refreshed yet; stale counts them.
func writeIndex(root string, info []byte, clean map[string]bool) (stale int, err error) {
	type entry struct {
		path  string
		mode  uint32
		oid   []byte
		stage int
	}
	var ents []entry
	for _, rec := range strings.Split(string(info), "\x00") {
		if rec == "" {
			continue
		}
		meta, p, ok := strings.Cut(rec, "\t")
		f := strings.Fields(meta)
		if !ok || len(f) != 3 || p == "" {
			return 0, fmt.Errorf("index entry %q: want mode, object, stage and path", rec)
		}
		mode, err := strconv.ParseUint(f[0], 8, 32)
		if err != nil {
			return 0, fmt.Errorf("index entry %q: mode: %w", rec, err)
		}
		oid, err := hex.DecodeString(f[1])
		if err != nil || (len(oid) != sha1.Size && len(oid) != sha256.Size) {
			return 0, fmt.Errorf("index entry %q: bad object id", rec)
		}
		if !plainName(p) {
			return 0, fmt.Errorf("index entry %q: path outside the tree", rec)
		}
		if f[2] != "0" {
			return 0, fmt.Errorf("index entry %q: a conflicted entry (the host sends those to the script)", rec)
		}
		ents = append(ents, entry{path: p, mode: uint32(mode), oid: oid})
	}
	sort.Slice(ents, func(i, j int) bool { return ents[i].path < ents[j].path })
	hashLen := sha1.Size
	if len(ents) > 0 {
		hashLen = len(ents[0].oid)
	}
	sum := newObjectHash(objectFormatOf(hashLen))
	dirOK := map[string]bool{".": true}
	var b bytes.Buffer
	b.WriteString("DIRC")
	be := binary.BigEndian
	b.Write(be.AppendUint32(nil, 2))
	b.Write(be.AppendUint32(nil, uint32(len(ents))))
	for i, e := range ents {
		if i > 0 && e.path == ents[i-1].path {
			return 0, fmt.Errorf("index entry %q twice", e.path)
		}
		if len(e.oid) != hashLen {
			return 0, fmt.Errorf("index entry %q: object ids of two lengths", e.path)
		}
		var st unix.Stat_t
		fresh := false
		full := filepath.Join(root, filepath.FromSlash(e.path))
		if realParents(root, path.Dir(e.path), dirOK) && unix.Lstat(full, &st) == nil && statMatchesMode(st.Mode, e.mode) {
			fresh = clean[e.path]
			if !fresh {
				fresh, err = sameBlob(full, st, e.oid)
				if err != nil {
					return 0, err
				}
			}
		}
		var fields [10]uint32
		if fresh {
			fields = [10]uint32{uint32(st.Ctim.Sec), uint32(st.Ctim.Nsec), uint32(st.Mtim.Sec), uint32(st.Mtim.Nsec),
				uint32(st.Dev), uint32(st.Ino), e.mode, st.Uid, st.Gid, uint32(st.Size)}
		} else {
			stale++
			fields = [10]uint32{6: e.mode}
		}
		start := b.Len()
		for _, v := range fields {
			b.Write(be.AppendUint32(nil, v))
		}
		b.Write(e.oid)
		flags := min(len(e.path), 0xfff)
		b.Write(be.AppendUint16(nil, uint16(flags)))
		b.WriteString(e.path)
		// NUL padding: the entry's length becomes a multiple of 8, with at
		// least one NUL.
		n := b.Len() - start
		b.Write(make([]byte, 8-n%8))
	}
	sum.Write(b.Bytes())
	b.Write(sum.Sum(nil))
	p := filepath.Join(root, ".git", "index")
	if err := os.WriteFile(p, b.Bytes(), 0o644); err != nil {
		return 0, fmt.Errorf("write the index: %w", err)
	}
	return stale, nil
}

// plainName reports whether an index path names something inside the
// tree: relative, clean, no "..", no NUL.
func plainName(p string) bool {
	if p == "" || strings.HasPrefix(p, "/") || strings.ContainsRune(p, 0) || path.Clean(p) != p {
		return false
	}
	for _, part := range strings.Split(p, "/") {
		if part == ".." || part == "." {
			return false
		}
	}
	return true
}

// realParents reports whether dir (relative to root) and its parents are
// directories, not symlinks: a file beyond a symlink is not the work tree
// file of an index entry, as git sees it. ok caches the answers.
func realParents(root, dir string, ok map[string]bool) bool {
	if v, seen := ok[dir]; seen {
		return v
	}
	v := realParents(root, path.Dir(dir), ok)
	if v {
		fi, err := os.Lstat(filepath.Join(root, filepath.FromSlash(dir)))
		v = err == nil && fi.IsDir()
	}
	ok[dir] = v
	return v
}

// statMatchesMode reports whether a file of stat mode m can be the work
// tree file of an index entry of mode want.
func statMatchesMode(m, want uint32) bool {
	switch want & unix.S_IFMT {
	case unix.S_IFREG:
		return m&unix.S_IFMT == unix.S_IFREG && (m&0o100 != 0) == (want&0o100 != 0)
	case unix.S_IFLNK:
		return m&unix.S_IFMT == unix.S_IFLNK
	}
	return false
}

// sameBlob reports whether the file at full (a regular file or a symlink)
// hashes to the blob oid.
func sameBlob(full string, st unix.Stat_t, oid []byte) (bool, error) {
	format := objectFormatOf(len(oid))
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		target, err := os.Readlink(full)
		if err != nil {
			return false, err
		}
		h := newBlobHash(format, int64(len(target)))
		io.WriteString(h, target)
		return bytes.Equal(h.Sum(nil), oid), nil
	}
	f, err := os.Open(full)
	if err != nil {
		return false, err
	}
	defer f.Close()
	h := newBlobHash(format, st.Size)
	if n, err := io.Copy(h, f); err != nil || n != st.Size {
		return false, err
	}
	return bytes.Equal(h.Sum(nil), oid), nil
}

// readOnlyDirs takes the write bits off every directory under root except
// .git and what is inside it (the files arrived without them).
func readOnlyDirs(root string) error {
	var dirs []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			return nil
		}
		if p == filepath.Join(root, ".git") {
			return filepath.SkipDir
		}
		dirs = append(dirs, p)
		return nil
	})
	if err != nil {
		return err
	}
	for _, d := range dirs {
		fi, err := os.Lstat(d)
		if err != nil {
			return err
		}
		if err := os.Chmod(d, fi.Mode()&^0o222&(fs.ModePerm|fs.ModeSetgid|fs.ModeSticky)); err != nil {
			return err
		}
	}
	return nil
}

// swapInto puts tmp at dest: a rename when dest is absent, else an atomic
// exchange (dest is never missing) and the old tree removed.
func swapInto(tmp, dest string) error {
	err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, dest, unix.RENAME_NOREPLACE)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EEXIST) {
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
			return swapByRename(tmp, dest)
		}
		return fmt.Errorf("move the workspace into place: %w", err)
	}
	if err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, dest, unix.RENAME_EXCHANGE); err != nil {
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
			return swapByRename(tmp, dest)
		}
		return fmt.Errorf("move the workspace into place: %w", err)
	}
	removeTree(tmp) // the old tree, now at tmp
	return nil
}

// swapByRename is swapInto for filesystems without renameat2's flags: the
// old tree is removed first, as GuestScript does.
func swapByRename(tmp, dest string) error {
	if _, err := os.Lstat(dest); err == nil {
		removeTree(dest)
	}
	if err := os.Rename(tmp, dest); err != nil {
		return fmt.Errorf("move the workspace into place: %w", err)
	}
	return nil
}

// InstallCommand is Install as a guest agent builtin (see agent.Builtin):
// args holds one InstallRequest in JSON, the stream comes on stdin, the
// InstallResult (JSON) goes to stdout, a failure's message to stderr, and
// the exit status is Install's.
func InstallCommand(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	var req InstallRequest
	if len(args) != 1 {
		fmt.Fprintln(stderr, "banger: workspace install: want one JSON request")
		return 1
	}
	if err := json.Unmarshal([]byte(args[0]), &req); err != nil {
		fmt.Fprintf(stderr, "banger: workspace install: %v\n", err)
		return 1
	}
	res, err := Install(ctx, nil, req, stdin)
	var ie *InstallError
	switch {
	case err == nil:
		// The result goes to the host's logs.
		_ = json.NewEncoder(stdout).Encode(res)
		return 0
	case errors.As(err, &ie):
		fmt.Fprintln(stderr, ie.Msg)
		return ie.Status
	default:
		fmt.Fprintf(stderr, "banger: %v\n", err)
		return 1
	}
}

// InstallArgs is InstallCommand's argument list for req.
func InstallArgs(req InstallRequest) []string {
	data, _ := json.Marshal(req)
	return []string{string(data)}
}

// WarmStream is a small native stream that Install takes (one file, its
// index entry, the prepared tree; no git run): a template guest installs
// it once before its snapshot is saved, so the agent's install code is in
// the page cache every restored VM starts with.
func WarmStream() []byte {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	content := []byte("banger\n")
	h := newBlobHash("sha1", int64(len(content)))
	h.Write(content)
	oid := hex.EncodeToString(h.Sum(nil))
	mod := time.Unix(1700000000, 0)
	for _, d := range []string{".git", ".git/banger", ".git/refs", ".git/refs/banger", ".git/objects", ".git/info"} {
		_ = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: mod})
	}
	for _, f := range []struct {
		name string
		data []byte
	}{
		{"README", content},
		{".git/HEAD", []byte("ref: refs/heads/main\n")},
		{indexInfoFile, []byte("100644 " + oid + " 0\tREADME\x00")},
		{nativeCleanFile, []byte("README\x00")},
		{".git/" + PreparedRef, []byte(oid + "\n")},
		{completeMarker, []byte("ok\n")},
	} {
		_ = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: 0o644, Size: int64(len(f.data)), ModTime: mod})
		_, _ = tw.Write(f.data)
	}
	_ = tw.Close()
	return b.Bytes()
}
