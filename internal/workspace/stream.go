package workspace

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/zlib"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
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
	"github.com/bangerdev/banger/internal/progress"
)

// Names inside the shipped .git that GuestScript consumes and removes.
const (
	completeMarker   = ".git/banger/complete" // last entry of every stream
	indexInfoFile    = ".git/banger/index-info"
	skipWorktreeFile = ".git/banger/skip-worktree"
	attributesFile   = ".git/banger/info-attributes"
	checkoutPrefix   = ".git/banger/checkout-" // + 4-digit octal umask
	// checkoutAttrs, when shipped, is the info/attributes in force while
	// the guest checks files out: it turns off every conversion, so a
	// checked-out file gets its blob's exact bytes (work-tree mode, where
	// Inspect verified those equal the host's file). It arrives in place;
	// the host's own info/attributes (attributesFile) replaces it after the
	// checkout.
	checkoutAttrs = ".git/info/attributes"
	// nativeCleanFile, in a native stream (see Installer), lists the files
	// (NUL-terminated) whose shipped bytes are their index blobs: they
	// travel as bytes and Install gives their index entries the stat data
	// of the files it wrote, without hashing them.
	nativeCleanFile = ".git/banger/clean"
)

// NativeLimit bounds the bytes of clean files a native stream carries: in
// a native stream they travel as bytes beside their blobs (which the
// repository needs anyway), so a tree with more goes to the script, whose
// checkout writes them from the blobs.
const NativeLimit = 16 << 20

// nativeOK reports whether the snapshot can go to an Installer: a work
// tree (no From, whose checkout applies the guest's conversions), with no
// conflicted or skip-worktree entries, and clean files of at most
// NativeLimit bytes.
func (s *Snapshot) nativeOK() bool {
	if s.Options.From != "" {
		return false
	}
	for _, e := range s.index {
		if e.stage != "0" || e.skipWorktree {
			return false
		}
	}
	var n int64
	for _, f := range s.files {
		if f.checkout {
			n += f.Size
		}
	}
	return n <= NativeLimit
}

// Stream writes the workspace of snap to w as one tar stream (PAX where a
// name needs it). In order: the directories; the files whose bytes must
// travel (dirty, untracked, symlinks, files with end-of-line or filter
// conversions, unusual modes); the .git metadata with the lists of clean
// files the guest checks out from the shipped objects; the loose objects;
// the pack (made concurrently by `git pack-objects` while the rest
// streams; loose objects that the host packs meanwhile, e.g. by a
// background `git gc --auto`, go into a second pack); a completion marker.
//
// Stream reads the work tree again: a file sent as bytes that vanished or
// changed type since Inspect, or whose size changed while it was read,
// fails with ErrChanged. Clean files come from the index as Inspect saw it.
// On error, w has received a truncated stream that GuestScript refuses.
func Stream(ctx context.Context, snap *Snapshot, w io.Writer) (Stats, error) {
	return stream(ctx, snap, w, false)
}

