package workspace

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/progress"
)

func TestExportRoundTrip(t *testing.T) { modes(t, testExportRoundTrip) }

func testExportRoundTrip(t *testing.T, native bool) {
	e := newEnv(t)
	e.native = native
	repo := fixture(t, e, true)
	ctx := context.Background()
	snap, err := Inspect(ctx, e.runner(), repo, Options{IncludeUntracked: true, Depth: 2})
	if err != nil {
		t.Fatal(err)
	}
	guest := filepath.Join(e.home, "repo")
	if _, err := Prepare(ctx, e.remote(), snap, guest); err != nil {
		t.Fatal(err)
	}
	// Work in the guest: change, add, delete, chmod, binary edit, retarget
	// a symlink, new empty file, new file in a new directory, an ignored
	// build output, and one staged change so the index has content.
	write(t, guest, "run.sh", []byte("#!/bin/sh\necho changed in guest\n"), 0o755)
	write(t, guest, "guest new.txt", []byte("added in guest\n"), 0o644)
	write(t, guest, "new/nested dir/ü.txt", []byte("nested\n"), 0o644)
	write(t, guest, "new-empty", nil, 0o644)
	write(t, guest, "guest.bin", randomBytes(7, 300<<10), 0o644)
	for _, p := range []string{"dir with space/file name.txt", "untracked.txt", "staged.txt"} {
		if err := os.Remove(filepath.Join(guest, p)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(guest, "empty"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(guest, "run.sh"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(guest, "bin", "other.bin"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{0, 1, 2, 0xff, 0xfe}, 1000); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.Remove(filepath.Join(guest, "link")); err != nil {
		t.Fatal(err)
	}
	symlink(t, guest, "link", "tool.sh")
	write(t, guest, "build/guest-output.o", []byte("ignored"), 0o644)
	write(t, guest, "unstaged.txt", []byte("staged in guest\n"), 0o644)
	e.git(guest, "add", "unstaged.txt")

	indexPath := filepath.Join(guest, ".git", "index")
	before, err := os.ReadFile(indexPath)
	if err != nil {
		t.Fatal(err)
	}
	beforeStatus := e.git(guest, "status", "--porcelain")

	var patch bytes.Buffer
	if err := Export(ctx, e.remote(), guest, "", &patch); err != nil {
		t.Fatal(err)
	}
	after, err := os.ReadFile(indexPath)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Fatal("export changed the guest's index")
	}
	if s := e.git(guest, "status", "--porcelain"); s != beforeStatus {
		t.Fatalf("export changed the guest's status:\n%s\nwas:\n%s", s, beforeStatus)
	}
	if strings.Contains(patch.String(), "guest-output.o") {
		t.Fatal("patch contains an ignored file")
	}
	for _, want := range []string{"GIT binary patch", "new mode 100755", "old mode 100755", "deleted file mode", "new file mode 100644", "b/new-empty"} {
		if !strings.Contains(patch.String(), want) {
			t.Fatalf("patch lacks %q:\n%s", want, patch.String())
		}
	}
	// No temporary index left behind in the guest.
	if left, _ := filepath.Glob(filepath.Join(os.TempDir(), "tmp.*", "index")); len(left) > 0 {
		t.Fatalf("temporary index left: %v", left)
	}

	// The default patch holds only the guest's changes: it applies to the
	// host tree as prepared (dirty, with untracked files), which then
	// matches the guest.
	for _, hostOnly := range []string{"both.txt", "added.txt", "gone.txt", "bin/blob.bin", "tool.sh"} {
		if strings.Contains(patch.String(), "a/"+hostOnly+" ") || strings.Contains(patch.String(), "b/"+hostOnly+"\n") {
			t.Fatalf("the default patch repeats the host's own uncommitted change to %s:\n%s", hostOnly, patch.String())
		}
	}
	hostCopy := filepath.Join(t.TempDir(), "host")
	e.sh("", "cp -a "+hostexec.Quote(repo)+" "+hostexec.Quote(hostCopy))
	patchFile := filepath.Join(t.TempDir(), "guest.patch")
	if err := os.WriteFile(patchFile, patch.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if res, err := Apply(ctx, e.runner(), hostCopy, patchFile, "t", time.Now()); err != nil || res.Empty || len(res.Files) == 0 {
		t.Fatalf("Apply on the dirty host tree = %+v, %v", res, err)
	}

	// --base-commit HEAD: everything since the commit, for a clean clone
	// of it.
	var full bytes.Buffer
	if err := Export(ctx, e.remote(), guest, snap.Head, &full); err != nil {
		t.Fatal(err)
	}
	clone := filepath.Join(t.TempDir(), "clone")
	e.git("", "clone", "-q", repo, clone)
	e.git(clone, "checkout", "-q", snap.Head)
	fullFile := filepath.Join(t.TempDir(), "full.patch")
	if err := os.WriteFile(fullFile, full.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	e.git(clone, "apply", fullFile)
	// git records only the exec bit: compare that, not the full mode.
	execOnly := func(m map[string]entry) map[string]entry {
		for k, v := range m {
			if v.Kind == "file" {
				v.Mode &= 0o100
				m[k] = v
			}
		}
		return m
	}
	// crlf.auto is text=auto: git stores it normalised (LF), so the patch
	// carries no change for the guest's CRLF copy and the clone has LF.
	notOurs := func(p string) bool { return !strings.HasPrefix(p, "build/") && p != "crlf.auto" }
	want := execOnly(keep(tree(t, guest), notOurs))
	if d := diffTrees(want, execOnly(keep(tree(t, clone), notOurs))); d != "" {
		t.Fatalf("clone + patch differs from the guest:\n%s", d)
	}
	// The host keeps its ignored files, which never travelled.
	notIgnored := func(p string) bool { return notOurs(p) && p != "debug.log" && p != "excluded.tmp" }
	if d := diffTrees(want, execOnly(keep(tree(t, hostCopy), notIgnored))); d != "" {
		t.Fatalf("dirty host tree + default patch differs from the guest:\n%s", d)
	}

	// The host moves on: Head tells.
	if h, err := Head(ctx, e.runner(), repo); err != nil || h != snap.Head {
		t.Fatalf("Head = %s, %v; want %s", h, err, snap.Head)
	}
	e.git(repo, "commit", "-q", "-m", "host moved on")
	if h, err := Head(ctx, e.runner(), repo); err != nil || h == snap.Head || h == "" {
		t.Fatalf("Head after a commit = %s, %v", h, err)
	}

	// An explicit base: the first commit (shipped with Depth 2).
	first := strings.TrimSpace(e.git(repo, "rev-parse", snap.Head+"~1"))
	patch.Reset()
	if err := Export(ctx, e.remote(), guest, first, &patch); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(patch.String(), "b/history.txt") {
		t.Fatal("patch against HEAD~1 lacks the second commit's file")
	}
	// A base the shallow guest does not have.
	err = Export(ctx, e.remote(), guest, strings.Repeat("1", 40), io.Discard)
	var ge *GuestError
	if !errors.As(err, &ge) || !errors.Is(err, ErrGuest) || !strings.Contains(err.Error(), "not in the guest's repository") {
		t.Fatalf("unknown base: got %v", err)
	}
	if err := Export(ctx, e.remote(), guest, "--output=/tmp/x", io.Discard); !errors.Is(err, ErrInvalidOptions) {
		t.Fatalf("option-like base: got %v", err)
	}
	if err := Export(ctx, e.remote(), filepath.Join(e.home, "nothing"), "", io.Discard); !errors.As(err, &ge) || !strings.Contains(err.Error(), "no workspace") {
		t.Fatalf("missing workspace: got %v", err)
	}
}

func TestPrepareGuestDirectory(t *testing.T) { modes(t, testPrepareGuestDirectory) }

func testPrepareGuestDirectory(t *testing.T, native bool) {
	e := newEnv(t)
	e.native = native
	ctx := context.Background()
	repo := t.TempDir()
	e.git(repo, "init", "-q")
	write(t, repo, "a.txt", []byte("one\n"), 0o644)
	write(t, repo, "x/run", []byte("#!/bin/sh\n"), 0o755)
	e.git(repo, "add", "-A")
	e.git(repo, "commit", "-q", "-m", "one")
	guest := filepath.Join(e.home, "w s", "repo")

	snap, err := Inspect(ctx, e.runner(), repo, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var events []progress.Event
	pctx := progress.WithSink(ctx, func(ev progress.Event) { mu.Lock(); events = append(events, ev); mu.Unlock() })
	if _, err := Prepare(pctx, e.remote(), snap, guest); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if len(events) == 0 {
		t.Fatal("no progress reported")
	}
	for i, ev := range events {
		if ev.Stage != "workspace" || ev.Fraction < 0 || ev.Fraction > 1 || (i > 0 && ev.Fraction < events[i-1].Fraction) {
			t.Fatalf("progress events %+v", events)
		}
	}
	mu.Unlock()
	if fi, err := os.Stat(guest); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("workspace root: %v %v, want 0755", fi.Mode(), err)
	}
	// The prepared tree is recorded, as a tree, and nothing of the
	// shipping is left (the temporary attributes included).
	if typ := strings.TrimSpace(e.git(guest, "cat-file", "-t", PreparedRef)); typ != "tree" {
		t.Fatalf("%s is a %q", PreparedRef, typ)
	}
	if head := strings.TrimSpace(e.git(guest, "rev-parse", "HEAD^{tree}")); strings.TrimSpace(e.git(guest, "rev-parse", PreparedRef)) != head {
		t.Fatal("the prepared tree of a clean repository is not HEAD's tree")
	}
	for _, p := range []string{".git/banger", ".git/info/attributes"} {
		if _, err := os.Stat(filepath.Join(guest, p)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s left in the guest: %v", p, err)
		}
	}
	write(t, guest, "guest-work.txt", []byte("do not lose me"), 0o644)

	t.Run("refuses a non-empty directory", func(t *testing.T) {
		_, err := Prepare(ctx, e.remote(), snap, guest)
		var ge *GuestError
		if !errors.As(err, &ge) || ge.Status != 2 || !strings.Contains(err.Error(), "not empty") {
			t.Fatalf("got %v", err)
		}
		if _, err := os.Stat(filepath.Join(guest, "guest-work.txt")); err != nil {
			t.Fatal("guest work lost")
		}
	})

	t.Run("replace and readonly", func(t *testing.T) {
		write(t, repo, "a.txt", []byte("two\n"), 0o644)
		snap, err := Inspect(ctx, e.runner(), repo, Options{Replace: true, ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Prepare(ctx, e.remote(), snap, guest); err != nil {
			t.Fatal(err)
		}
		if data, _ := os.ReadFile(filepath.Join(guest, "a.txt")); string(data) != "two\n" {
			t.Fatalf("a.txt = %q", data)
		}
		if _, err := os.Stat(filepath.Join(guest, "guest-work.txt")); !errors.Is(err, fs.ErrNotExist) {
			t.Fatal("replace kept the old tree")
		}
		for _, p := range []string{".", "a.txt", "x", "x/run"} {
			fi, err := os.Stat(filepath.Join(guest, p))
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm()&0o222 != 0 {
				t.Fatalf("%s is writable: %v", p, fi.Mode())
			}
		}
		if fi, _ := os.Stat(filepath.Join(guest, "x", "run")); fi.Mode().Perm() != 0o555 {
			t.Fatalf("x/run mode %v, want r-xr-xr-x", fi.Mode())
		}
		// The index's stat data is valid (no file was touched after its
		// checkout), git still works (.git stays writable), and the guest
		// sees the host's edit.
		if s := e.git(guest, "diff-files", "--name-only"); s != "a.txt\n" {
			t.Fatalf("diff-files %q", s)
		}
		if s := e.git(guest, "status", "--porcelain"); s != " M a.txt\n" {
			t.Fatalf("status %q", s)
		}
		// Replacing a read-only tree works too.
		snap.Options.ReadOnly = false
		if _, err := Prepare(ctx, e.remote(), snap, guest); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("truncated stream changes nothing", func(t *testing.T) {
		dest := filepath.Join(e.home, "truncated")
		for _, limit := range []int64{0, 700, 5000} {
			_, err := Prepare(ctx, truncating{e.remote(), limit}, snap, dest)
			var ge *GuestError
			if !errors.As(err, &ge) || ge.Status != 3 {
				t.Fatalf("limit %d: got %v", limit, err)
			}
			if _, err := os.Stat(dest); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("limit %d: destination created", limit)
			}
			if left, _ := filepath.Glob(dest + ".banger-*"); len(left) > 0 {
				t.Fatalf("limit %d: leftovers %v", limit, left)
			}
		}
	})

	t.Run("bad guest paths", func(t *testing.T) {
		for _, p := range []string{"", "relative", "/", "/a/../b", "/a/", "/a\nb"} {
			if _, err := Prepare(ctx, e.remote(), snap, p); !errors.Is(err, ErrInvalidOptions) {
				t.Errorf("%q: got %v", p, err)
			}
		}
	})

	t.Run("guest without git", func(t *testing.T) {
		bin := t.TempDir()
		for _, tool := range []string{"tar", "mktemp", "find", "sh", "ls", "dirname", "mkdir"} {
			p, err := exec.LookPath(tool)
			if err != nil {
				t.Fatal(err)
			}
			symlink(t, bin, tool, p)
		}
		r := localRemote{dir: e.home, env: append(append([]string{}, e.vars...), "PATH="+bin)}
		_, err := Prepare(ctx, r, snap, filepath.Join(e.home, "nogit"))
		var ge *GuestError
		if !errors.As(err, &ge) || ge.Status != 127 || !strings.Contains(err.Error(), "git is not installed in the guest") {
			t.Fatalf("got %v", err)
		}
	})
}

// truncating passes only the first n bytes of stdin to the guest.
type truncating struct {
	r Remote
	n int64
}

func (tr truncating) Run(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	return tr.r.Run(ctx, cmd, io.LimitReader(stdin, tr.n), stdout, stderr)
}

func TestStreamFailureReportsCause(t *testing.T) { modes(t, testStreamFailureReportsCause) }

func testStreamFailureReportsCause(t *testing.T, native bool) {
	e := newEnv(t)
	e.native = native
	ctx := context.Background()
	repo := t.TempDir()
	e.git(repo, "init", "-q")
	write(t, repo, "a.txt", []byte("a"), 0o644)
	write(t, repo, "b.txt", []byte("b"), 0o644)
	e.git(repo, "add", "-A")
	write(t, repo, "b.txt", []byte("b, changed"), 0o644)
	snap, err := Inspect(ctx, e.runner(), repo, Options{})
	if err != nil {
		t.Fatal(err)
	}
	// A file whose bytes must travel vanishes between Inspect and Prepare.
	if err := os.Remove(filepath.Join(repo, "b.txt")); err != nil {
		t.Fatal(err)
	}
	dest := filepath.Join(e.home, "changed")
	_, err = Prepare(ctx, e.remote(), snap, dest)
	if !errors.Is(err, ErrChanged) || !strings.Contains(err.Error(), "b.txt") {
		t.Fatalf("got %v", err)
	}
	if _, err := os.Stat(dest); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("destination created from a failed stream")
	}
	// Cancelled context.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := Prepare(cctx, e.remote(), snap, dest); err == nil {
		t.Fatal("prepare with a cancelled context succeeded")
	}
}

// repackOnFirstRead runs fn once, after the first bytes of the stream
// arrived (Stream has planned which objects travel loose by then).
type repackOnFirstRead struct {
	r    Remote
	once *sync.Once
	fn   func()
}

func (h repackOnFirstRead) Run(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	return h.r.Run(ctx, cmd, readHook{stdin, h.once, h.fn}, stdout, stderr)
}

type readHook struct {
	r    io.Reader
	once *sync.Once
	fn   func()
}

func (h readHook) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	if n > 0 {
		h.once.Do(h.fn)
	}
	return n, err
}

func TestLooseObjectsPackedWhileStreaming(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	repo := t.TempDir()
	e.git(repo, "init", "-q")
	for i := 0; i < 20; i++ {
		write(t, repo, fmt.Sprintf("f%02d.txt", i), []byte(strings.Repeat(fmt.Sprint(i), 1000)), 0o644)
	}
	e.git(repo, "add", "-A")
	e.git(repo, "commit", "-q", "-m", "loose")
	write(t, repo, "big-untracked.bin", randomBytes(3, 3<<20), 0o644) // > Stream's buffer
	snap, err := Inspect(ctx, e.runner(), repo, Options{IncludeUntracked: true})
	if err != nil {
		t.Fatal(err)
	}
	r := repackOnFirstRead{r: e.remote(), once: &sync.Once{}, fn: func() { e.git(repo, "repack", "-a", "-d", "-q") }}
	guest := filepath.Join(e.home, "repacked")
	if _, err := Prepare(ctx, r, snap, guest); err != nil {
		t.Fatal(err)
	}
	if loose, _ := filepath.Glob(filepath.Join(repo, ".git", "objects", "??", "*")); len(loose) != 0 {
		t.Fatalf("the host still has loose objects: %v", loose)
	}
	if packs, _ := filepath.Glob(filepath.Join(guest, ".git", "objects", "pack", "*.pack")); len(packs) != 1 {
		t.Fatalf("guest packs: %v", packs)
	}
	e.git(guest, "fsck", "--no-progress")
	if d := diffTrees(tree(t, repo), tree(t, guest)); d != "" {
		t.Fatalf("guest differs:\n%s", d)
	}
	if s := e.git(guest, "status", "--porcelain"); s != "?? big-untracked.bin\n" {
		t.Fatalf("status %q", s)
	}
}

// TestApplyNeverLosesHostChanges: a host edit made while the VM runs that
// touches what the guest changed is refused with the host tree untouched
// and the patch kept; an edit elsewhere survives the apply.
func TestApplyNeverLosesHostChanges(t *testing.T) { modes(t, testApplyNeverLosesHostChanges) }

func testApplyNeverLosesHostChanges(t *testing.T, native bool) {
	e := newEnv(t)
	e.native = native
	repo := fixture(t, e, false)
	ctx := context.Background()
	snap, err := Inspect(ctx, e.runner(), repo, Options{})
	if err != nil {
		t.Fatal(err)
	}
	guest := filepath.Join(e.home, "repo")
	if _, err := Prepare(ctx, e.remote(), snap, guest); err != nil {
		t.Fatal(err)
	}
	write(t, guest, "run.sh", []byte("#!/bin/sh\necho guest\n"), 0o755)
	write(t, guest, "from-guest.txt", []byte("guest\n"), 0o644)
	patchFile := filepath.Join(t.TempDir(), "p.patch")
	var patch bytes.Buffer
	if err := Export(ctx, e.remote(), guest, "", &patch); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(patchFile, patch.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}

	// While the VM ran, the host changed the same line, and another file.
	write(t, repo, "run.sh", []byte("#!/bin/sh\necho host\n"), 0o755)
	write(t, repo, "host-only.txt", []byte("host\n"), 0o644)
	before := tree(t, repo)
	now := time.Date(2026, 12, 5, 1, 2, 3, 0, time.UTC)
	_, err = Apply(ctx, e.runner(), filepath.Join(repo, "deep"), patchFile, "dev", now)
	var ae *ApplyError
	if !errors.As(err, &ae) || !errors.Is(err, ErrApplyConflict) {
		t.Fatalf("conflicting apply = %v, want an ApplyError", err)
	}
	if d := diffTrees(keep(before, func(p string) bool { return true }), keep(tree(t, repo), func(p string) bool { return !strings.HasPrefix(p, ".git/") })); d != "" {
		t.Fatalf("a refused apply changed the host tree:\n%s", d)
	}
	if want := filepath.Join(repo, ".git", "banger", "patches", "dev-20261205T010203Z.patch"); ae.Kept != want {
		t.Fatalf("kept %q, want %q", ae.Kept, want)
	}
	if kept, err := os.ReadFile(ae.Kept); err != nil || !bytes.Equal(kept, patch.Bytes()) {
		t.Fatalf("kept patch differs: %v", err)
	}
	if !strings.Contains(err.Error(), "run.sh") || !strings.Contains(err.Error(), ae.Kept) {
		t.Fatalf("error does not name the file and the kept patch: %v", err)
	}

	// The host gives up its conflicting edit; the other one survives.
	write(t, repo, "run.sh", []byte("#!/bin/sh\necho hi\n"), 0o755)
	res, err := Apply(ctx, e.runner(), repo, patchFile, "dev", now.Add(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(res.Files, "run.sh") || !slices.Contains(res.Files, "from-guest.txt") {
		t.Fatalf("files = %v", res.Files)
	}
	for rel, want := range map[string]string{"run.sh": "#!/bin/sh\necho guest\n", "from-guest.txt": "guest\n", "host-only.txt": "host\n"} {
		if b, err := os.ReadFile(filepath.Join(repo, rel)); err != nil || string(b) != want {
			t.Fatalf("%s = %q, %v; want %q", rel, b, err, want)
		}
	}

	// An empty patch is nothing to do.
	empty := filepath.Join(t.TempDir(), "empty.patch")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if res, err := Apply(ctx, e.runner(), repo, empty, "dev", now); err != nil || !res.Empty {
		t.Fatalf("empty patch: %+v, %v", res, err)
	}
}

// TestPrepareMakesMissingParents: a guest path whose parents do not exist
// yet gets them.
func TestPrepareMakesMissingParents(t *testing.T) { modes(t, testPrepareMakesMissingParents) }

func testPrepareMakesMissingParents(t *testing.T, native bool) {
	e := newEnv(t)
	e.native = native
	repo := fixture(t, e, false)
	ctx := context.Background()
	snap, err := Inspect(ctx, e.runner(), repo, Options{})
	if err != nil {
		t.Fatal(err)
	}
	guest := filepath.Join(e.home, "deep", "er", "repo")
	if _, err := Prepare(ctx, e.remote(), snap, guest); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(guest, ".git")); err != nil || !fi.IsDir() {
		t.Fatalf("no repository at %s: %v", guest, err)
	}
}

// TestPreparedTreeFromHost: a clean work tree whose index is HEAD's gets
// PreparedRef from the host (the guest hashes nothing); a dirty file, a
// staged change or an untracked file shipped leaves it to the guest. Either
// way the guest ends with the tree exactly as prepared.
func TestPreparedTreeFromHost(t *testing.T) { modes(t, testPreparedTreeFromHost) }

func testPreparedTreeFromHost(t *testing.T, native bool) {
	e := newEnv(t)
	e.native = native
	ctx := context.Background()
	repo := e.commitRepo(t, map[string]string{"a.txt": "one\n", "b/c.txt": "two\n"})
	write(t, repo, "ignored-untracked.txt", []byte("not shipped\n"), 0o644)
	headTree := strings.TrimSpace(e.git(repo, "rev-parse", "HEAD^{tree}"))

	shippedRef := func(o Options) (string, bool) {
		snap, err := Inspect(ctx, e.runner(), repo, o)
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if _, err := Stream(ctx, snap, &buf); err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(&buf)
		for {
			h, err := tr.Next()
			if err != nil {
				return "", false
			}
			if h.Name == ".git/"+PreparedRef {
				data, _ := io.ReadAll(tr)
				return strings.TrimSpace(string(data)), true
			}
		}
	}
	prepare := func(name string, o Options) string {
		snap, err := Inspect(ctx, e.runner(), repo, o)
		if err != nil {
			t.Fatal(err)
		}
		guest := filepath.Join(e.home, name)
		if _, err := Prepare(ctx, e.remote(), snap, guest); err != nil {
			t.Fatal(err)
		}
		return guest
	}

	if ref, ok := shippedRef(Options{}); !ok || ref != headTree {
		t.Fatalf("clean tree: shipped %q %v, want HEAD's tree %s", ref, ok, headTree)
	}
	g := prepare("clean", Options{})
	if got := strings.TrimSpace(e.git(g, "rev-parse", PreparedRef)); got != headTree {
		t.Fatalf("clean: prepared %s, want %s", got, headTree)
	}

	// An untracked file shipped: the guest records it.
	if _, ok := shippedRef(Options{IncludeUntracked: true}); ok {
		t.Fatal("shipped PreparedRef with an untracked file in the stream")
	}
	g = prepare("untracked", Options{IncludeUntracked: true})
	if out := e.git(g, "ls-tree", "-r", "--name-only", PreparedRef); !strings.Contains(out, "ignored-untracked.txt") {
		t.Fatalf("untracked: prepared tree lacks the untracked file:\n%s", out)
	}

	// A staged change with the work tree matching it: no file travels as
	// bytes, but the index is not HEAD's.
	write(t, repo, "a.txt", []byte("staged\n"), 0o644)
	e.git(repo, "add", "a.txt")
	if _, ok := shippedRef(Options{}); ok {
		t.Fatal("shipped PreparedRef with a staged change")
	}
	g = prepare("staged", Options{})
	if got := e.git(g, "show", PreparedRef+":a.txt"); got != "staged\n" {
		t.Fatalf("staged: prepared a.txt = %q", got)
	}

	// A dirty file.
	write(t, repo, "b/c.txt", []byte("dirty\n"), 0o644)
	if _, ok := shippedRef(Options{}); ok {
		t.Fatal("shipped PreparedRef with a dirty file")
	}
	g = prepare("dirty", Options{})
	if got := e.git(g, "show", PreparedRef+":b/c.txt"); got != "dirty\n" {
		t.Fatalf("dirty: prepared b/c.txt = %q", got)
	}
}
