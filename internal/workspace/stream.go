package workspace

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/zlib"
	"context"
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
	"github.com/bangerdev/banger/internal/progress"
)

// completeMarker is the last entry of every stream. GuestScript refuses to
// install a tree without it, so a truncated stream never becomes a
// workspace.
const completeMarker = ".git/banger/complete"

// Stream writes the workspace of snap to w as one tar stream (PAX where a
// name needs it): the files (see Snapshot.Files) first, then the shallow
// .git (see the package documentation), then a completion marker. The git
// objects are collected concurrently while the files stream. Stream reads
// the work tree again: a file that vanished or changed type since Inspect,
// or whose size changed while it was read, fails with ErrChanged. On error,
// w has received a truncated stream that GuestScript refuses.
func Stream(ctx context.Context, snap *Snapshot, w io.Writer) (Stats, error) {
	start := time.Now()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	tmp, err := os.MkdirTemp("", "banger-workspace-")
	if err != nil {
		return Stats{}, fmt.Errorf("workspace stream: %w", err)
	}
	defer os.RemoveAll(tmp)
	metaCh := make(chan metaResult, 1)
	go func() {
		m, err := snap.gitMeta(ctx, tmp)
		metaCh <- metaResult{m, err}
	}()
	waitMeta := func() metaResult {
		cancel()
		return <-metaCh
	}

	cw := &countingWriter{w: w}
	bw := bufio.NewWriterSize(cw, 1<<20)
	sw := &streamWriter{tw: tar.NewWriter(bw), dirs: map[string]bool{}, snap: snap, buf: make([]byte, 1<<20), ctx: ctx, total: snap.Bytes()}
	if snap.Options.From != "" {
		err = sw.commitFiles()
	} else {
		err = sw.workTreeFiles()
	}
	if err != nil {
		waitMeta()
		return sw.stats, err
	}
	mr := <-metaCh
	if mr.err != nil {
		return sw.stats, mr.err
	}
	if err := sw.gitDir(mr.meta); err != nil {
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

type metaResult struct {
	meta *gitMeta
	err  error
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
	total int64
	sent  int64
	next  int64 // next progress report threshold
}

func (sw *streamWriter) progress() {
	if sw.sent < sw.next || sw.total == 0 {
		return
	}
	sw.next = sw.sent + max(sw.total/50, 8<<20)
	progress.Report(sw.ctx, progress.Event{Stage: "workspace", Message: "copying files", Fraction: float64(sw.sent) / float64(sw.total)})
}

// parents emits directory entries for the parents of p not yet emitted.
func (sw *streamWriter) parents(p string, fromHost bool) error {
	d := path.Dir(p)
	if d == "." || sw.dirs[d] {
		return nil
	}
	if err := sw.parents(d, fromHost); err != nil {
		return err
	}
	sw.dirs[d] = true
	hdr := &tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: sw.snap.inspectedAt.Truncate(time.Second)}
	if fromHost {
		fi, err := os.Lstat(filepath.Join(sw.snap.Root, filepath.FromSlash(d)))
		if err != nil || !fi.IsDir() {
			return fmt.Errorf("directory %s: %w (run again)", d, ErrChanged)
		}
		hdr.Mode = int64(permBits(fi.Mode()) | 0o700)
		hdr.ModTime = fi.ModTime().Truncate(time.Second)
	}
	if strings.HasPrefix(d, ".git/") || d == ".git" {
		return sw.tw.WriteHeader(hdr)
	}
	sw.stats.Dirs++
	return sw.write(hdr)
}

func (sw *streamWriter) write(hdr *tar.Header) error {
	if err := sw.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("workspace stream: %s: %w", hdr.Name, err)
	}
	return nil
}

func (sw *streamWriter) workTreeFiles() error {
	for _, f := range sw.snap.files {
		if err := sw.ctx.Err(); err != nil {
			return err
		}
		if err := sw.parents(f.Path, true); err != nil {
			return err
		}
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
			if err := sw.symlink(f.Path, target, fi.ModTime()); err != nil {
				return err
			}
			continue
		}
		if err := sw.regularFromHost(f.Path, full); err != nil {
			return err
		}
	}
	return nil
}

func (sw *streamWriter) symlink(name, target string, mtime time.Time) error {
	if target == "" || strings.ContainsRune(target, 0) {
		return fmt.Errorf("%w: symlink %q has an invalid target %q", ErrUnsupportedName, name, target)
	}
	sw.stats.Symlinks++
	return sw.write(&tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777, ModTime: mtime.Truncate(time.Second)})
}

func (sw *streamWriter) regularFromHost(name, full string) error {
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
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: int64(permBits(fi.Mode())), Size: fi.Size(), ModTime: fi.ModTime().Truncate(time.Second)}
	if err := sw.write(hdr); err != nil {
		return err
	}
	n, err := io.CopyBuffer(sw.tw, io.LimitReader(onlyReader{file}, fi.Size()), sw.buf)
	sw.sent += n
	sw.stats.FileBytes += n
	if err != nil {
		return fmt.Errorf("copy %s: %w", full, err)
	}
	if n != fi.Size() {
		return fmt.Errorf("%s shrank while it was copied: %w (run again)", name, ErrChanged)
	}
	sw.stats.Files++
	sw.progress()
	return nil
}