// stream is Stream; native makes the stream an Installer takes (see
// nativeCleanFile): clean files travel as bytes too, each checked against
// its blob id as it is read (a file changed since Inspect fails with
// ErrChanged), and there are no checkout lists.
func stream(ctx context.Context, snap *Snapshot, w io.Writer, native bool) (Stats, error) {
	start := time.Now()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	cw := &countingWriter{w: w}
	bw := bufio.NewWriterSize(cw, 1<<20)
	sw := &streamWriter{tw: tar.NewWriter(bw), dirs: map[string]bool{}, snap: snap, buf: make([]byte, 1<<20), ctx: ctx}
	if native {
		sw.oids = make(map[string]string, len(snap.index))
		for _, e := range snap.index {
			sw.oids[e.path] = e.oid
		}
	}
	for _, f := range snap.files {
		if f.Kind == Regular {
			sw.stats.Files++
			sw.stats.FileBytes += f.Size
		} else {
			sw.stats.Symlinks++
		}
		if !f.checkout || native {
			sw.total += f.Size
		}
	}

	plan, err := snap.plan(ctx, native)
	if err != nil {
		return sw.stats, err
	}
	sw.total += plan.looseBytes
	tmp, err := os.MkdirTemp("", "banger-workspace-")
	if err != nil {
		return sw.stats, fmt.Errorf("workspace stream: %w", err)
	}
	defer os.RemoveAll(tmp)
	packCh := make(chan packResult, 1)
	go func() {
		files, err := snap.pack(ctx, tmp, plan.packed)
		packCh <- packResult{files, err}
	}()
	fail := func(err error) (Stats, error) {
		cancel()
		<-packCh
		return sw.stats, err
	}

	if err := sw.workspace(); err != nil {
		return fail(err)
	}
	if err := sw.gitFiles(plan); err != nil {
		return fail(err)
	}
	pr := <-packCh
	if pr.err != nil {
		return sw.stats, pr.err
	}
	if len(sw.vanished) > 0 {
		more, err := snap.pack(ctx, tmp, sw.vanished)
		if err != nil {
			return sw.stats, err
		}
		pr.files = append(pr.files, more...)
	}
	for _, p := range pr.files {
		if fi, err := os.Stat(p); err == nil {
			sw.total += fi.Size()
		}
	}
	for _, p := range pr.files {
		if err := sw.packFile(p); err != nil {
			return sw.stats, err
		}
	}
	sw.stats.GitObjects = plan.objects
	if err := sw.metaFile(completeMarker, []byte("ok\n"), 0o644); err != nil {
		return sw.stats, err
	}
	if err := sw.tw.Close(); err != nil {
		return sw.stats, fmt.Errorf("workspace stream: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return sw.stats, fmt.Errorf("workspace stream: %w", err)
	}
	sw.stats.StreamBytes = cw.n
	sw.stats.Elapsed = time.Since(start)
	return sw.stats, nil
}

type packResult struct {
	files []string
	err   error
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

type streamWriter struct {
	ctx   context.Context
	tw    *tar.Writer
	snap  *Snapshot
	dirs  map[string]bool
	buf   []byte
	stats Stats
	total int64 // bytes expected: raw files, loose objects, then the pack
	sent  int64 // of those, sent
	next  int64 // next progress report threshold

	vanished []string // loose objects packed by the host while we streamed

	// oids, in a native stream, maps each index path to its blob id: a
	// clean file's bytes are checked against it as they are sent.
	oids map[string]string
}

// progress reports the share of the expected bytes sent, every 2% (or
// 8 MiB, whichever is more).
func (sw *streamWriter) progress(msg string) {
	if sw.sent < sw.next || sw.total == 0 {
		return
	}
	sw.next = sw.sent + max(sw.total/50, 8<<20)
	progress.Report(sw.ctx, progress.Event{Stage: "workspace", Message: msg, Fraction: min(1, float64(sw.sent)/float64(sw.total))})
}

func (sw *streamWriter) write(hdr *tar.Header) error {
	if err := sw.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("workspace stream: %s: %w", hdr.Name, err)
	}
	return nil
}

// parents emits directory entries for the parents of p not yet emitted,
// with the host's modes (plus u+rwx) for work-tree directories.
func (sw *streamWriter) parents(p string) error {
	d := path.Dir(p)
	if d == "." || sw.dirs[d] {
		return nil
	}
	if err := sw.parents(d); err != nil {
		return err
	}
	sw.dirs[d] = true
	hdr := &tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: sw.snap.inspectedAt.Truncate(time.Second)}
	if d == ".git" || strings.HasPrefix(d, ".git/") {
		return sw.write(hdr)
	}
	sw.stats.Dirs++
	if sw.snap.Options.From == "" {
		fi, err := os.Lstat(filepath.Join(sw.snap.Root, filepath.FromSlash(d)))
		if err != nil || !fi.IsDir() {
			return fmt.Errorf("directory %s: %w (run again)", d, ErrChanged)
		}
		hdr.Mode = int64(permBits(fi.Mode()) | 0o700)
		hdr.ModTime = fi.ModTime().Truncate(time.Second)
	}
	return sw.write(hdr)
}

// workspace writes every directory, and the bytes of the raw files.
func (sw *streamWriter) workspace() error {
	for _, f := range sw.snap.files {
		if err := sw.ctx.Err(); err != nil {
			return err
		}
		if err := sw.parents(f.Path); err != nil {
			return err
		}
		want := ""
		if f.checkout && sw.oids == nil {
			continue
		}
		if (f.checkout || f.cleanLink) && sw.oids != nil {
			want = sw.oids[f.Path]
		}
		sw.stats.RawFiles++
		full := filepath.Join(sw.snap.Root, filepath.FromSlash(f.Path))
		if f.Kind == Symlink {
			fi, err := os.Lstat(full)
			if err != nil || fi.Mode()&fs.ModeSymlink == 0 {
				return fmt.Errorf("%s: %w (run again)", f.Path, ErrChanged)
			}
			target, err := os.Readlink(full)
			if err != nil {
				return fmt.Errorf("read symlink %s: %w", full, err)
			}
			if target == "" || strings.ContainsRune(target, 0) {
				return fmt.Errorf("%w: symlink %q has an invalid target %q", ErrUnsupportedName, f.Path, target)
			}
			if want != "" {
				h := newBlobHash(sw.snap.ObjectFormat, int64(len(target)))
				io.WriteString(h, target)
				if hex.EncodeToString(h.Sum(nil)) != want {
					return fmt.Errorf("%s: %w (run again)", f.Path, ErrChanged)
				}
			}
			sw.stats.RawBytes += int64(len(target))
			if err := sw.write(&tar.Header{Typeflag: tar.TypeSymlink, Name: f.Path, Linkname: target, Mode: 0o777, ModTime: fi.ModTime().Truncate(time.Second)}); err != nil {
				return err
			}
			continue
		}
		if err := sw.regular(f.Path, full, want); err != nil {
			return err
		}
	}
	return nil
}

// regular sends one file's bytes; with want (a blob id), they must hash
// to it.
func (sw *streamWriter) regular(name, full, want string) error {
	fd, err := unix.Open(full, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
			return fmt.Errorf("%s: %w (run again)", name, ErrChanged)
		}
		return fmt.Errorf("read %s: %w", full, err)
	}
	file := os.NewFile(uintptr(fd), full)
	defer file.Close()
	fi, err := file.Stat()
	if err != nil {
		return fmt.Errorf("read %s: %w", full, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: %w (run again)", name, ErrChanged)
	}
	mode := permBits(fi.Mode())
	if sw.snap.Options.ReadOnly {
		mode &^= 0o222
	}
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: int64(mode), Size: fi.Size(), ModTime: fi.ModTime().Truncate(time.Second)}
	if err := sw.write(hdr); err != nil {
		return err
	}
	var dst io.Writer = sw.tw
	var h hash.Hash
	if want != "" {
		h = newBlobHash(sw.snap.ObjectFormat, fi.Size())
		dst = io.MultiWriter(sw.tw, h)
	}
	n, err := io.CopyBuffer(dst, io.LimitReader(onlyReader{file}, fi.Size()), sw.buf)
	sw.sent += n
	sw.stats.RawBytes += n
	if err != nil {
		return fmt.Errorf("copy %s: %w", full, err)
	}
	if n != fi.Size() {
		return fmt.Errorf("%s shrank while it was copied: %w (run again)", name, ErrChanged)
	}
	if h != nil && hex.EncodeToString(h.Sum(nil)) != want {
		return fmt.Errorf("%s changed since it was inspected: %w (run again)", name, ErrChanged)
	}
	sw.progress("sending files")
	return nil
}

// onlyReader hides WriterTo/ReaderFrom so CopyBuffer uses our buffer.
type onlyReader struct{ io.Reader }

// plan is the content of the shipped .git.
type plan struct {
	files   []metaFile // small files, in order
	loose   []string   // object ids shipped as the host's loose object files
	packed  []string   // object ids that go into the pack
	objects int

	looseBytes int64
}

type metaFile struct {
	name string // tar name, under .git/
	data []byte
	mode int64
}

// emptyBlob returns the id of the empty blob, which intent-to-add index
// entries refer to and which git may never have written.
func emptyBlob(format string) string {
	if format == "sha256" {
		return "473a0f4c3be8a93681a267e3b1e9a7dcda1185436fe141f7749120a303721813"
	}
	return "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
}