// onlyReader hides WriterTo/ReaderFrom so CopyBuffer uses our buffer.
type onlyReader struct{ io.Reader }

// commitFiles streams the blobs of Options.From through one
// `git cat-file --batch`.
func (sw *streamWriter) commitFiles() error {
	if len(sw.snap.files) == 0 {
		return nil
	}
	var list strings.Builder
	for _, f := range sw.snap.files {
		list.WriteString(f.oid)
		list.WriteByte('\n')
	}
	ctx, cancel := context.WithCancel(sw.ctx)
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		_, err := sw.snap.runner.Run(ctx, hostexec.Cmd{Name: "git", Args: []string{"-C", sw.snap.Root, "cat-file", "--batch"},
			Stdin: strings.NewReader(list.String()), Stdout: pw})
		pw.CloseWithError(err)
		done <- err
	}()
	err := sw.readBatch(bufio.NewReaderSize(pr, 1<<20))
	if err != nil {
		cancel()
		pr.CloseWithError(err)
		<-done
		return err
	}
	if err := <-done; err != nil {
		return fmt.Errorf("read files of %s: %w", sw.snap.Head, err)
	}
	return nil
}

func (sw *streamWriter) readBatch(br *bufio.Reader) error {
	mtime := sw.snap.inspectedAt
	for _, f := range sw.snap.files {
		if err := sw.ctx.Err(); err != nil {
			return err
		}
		line, err := br.ReadString('\n')
		if err != nil {
			return fmt.Errorf("read blob %s (%s): %w", f.oid, f.Path, err)
		}
		fields := strings.Fields(line)
		if len(fields) != 3 || fields[0] != f.oid || fields[1] != "blob" {
			return fmt.Errorf("read blob %s (%s): unexpected %q", f.oid, f.Path, strings.TrimSpace(line))
		}
		size, err := strconv.ParseInt(fields[2], 10, 64)
		if err != nil || size < 0 {
			return fmt.Errorf("read blob %s (%s): unexpected %q", f.oid, f.Path, strings.TrimSpace(line))
		}
		if err := sw.parents(f.Path, false); err != nil {
			return err
		}
		if f.Kind == Symlink {
			if size > 4096 {
				return fmt.Errorf("%w: symlink %q target longer than 4096 bytes", ErrUnsupportedName, f.Path)
			}
			target := make([]byte, size)
			if _, err := io.ReadFull(br, target); err != nil {
				return fmt.Errorf("read blob %s (%s): %w", f.oid, f.Path, err)
			}
			if err := sw.symlink(f.Path, string(target), mtime); err != nil {
				return err
			}
		} else {
			if err := sw.write(&tar.Header{Typeflag: tar.TypeReg, Name: f.Path, Mode: int64(f.Mode), Size: size, ModTime: mtime.Truncate(time.Second)}); err != nil {
				return err
			}
			n, err := io.CopyBuffer(sw.tw, io.LimitReader(br, size), sw.buf)
			sw.sent += n
			sw.stats.FileBytes += n
			if err == nil && n != size {
				err = io.ErrUnexpectedEOF
			}
			if err != nil {
				return fmt.Errorf("read blob %s (%s): %w", f.oid, f.Path, err)
			}
			sw.stats.Files++
			sw.progress()
		}
		if b, err := br.ReadByte(); err != nil || b != '\n' {
			return fmt.Errorf("read blob %s (%s): missing record terminator", f.oid, f.Path)
		}
	}
	return nil
}

// gitMeta is the content of the shipped .git directory.
type gitMeta struct {
	files   []metaFile // small files, in order
	loose   []string   // object ids shipped as loose objects from the host
	packs   []string   // absolute paths of pack files to ship (.pack, .idx)
	objects int
}

type metaFile struct {
	name string // relative to .git
	data []byte
	mode int64
}

// emptyBlob returns the id of the empty blob, which intent-to-add index
// entries refer to and which git never writes.
func emptyBlob(format string) string {
	if format == "sha256" {
		return "473a0f4c3be8a93681a267e3b1e9a7dcda1185436fe141f7749120a303721813"
	}
	return "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
}