// plan decides the .git content: refs, config, shallow list, index
// entries, checkout lists, and which objects travel loose or packed.
func (s *Snapshot) plan(ctx context.Context, native bool) (*plan, error) {
	g := gitCmd{r: s.runner}
	m := &plan{}
	add := func(name string, data []byte, mode int64) {
		m.files = append(m.files, metaFile{name: ".git/" + name, data: data, mode: mode})
	}
	switch {
	case s.Branch != "":
		add("HEAD", []byte("ref: refs/heads/"+s.Branch+"\n"), 0o644)
	case s.Head != "":
		add("HEAD", []byte(s.Head+"\n"), 0o644)
	default:
		add("HEAD", []byte("ref: refs/heads/main\n"), 0o644)
	}
	add("config", []byte(s.gitConfig()), 0o644)
	if exclude, err := os.ReadFile(s.gitDirs.exclude); err == nil {
		add("info/exclude", exclude, 0o644)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read %s: %w", s.gitDirs.exclude, err)
	}
	if attrs, err := os.ReadFile(s.gitDirs.attributes); err == nil {
		add(strings.TrimPrefix(attributesFile, ".git/"), attrs, 0o644)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read %s: %w", s.gitDirs.attributes, err)
	}

	want := map[string]bool{}
	var order []string
	need := func(oid string) {
		if !want[oid] {
			want[oid] = true
			order = append(order, oid)
		}
	}
	if s.Head != "" {
		if s.Branch != "" {
			add("refs/heads/"+s.Branch, []byte(s.Head+"\n"), 0o644)
		}
		add("refs/banger/base", []byte(s.Head+"\n"), 0o644)
		commits, shallow, err := s.history(ctx, g)
		if err != nil {
			return nil, err
		}
		if len(shallow) > 0 {
			add("shallow", []byte(strings.Join(shallow, "\n")+"\n"), 0o644)
		}
		res, err := s.runner.Run(ctx, hostexec.Cmd{Name: "git", Args: []string{"-C", s.Root, "rev-list", "--objects", "--no-object-names", "--no-walk", "--stdin"},
			Stdin: strings.NewReader(strings.Join(commits, "\n") + "\n")})
		if err != nil {
			return nil, fmt.Errorf("list objects of %s: %w", s.Head, err)
		}
		for _, oid := range strings.Fields(string(res.Stdout)) {
			need(oid)
		}
	}

	var info, skip bytes.Buffer
	empty := emptyBlob(s.ObjectFormat)
	synthEmpty := false
	for _, e := range s.index {
		fmt.Fprintf(&info, "%s %s %s\t%s\x00", e.mode, e.oid, e.stage, e.path)
		if e.skipWorktree {
			skip.WriteString(e.path + "\x00")
		}
		if e.oid == empty && !want[e.oid] && !s.loose(e.oid) {
			synthEmpty = true
			continue
		}
		need(e.oid)
	}
	add(strings.TrimPrefix(indexInfoFile, ".git/"), info.Bytes(), 0o644)
	if skip.Len() > 0 {
		add(strings.TrimPrefix(skipWorktreeFile, ".git/"), skip.Bytes(), 0o644)
	}
	lists := map[fs.FileMode]*bytes.Buffer{}
	var clean bytes.Buffer
	for _, f := range s.files {
		if native && (f.checkout || f.cleanLink) {
			clean.WriteString(f.Path + "\x00")
			continue
		}
		if !f.checkout {
			continue
		}
		perm := f.Mode
		if s.Options.ReadOnly {
			perm &^= 0o222
		}
		u := checkoutUmask(perm)
		if f.Kind == Symlink {
			u = 0o022
		}
		if lists[u] == nil {
			lists[u] = &bytes.Buffer{}
		}
		lists[u].WriteString(f.Path + "\x00")
	}
	if native {
		add(strings.TrimPrefix(nativeCleanFile, ".git/"), clean.Bytes(), 0o644)
	}
	if s.Options.From == "" && len(lists) > 0 {
		add(strings.TrimPrefix(checkoutAttrs, ".git/"), []byte("* -text -filter -ident -working-tree-encoding\n"), 0o644)
	}
	umasks := make([]fs.FileMode, 0, len(lists))
	for u := range lists {
		umasks = append(umasks, u)
	}
	sort.Slice(umasks, func(i, j int) bool { return umasks[i] < umasks[j] })
	for _, u := range umasks {
		add(strings.TrimPrefix(checkoutPrefix, ".git/")+fmt.Sprintf("%04o", u), lists[u].Bytes(), 0o644)
	}
	if tree, ok, err := s.preparedTree(ctx, g, native); err != nil {
		return nil, err
	} else if ok {
		add(PreparedRef, []byte(tree+"\n"), 0o644)
	}
	if synthEmpty {
		var z bytes.Buffer
		zw := zlib.NewWriter(&z)
		zw.Write([]byte("blob 0\x00"))
		zw.Close()
		add("objects/"+empty[:2]+"/"+empty[2:], z.Bytes(), 0o444)
		m.objects++
	}
	for _, oid := range order {
		if n := s.looseSize(oid); n >= 0 {
			m.loose = append(m.loose, oid)
			m.looseBytes += n
		} else {
			m.packed = append(m.packed, oid)
		}
	}
	m.objects += len(order)
	return m, nil
}