// gitMeta collects the .git content; pack files go to tmp.
func (s *Snapshot) gitMeta(ctx context.Context, tmp string) (*gitMeta, error) {
	g := gitCmd{r: s.runner}
	m := &gitMeta{}
	var head, config strings.Builder
	switch {
	case s.Branch != "":
		fmt.Fprintf(&head, "ref: refs/heads/%s\n", s.Branch)
	case s.Head != "":
		head.WriteString(s.Head + "\n")
	default:
		head.WriteString("ref: refs/heads/main\n")
	}
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
	config.WriteString("[core]\n")
	for _, c := range settings {
		fmt.Fprintf(&config, "\t%s = %s\n", c.key, c.value)
	}
	if s.ObjectFormat == "sha256" {
		config.WriteString("[extensions]\n\tobjectformat = sha256\n")
	}
	m.files = append(m.files, metaFile{name: "HEAD", data: []byte(head.String())}, metaFile{name: "config", data: []byte(config.String())})
	if exclude, err := os.ReadFile(s.gitDirs.exclude); err == nil {
		m.files = append(m.files, metaFile{name: "info/exclude", data: exclude})
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read %s: %w", s.gitDirs.exclude, err)
	}

	want := map[string]bool{}
	var order []string
	add := func(oid string) {
		if !want[oid] {
			want[oid] = true
			order = append(order, oid)
		}
	}
	if s.Head != "" {
		if s.Branch != "" {
			m.files = append(m.files, metaFile{name: "refs/heads/" + s.Branch, data: []byte(s.Head + "\n")})
		}
		m.files = append(m.files, metaFile{name: "refs/banger/base", data: []byte(s.Head + "\n")})
		commits, shallow, err := s.history(ctx, g)
		if err != nil {
			return nil, err
		}
		if len(shallow) > 0 {
			m.files = append(m.files, metaFile{name: "shallow", data: []byte(strings.Join(shallow, "\n") + "\n")})
		}
		res, err := s.runner.Run(ctx, hostexec.Cmd{Name: "git", Args: []string{"-C", s.Root, "rev-list", "--objects", "--no-object-names", "--no-walk", "--stdin"},
			Stdin: strings.NewReader(strings.Join(commits, "\n") + "\n")})
		if err != nil {
			return nil, fmt.Errorf("list objects of %s: %w", s.Head, err)
		}
		for _, oid := range strings.Fields(string(res.Stdout)) {
			add(oid)
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
		add(e.oid)
	}
	m.files = append(m.files, metaFile{name: "banger/index-info", data: info.Bytes()})
	if skip.Len() > 0 {
		m.files = append(m.files, metaFile{name: "banger/skip-worktree", data: skip.Bytes()})
	}
	if synthEmpty {
		var z bytes.Buffer
		zw := zlib.NewWriter(&z)
		zw.Write([]byte("blob 0\x00"))
		zw.Close()
		m.files = append(m.files, metaFile{name: "objects/" + empty[:2] + "/" + empty[2:], data: z.Bytes(), mode: 0o444})
		m.objects++
	}

	var packed []string
	for _, oid := range order {
		if s.loose(oid) {
			m.loose = append(m.loose, oid)
		} else {
			packed = append(packed, oid)
		}
	}
	m.objects += len(order)
	if len(packed) > 0 {
		res, err := s.runner.Run(ctx, hostexec.Cmd{Name: "git", Args: []string{"-C", s.Root, "pack-objects", "-q", filepath.Join(tmp, "pack")},
			Stdin: strings.NewReader(strings.Join(packed, "\n") + "\n")})
		if err != nil {
			return nil, fmt.Errorf("pack objects of %s: %w", s.Root, err)
		}
		sum := strings.TrimSpace(string(res.Stdout))
		if !isHex(sum) {
			return nil, fmt.Errorf("pack objects of %s: unexpected output %q", s.Root, sum)
		}
		for _, ext := range []string{".pack", ".idx"} {
			m.packs = append(m.packs, filepath.Join(tmp, "pack-"+sum+ext))
		}
	}
	return m, nil
}

func (s *Snapshot) loose(oid string) bool {
	_, err := os.Lstat(filepath.Join(s.gitDirs.objects, oid[:2], oid[2:]))
	return err == nil
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

// gitDir writes the .git entries and the completion marker.
func (sw *streamWriter) gitDir(m *gitMeta) error {
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
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("object %s vanished from %s (git gc?): %w (run again)", oid, sw.snap.Root, ErrChanged)
			}
			return fmt.Errorf("read object %s: %w", oid, err)
		}
		if err := sw.metaFile("objects/"+oid[:2]+"/"+oid[2:], data, 0o444); err != nil {
			return err
		}
	}
	for _, p := range m.packs {
		if err := sw.packFile(p); err != nil {
			return err
		}
	}
	sw.stats.GitObjects = m.objects
	return sw.metaFile("banger/complete", []byte("ok\n"), 0)
}

func (sw *streamWriter) metaFile(name string, data []byte, mode int64) error {
	if mode == 0 {
		mode = 0o644
	}
	full := ".git/" + name
	if err := sw.parents(full, false); err != nil {
		return err
	}
	if err := sw.write(&tar.Header{Typeflag: tar.TypeReg, Name: full, Mode: mode, Size: int64(len(data)), ModTime: sw.snap.inspectedAt.Truncate(time.Second)}); err != nil {
		return err
	}
	if _, err := sw.tw.Write(data); err != nil {
		return fmt.Errorf("workspace stream: %s: %w", full, err)
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
	n, err := io.CopyBuffer(sw.tw, io.LimitReader(onlyReader{f}, fi.Size()), sw.buf)
	sw.stats.GitBytes += n
	if err != nil {
		return fmt.Errorf("workspace stream: %s: %w", name, err)
	}
	return nil
}