// gitConfig is the guest repository's config.
// preparedTree is the tree Prepare records as PreparedRef, when the host
// can tell it without the guest hashing anything: in work-tree mode, with
// every shipped file written from its blob (nothing travels as bytes; in
// a native stream, clean symlinks too: their targets are checked),
// nothing tracked left out, and the index equal to HEAD's tree, the work
// tree as prepared is HEAD's tree. The guest then skips its index refresh
// and the prepared-tree recording: four processes, a quarter of a second
// on an emulated guest.
func (s *Snapshot) preparedTree(ctx context.Context, g gitCmd, native bool) (string, bool, error) {
	if s.Options.From != "" || s.Head == "" {
		return "", false, nil
	}
	for _, f := range s.files {
		if !f.checkout && !(native && f.cleanLink) {
			return "", false, nil
		}
	}
	for _, sk := range s.skipped {
		if sk.Reason != SkipUntracked && sk.Reason != SkipNestedRepo {
			return "", false, nil
		}
	}
	_, err := g.out(ctx, s.Root, "diff-index", "--cached", "--quiet", s.Head, "--")
	var ee *hostexec.ExitError
	if errors.As(err, &ee) && ee.ExitCode == 1 {
		return "", false, nil // staged changes
	}
	if err != nil {
		return "", false, fmt.Errorf("compare the index of %s with %s: %w", s.Root, s.Head, err)
	}
	out, err := g.out(ctx, s.Root, "rev-parse", "--verify", s.Head+"^{tree}")
	if err != nil {
		return "", false, fmt.Errorf("tree of %s: %w", s.Head, err)
	}
	tree := strings.TrimSpace(out)
	if !isHex(tree) {
		return "", false, fmt.Errorf("tree of %s: unexpected output %q", s.Head, out)
	}
	return tree, true, nil
}

func (s *Snapshot) gitConfig() string {
	version := "0"
	if s.ObjectFormat == "sha256" {
		version = "1"
	}
	settings := []configItem{{"repositoryformatversion", version}, {"filemode", "true"}, {"bare", "false"}, {"logallrefupdates", "true"}}
	for _, c := range s.config {
		key := strings.TrimPrefix(c.key, "core.")
		replaced := false
		for i := range settings {
			if settings[i].key == key {
				settings[i].value, replaced = c.value, true
			}
		}
		if !replaced {
			settings = append(settings, configItem{key, c.value})
		}
	}
	var b strings.Builder
	b.WriteString("[core]\n")
	for _, c := range settings {
		fmt.Fprintf(&b, "\t%s = %s\n", c.key, c.value)
	}
	if s.ObjectFormat == "sha256" {
		b.WriteString("[extensions]\n\tobjectformat = sha256\n")
	}
	return b.String()
}

// pack writes the objects that are not loose on the host into one pack in
// tmp, reusing the host's packed data, and returns the .pack and .idx.
func (s *Snapshot) pack(ctx context.Context, tmp string, oids []string) ([]string, error) {
	if len(oids) == 0 {
		return nil, nil
	}
	res, err := s.runner.Run(ctx, hostexec.Cmd{Name: "git", Args: []string{"-C", s.Root, "pack-objects", "-q", filepath.Join(tmp, "pack")},
		Stdin: strings.NewReader(strings.Join(oids, "\n") + "\n")})
	if err != nil {
		return nil, fmt.Errorf("pack objects of %s: %w", s.Root, err)
	}
	sum := strings.TrimSpace(string(res.Stdout))
	if !isHex(sum) {
		return nil, fmt.Errorf("pack objects of %s: unexpected output %q", s.Root, sum)
	}
	return []string{filepath.Join(tmp, "pack-"+sum+".pack"), filepath.Join(tmp, "pack-"+sum+".idx")}, nil
}

func (s *Snapshot) loose(oid string) bool { return s.looseSize(oid) >= 0 }

// looseSize is the size of the host's loose object file, or -1.
func (s *Snapshot) looseSize(oid string) int64 {
	fi, err := os.Lstat(filepath.Join(s.gitDirs.objects, oid[:2], oid[2:]))
	if err != nil {
		return -1
	}
	return fi.Size()
}

// history returns the commits shipped (Depth of them, in rev-list order
// from Head) and the shallow boundary: shipped commits some of whose
// parents are not shipped, plus those the host itself has as shallow.
func (s *Snapshot) history(ctx context.Context, g gitCmd) (commits, shallow []string, err error) {
	out, err := g.out(ctx, s.Root, "rev-list", "--parents", "--max-count="+strconv.Itoa(s.Options.Depth), s.Head)
	if err != nil {
		return nil, nil, fmt.Errorf("read history of %s: %w", s.Head, err)
	}
	var parents [][]string
	in := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		commits = append(commits, f[0])
		parents = append(parents, f[1:])
		in[f[0]] = true
	}
	if len(commits) == 0 || commits[0] != s.Head {
		return nil, nil, fmt.Errorf("read history of %s: unexpected rev-list output %q", s.Head, out)
	}
	hostShallow := map[string]bool{}
	if data, err := os.ReadFile(s.gitDirs.shallow); err == nil {
		for _, oid := range strings.Fields(string(data)) {
			hostShallow[oid] = true
		}
	}
	for i, c := range commits {
		cut := hostShallow[c]
		for _, p := range parents[i] {
			if !in[p] {
				cut = true
			}
		}
		if cut {
			shallow = append(shallow, c)
		}
	}
	sort.Strings(shallow)
	return commits, shallow, nil
}

// gitFiles writes the .git directories, small files and loose objects.
func (sw *streamWriter) gitFiles(m *plan) error {
	for _, d := range []string{".git", ".git/objects", ".git/objects/info", ".git/objects/pack", ".git/refs", ".git/refs/heads", ".git/refs/tags", ".git/info", ".git/banger"} {
		sw.dirs[d] = true
		if err := sw.write(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: sw.snap.inspectedAt.Truncate(time.Second)}); err != nil {
			return err
		}
	}
	for _, f := range m.files {
		if err := sw.metaFile(f.name, f.data, f.mode); err != nil {
			return err
		}
	}
	for _, oid := range m.loose {
		if err := sw.ctx.Err(); err != nil {
			return err
		}
		data, err := os.ReadFile(filepath.Join(sw.snap.gitDirs.objects, oid[:2], oid[2:]))
		if errors.Is(err, fs.ErrNotExist) {
			// Packed meanwhile (a background `git gc --auto`): it goes
			// into a second pack.
			sw.vanished = append(sw.vanished, oid)
			continue
		}
		if err != nil {
			return fmt.Errorf("read object %s: %w", oid, err)
		}
		if err := sw.metaFile(".git/objects/"+oid[:2]+"/"+oid[2:], data, 0o444); err != nil {
			return err
		}
		sw.sent += int64(len(data))
		sw.progress("sending git objects")
	}
	return nil
}

func (sw *streamWriter) metaFile(name string, data []byte, mode int64) error {
	if err := sw.parents(name); err != nil {
		return err
	}
	if err := sw.write(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: sw.snap.inspectedAt.Truncate(time.Second)}); err != nil {
		return err
	}
	if _, err := sw.tw.Write(data); err != nil {
		return fmt.Errorf("workspace stream: %s: %w", name, err)
	}
	sw.stats.GitBytes += int64(len(data))
	return nil
}

func (sw *streamWriter) packFile(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("read pack: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("read pack: %w", err)
	}
	name := ".git/objects/pack/" + filepath.Base(p)
	if err := sw.write(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o444, Size: fi.Size(), ModTime: sw.snap.inspectedAt.Truncate(time.Second)}); err != nil {
		return err
	}
	n, err := io.CopyBuffer(sw.tw, io.LimitReader(progressReader{f, sw}, fi.Size()), sw.buf)
	sw.stats.GitBytes += n
	if err != nil {
		return fmt.Errorf("workspace stream: %s: %w", name, err)
	}
	return nil
}

// progressReader counts a pack's bytes as sent and reports progress.
type progressReader struct {
	r  io.Reader
	sw *streamWriter
}

func (p progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.sw.sent += int64(n)
	p.sw.progress("sending git objects")
	return n, err
}

// newBlobHash returns the hash of a blob of size bytes in a repository of
// the object format, its header written: the content follows, and Sum is
// the blob's id.
func newBlobHash(format string, size int64) hash.Hash {
	h := newObjectHash(format)
	fmt.Fprintf(h, "blob %d\x00", size)
	return h
}

// objectFormatOf names the object format of ids of n bytes.
func objectFormatOf(n int) string {
	if n == sha256.Size {
		return "sha256"
	}
	return "sha1"
}

// newObjectHash returns the hash of a repository's object format.
func newObjectHash(format string) hash.Hash {
	if format == "sha256" {
		return sha256.New()
	}
	return sha1.New()
}
