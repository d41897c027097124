package workspace

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fixture builds the fidelity repository: two commits, then every kind of
// work-tree state a developer has.
func fixture(t *testing.T, e *env, packed bool) string {
	t.Helper()
	repo := filepath.Join(t.TempDir(), "host repo")
	if err := os.MkdirAll(repo, 0o755); err != nil {
		t.Fatal(err)
	}
	e.git(repo, "init", "-q")
	write(t, repo, ".gitignore", []byte("build/\n*.log\n"), 0o644)
	write(t, repo, "run.sh", []byte("#!/bin/sh\necho hi\n"), 0o755)
	write(t, repo, "tool.sh", []byte("#!/bin/sh\n"), 0o644)
	write(t, repo, "empty", nil, 0o644)
	write(t, repo, "bin/blob.bin", randomBytes(1, 1<<20), 0o644)
	write(t, repo, "bin/other.bin", randomBytes(2, 64<<10), 0o644)
	write(t, repo, "dir with space/file name.txt", []byte("spaces\n"), 0o644)
	write(t, repo, "unicodé/ファイル 名.txt", []byte("unicode\n"), 0o644)
	write(t, repo, "staged.txt", []byte("v1\n"), 0o644)
	write(t, repo, "unstaged.txt", []byte("v1\n"), 0o644)
	write(t, repo, "both.txt", []byte("v1\n"), 0o644)
	write(t, repo, "gone.txt", []byte("gone\n"), 0o644)
	write(t, repo, "staged-gone.txt", []byte("staged gone\n"), 0o644)
	write(t, repo, "secret.txt", []byte("private\n"), 0o600)
	write(t, repo, "group.txt", []byte("group\n"), 0o664)
	write(t, repo, "deep/a/b/c/d.txt", []byte("deep\n"), 0o644)
	symlink(t, repo, "link", "run.sh")
	symlink(t, repo, "dangling", "does/not/exist")
	symlink(t, repo, "abs", "/etc/hostname")
	symlink(t, repo, "deep/up", "../../run.sh")
	// Files whose work-tree bytes differ from their blobs although git
	// calls them clean: they must travel as bytes.
	write(t, repo, ".gitattributes", []byte("*.crlf text eol=crlf\n*.auto text=auto\n*.id ident\n"), 0o644)
	write(t, repo, "win.crlf", []byte("one\r\ntwo\r\n"), 0o644)
	write(t, repo, "lf.auto", []byte("lf only\n"), 0o644)
	write(t, repo, "crlf.auto", []byte("will be crlf\n"), 0o644)
	write(t, repo, "version.id", []byte("$Id$\n"), 0o644)
	e.git(repo, "add", "-A")
	e.git(repo, "commit", "-q", "-m", "first")
	if err := os.Remove(filepath.Join(repo, "version.id")); err != nil {
		t.Fatal(err)
	}
	e.git(repo, "checkout", "--", "version.id") // expands $Id$
	write(t, repo, "crlf.auto", []byte("will be crlf\r\n"), 0o644)
	write(t, repo, "history.txt", []byte("second commit\n"), 0o644)
	e.git(repo, "add", "history.txt")
	e.git(repo, "commit", "-q", "-m", "second")
	if packed {
		e.git(repo, "gc", "-q")
	}
	// Work-tree state.
	write(t, repo, "staged.txt", []byte("v2 staged\n"), 0o644)
	e.git(repo, "add", "staged.txt")
	write(t, repo, "unstaged.txt", []byte("v2 unstaged\n"), 0o644)
	write(t, repo, "both.txt", []byte("v2 staged\n"), 0o644)
	e.git(repo, "add", "both.txt")
	write(t, repo, "both.txt", []byte("v3 unstaged on top\n"), 0o644)
	write(t, repo, "added.txt", []byte("new and staged\n"), 0o644)
	e.git(repo, "add", "added.txt")
	if err := os.Remove(filepath.Join(repo, "gone.txt")); err != nil {
		t.Fatal(err)
	}
	e.git(repo, "rm", "-q", "staged-gone.txt")
	if err := os.Chmod(filepath.Join(repo, "tool.sh"), 0o755); err != nil {
		t.Fatal(err)
	}
	blob := randomBytes(1, 1<<20)
	copy(blob[4096:], "binary edit")
	write(t, repo, "bin/blob.bin", blob, 0o644)
	write(t, repo, "untracked.txt", []byte("untracked\n"), 0o644)
	write(t, repo, "new dir/u ü.txt", []byte("untracked in new dir\n"), 0o644)
	symlink(t, repo, "untracked-link", "untracked.txt")
	write(t, repo, "build/out.o", []byte("ignored\n"), 0o644)
	write(t, repo, "debug.log", []byte("ignored\n"), 0o644)
	write(t, repo, "excluded.tmp", []byte("ignored by info/exclude\n"), 0o644)
	write(t, repo, ".git/info/exclude", []byte("*.tmp\n"), 0o644)
	return repo
}

func isUntracked(p string) bool {
	return p == "untracked.txt" || p == "untracked-link" || strings.HasPrefix(p, "new dir/")
}

func isIgnored(p string) bool {
	return strings.HasPrefix(p, "build/") || p == "debug.log" || p == "excluded.tmp"
}

func TestWorkspaceFidelity(t *testing.T) { modes(t, testWorkspaceFidelity) }

func testWorkspaceFidelity(t *testing.T, native bool) {
	for _, packed := range []bool{false, true} {
		for _, untracked := range []bool{false, true} {
			name := map[bool]string{false: "loose", true: "packed"}[packed] + map[bool]string{false: "", true: "-include-untracked"}[untracked]
			t.Run(name, func(t *testing.T) {
				e := newEnv(t)
				e.native = native
				repo := fixture(t, e, packed)
				ctx := context.Background()
				// Inspect from a subdirectory: the workspace is the whole repository.
				snap, err := Inspect(ctx, e.runner(), filepath.Join(repo, "deep", "a"), Options{IncludeUntracked: untracked})
				if err != nil {
					t.Fatal(err)
				}
				if snap.Root != repo {
					t.Fatalf("root = %q, want %q", snap.Root, repo)
				}
				if head := strings.TrimSpace(e.git(repo, "rev-parse", "HEAD")); snap.Head != head || snap.Branch != "main" || snap.HostBranch != "main" {
					t.Fatalf("head/branch = %s %q %q, want %s main", snap.Head, snap.Branch, snap.HostBranch, head)
				}
				wantSkipped := 0
				if !untracked {
					wantSkipped = 3
				}
				if n := snap.SkippedCount(SkipUntracked); n != wantSkipped {
					t.Fatalf("skipped untracked = %d, want %d (%v)", n, wantSkipped, snap.Skipped())
				}
				if n := snap.SkippedCount(SkipDeleted); n != 1 {
					t.Fatalf("skipped deleted = %d, want 1 (gone.txt): %v", n, snap.Skipped())
				}
				guest := filepath.Join(e.home, "work", "repo")
				st, err := Prepare(ctx, e.remote(), snap, guest)
				if err != nil {
					t.Fatal(err)
				}
				host := keep(tree(t, repo), func(p string) bool { return !isIgnored(p) && (untracked || !isUntracked(p)) })
				if d := diffTrees(host, tree(t, guest)); d != "" {
					t.Fatalf("guest differs from host:\n%s", d)
				}
				if st.Files+st.Symlinks != len(host) || st.Files+st.Symlinks != len(snap.Files()) {
					t.Fatalf("stats %+v, host has %d entries, snapshot %d", st, len(host), len(snap.Files()))
				}
				// Sent as bytes: symlinks, dirty files, files with conversions, untracked files.
				wantRaw := 4 + 4 + 3
				if untracked {
					wantRaw += 3
				}
				if native {
					wantRaw = len(snap.Files()) // every file travels as bytes
				}
				if st.Native != native {
					t.Fatalf("stats %+v: native install %v, want %v", st, st.Native, native)
				}
				if st.FileBytes != snap.Bytes() || st.RawFiles != wantRaw || st.StreamBytes <= st.RawBytes+st.GitBytes || st.GitObjects == 0 {
					t.Fatalf("stats %+v (snapshot bytes %d, want %d raw files)", st, snap.Bytes(), wantRaw)
				}
				// git sees the same changes, staged and unstaged, as on the host.
				status := func(dir string) string {
					return e.git(dir, "status", "--porcelain=v1", "-z", "--untracked-files=all")
				}
				hostStatus := status(repo)
				if !untracked {
					var kept []string
					for _, rec := range strings.Split(hostStatus, "\x00") {
						if !strings.HasPrefix(rec, "?? ") {
							kept = append(kept, rec)
						}
					}
					hostStatus = strings.Join(kept, "\x00")
				}
				// crlf.auto: the host index remembers the LF blob's size, so
				// host git reports the CRLF file modified without looking at
				// it; the guest index has no size yet, so guest git compares
				// normalised content and finds it clean. Same bytes both sides.
				hostStatus = strings.Replace(hostStatus, " M crlf.auto\x00", "", 1)
				if got := status(guest); got != hostStatus {
					t.Fatalf("guest status\n%q\nhost status\n%q", got, hostStatus)
				}
				// The guest index is fresh: no entry is stat-dirty (checked-out
				// files have their stat data, files sent as bytes were hashed).
				if g, h := e.git(guest, "diff-files", "--name-only"), e.git(guest, "diff", "--name-only"); g != h {
					t.Fatalf("stat-dirty entries in the guest index:\ndiff-files: %q\ndiff: %q", g, h)
				}
				for _, args := range [][]string{
					{"diff", "--binary"},
					{"diff", "--cached", "--binary"},
					{"diff", "HEAD", "--binary", "--stat"},
				} {
					if g, h := e.git(guest, args...), e.git(repo, args...); g != h {
						t.Fatalf("git %v differs:\nguest:\n%s\nhost:\n%s", args, g, h)
					}
				}
				if g, h := e.git(guest, "log", "--format=%H %s"), e.git(repo, "log", "-1", "--format=%H %s"); g != h {
					t.Fatalf("guest log %q, want %q", g, h)
				}
				if got := strings.TrimSpace(e.git(guest, "rev-parse", "--is-shallow-repository")); got != "true" {
					t.Fatalf("guest is-shallow = %s", got)
				}
				// The shallow repository is complete: every object is there.
				e.git(guest, "fsck", "--no-progress", "--strict")
				e.git(guest, "show", "--stat", "HEAD")
				if g, h := e.git(guest, "rev-parse", "refs/banger/base"), e.git(repo, "rev-parse", "HEAD"); g != h {
					t.Fatalf("refs/banger/base = %s, want %s", g, h)
				}
				// Loose host objects travel loose; packed ones in one pack.
				packs, _ := filepath.Glob(filepath.Join(guest, ".git", "objects", "pack", "pack-*.pack"))
				if len(packs) != map[bool]int{false: 0, true: 1}[packed] {
					t.Fatalf("guest packs %v (host packed: %v)", packs, packed)
				}
				if _, err := os.Stat(filepath.Join(guest, ".git", "banger")); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf(".git/banger left in the guest: %v", err)
				}
				// Guest info/exclude came along: an ignored-by-exclude file stays ignored.
				write(t, guest, "again.tmp", []byte("x"), 0o644)
				if s := e.git(guest, "status", "--porcelain", "--", "again.tmp"); s != "" {
					t.Fatalf("info/exclude not shipped: %q", s)
				}
				// No leftovers next to the workspace.
				if ents, _ := os.ReadDir(filepath.Dir(guest)); len(ents) != 1 {
					t.Fatalf("leftovers next to the guest workspace: %v", ents)
				}
			})
		}
	}
}

func TestDepthBranchAndFrom(t *testing.T) {
	e := newEnv(t)
	repo := fixture(t, e, false)
	ctx := context.Background()

	t.Run("depth", func(t *testing.T) {
		snap, err := Inspect(ctx, e.runner(), repo, Options{Depth: 2, Branch: "feature/x"})
		if err != nil {
			t.Fatal(err)
		}
		guest := filepath.Join(e.home, "depth")
		if _, err := Prepare(ctx, e.remote(), snap, guest); err != nil {
			t.Fatal(err)
		}
		if g, h := e.git(guest, "log", "--format=%H"), e.git(repo, "log", "--format=%H"); g != h {
			t.Fatalf("guest log %q, want %q", g, h)
		}
		// Two commits are the whole history here: not shallow.
		if got := strings.TrimSpace(e.git(guest, "rev-parse", "--is-shallow-repository")); got != "false" {
			t.Fatalf("is-shallow = %s", got)
		}
		if got := strings.TrimSpace(e.git(guest, "symbolic-ref", "HEAD")); got != "refs/heads/feature/x" {
			t.Fatalf("guest branch %s", got)
		}
		e.git(guest, "fsck", "--no-progress")
		e.git(guest, "log", "-p")
	})

	t.Run("from", func(t *testing.T) {
		snap, err := Inspect(ctx, e.runner(), repo, Options{From: "HEAD~1"})
		if err != nil {
			t.Fatal(err)
		}
		first := strings.TrimSpace(e.git(repo, "rev-parse", "HEAD~1"))
		if snap.Head != first || snap.Branch != "" {
			t.Fatalf("head %s branch %q, want %s detached", snap.Head, snap.Branch, first)
		}
		guest := filepath.Join(e.home, "from")
		if _, err := Prepare(ctx, e.remote(), snap, guest); err != nil {
			t.Fatal(err)
		}
		clone := filepath.Join(t.TempDir(), "clone")
		e.git("", "clone", "-q", "--no-checkout", repo, clone)
		e.git(clone, "checkout", "-q", first)
		if d := diffTrees(tree(t, clone), tree(t, guest)); d != "" {
			t.Fatalf("guest differs from a checkout of %s:\n%s", first, d)
		}
		if s := e.git(guest, "status", "--porcelain"); s != "" {
			t.Fatalf("guest status not clean: %q", s)
		}
		if got := strings.TrimSpace(e.git(guest, "rev-parse", "HEAD")); got != first {
			t.Fatalf("guest HEAD %s", got)
		}
		if _, err := e.gitErr(guest, "symbolic-ref", "-q", "HEAD"); err == nil {
			t.Fatal("guest HEAD should be detached")
		}
		e.git(guest, "fsck", "--no-progress")

		// A branch name keeps its name in the guest.
		snap, err = Inspect(ctx, e.runner(), repo, Options{From: "main"})
		if err != nil || snap.Branch != "main" {
			t.Fatalf("from main: branch %q, %v", snap.Branch, err)
		}
	})

	t.Run("bad options", func(t *testing.T) {
		for _, o := range []Options{
			{From: "no-such-ref"},
			{From: "--output=x"},
			{From: "HEAD", IncludeUntracked: true},
			{Branch: "bad..name"},
			{Branch: "-x"},
			{Depth: -1},
		} {
			if _, err := Inspect(ctx, e.runner(), repo, o); !errors.Is(err, ErrInvalidOptions) {
				t.Errorf("%+v: want ErrInvalidOptions, got %v", o, err)
			}
		}
	})
}

func TestUnbornAndSHA256(t *testing.T) { modes(t, testUnbornAndSHA256) }

func testUnbornAndSHA256(t *testing.T, native bool) {
	e := newEnv(t)
	e.native = native
	ctx := context.Background()
	for _, format := range []string{"sha1", "sha256"} {
		t.Run(format, func(t *testing.T) {
			repo := t.TempDir()
			e.git(repo, "init", "-q", "--object-format="+format)
			write(t, repo, "a.txt", []byte("a\n"), 0o644)
			write(t, repo, "ita.txt", []byte("intent to add\n"), 0o644)
			write(t, repo, "empty", nil, 0o644)
			e.git(repo, "add", "a.txt", "empty")
			// Unborn: no commit yet.
			snap, err := Inspect(ctx, e.runner(), repo, Options{IncludeUntracked: true})
			if err != nil {
				t.Fatal(err)
			}
			if snap.Head != "" || snap.ObjectFormat != format {
				t.Fatalf("head %q format %q", snap.Head, snap.ObjectFormat)
			}
			guest := filepath.Join(e.home, format+"-unborn")
			if _, err := Prepare(ctx, e.remote(), snap, guest); err != nil {
				t.Fatal(err)
			}
			if g, h := e.git(guest, "status", "--porcelain", "-uall"), e.git(repo, "status", "--porcelain", "-uall"); g != h {
				t.Fatalf("guest status %q, host %q", g, h)
			}
			// Nothing changed in the guest: an empty patch; then only the
			// guest's change.
			var patch bytes.Buffer
			if err := Export(ctx, e.remote(), guest, "", &patch); err != nil {
				t.Fatal(err)
			}
			if patch.Len() != 0 {
				t.Fatalf("patch of an untouched unborn workspace:\n%s", patch.String())
			}
			write(t, guest, "a.txt", []byte("a\nfrom guest\n"), 0o644)
			if err := Export(ctx, e.remote(), guest, "", &patch); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(patch.String(), "b/a.txt") || strings.Contains(patch.String(), "b/ita.txt") || strings.Contains(patch.String(), "b/empty") {
				t.Fatalf("patch of an unborn repo: want only a.txt:\n%s", patch.String())
			}

			e.git(repo, "commit", "-q", "-m", "one")
			e.git(repo, "add", "-N", "ita.txt")
			snap, err = Inspect(ctx, e.runner(), repo, Options{})
			if err != nil {
				t.Fatal(err)
			}
			guest = filepath.Join(e.home, format)
			if _, err := Prepare(ctx, e.remote(), snap, guest); err != nil {
				t.Fatal(err)
			}
			e.git(guest, "fsck", "--no-progress")
			if g, h := e.git(guest, "diff", "HEAD", "--stat"), e.git(repo, "diff", "HEAD", "--stat"); g != h {
				t.Fatalf("guest diff HEAD %q, host %q", g, h)
			}
		})
	}
}

func TestRefusals(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()

	t.Run("not a repository", func(t *testing.T) {
		dir := t.TempDir()
		_, err := Inspect(ctx, e.runner(), dir, Options{})
		if !errors.Is(err, ErrNotGitRepo) || !strings.Contains(err.Error(), "run git init or pass a repository path") {
			t.Fatalf("got %v", err)
		}
		_, err = Inspect(ctx, e.runner(), filepath.Join(dir, "missing"), Options{})
		if err == nil || !strings.Contains(err.Error(), "does not exist") {
			t.Fatalf("missing dir: got %v", err)
		}
		repo := t.TempDir()
		e.git(repo, "init", "-q")
		_, err = Inspect(ctx, e.runner(), filepath.Join(repo, ".git"), Options{})
		if !errors.Is(err, ErrNotGitRepo) {
			t.Fatalf(".git dir: got %v", err)
		}
	})

	t.Run("submodules", func(t *testing.T) {
		sub := t.TempDir()
		e.git(sub, "init", "-q")
		write(t, sub, "x", []byte("x"), 0o644)
		e.git(sub, "add", "x")
		e.git(sub, "commit", "-q", "-m", "sub")
		repo := t.TempDir()
		e.git(repo, "init", "-q")
		e.git(repo, "submodule", "add", "-q", sub, "libs/sub")
		e.git(repo, "commit", "-q", "-m", "with submodule")
		for _, o := range []Options{{}, {From: "HEAD"}} {
			_, err := Inspect(ctx, e.runner(), repo, o)
			var se *SubmoduleError
			if !errors.Is(err, ErrSubmodules) || !errors.As(err, &se) || len(se.Paths) != 1 || se.Paths[0] != "libs/sub" || !strings.Contains(err.Error(), "libs/sub") {
				t.Fatalf("%+v: got %v", o, err)
			}
		}
		// A gitlink without .gitmodules is refused too.
		repo2 := t.TempDir()
		e.git(repo2, "init", "-q")
		oid := strings.TrimSpace(e.git(sub, "rev-parse", "HEAD"))
		e.git(repo2, "update-index", "--add", "--cacheinfo", "160000,"+oid+",vendor/lib")
		if _, err := Inspect(ctx, e.runner(), repo2, Options{}); !errors.Is(err, ErrSubmodules) || !strings.Contains(err.Error(), "vendor/lib") {
			t.Fatalf("gitlink: got %v", err)
		}
	})

	t.Run("newline names", func(t *testing.T) {
		repo := t.TempDir()
		e.git(repo, "init", "-q")
		write(t, repo, "ok.txt", []byte("ok"), 0o644)
		write(t, repo, "bad\nname", []byte("x"), 0o644)
		// Untracked and not included: only counted.
		snap, err := Inspect(ctx, e.runner(), repo, Options{})
		if err != nil || snap.SkippedCount(SkipUntracked) != 2 {
			t.Fatalf("got %v, %v", err, snap)
		}
		if _, err := Inspect(ctx, e.runner(), repo, Options{IncludeUntracked: true}); !errors.Is(err, ErrUnsupportedName) || !strings.Contains(err.Error(), `"bad\nname"`) {
			t.Fatalf("got %v", err)
		}
		e.git(repo, "add", "-A")
		if _, err := Inspect(ctx, e.runner(), repo, Options{}); !errors.Is(err, ErrUnsupportedName) {
			t.Fatalf("tracked: got %v", err)
		}
	})

	t.Run("nested repository and beyond symlink", func(t *testing.T) {
		repo := t.TempDir()
		e.git(repo, "init", "-q")
		write(t, repo, "d/f.txt", []byte("f"), 0o644)
		e.git(repo, "add", "-A")
		e.git(repo, "commit", "-q", "-m", "x")
		// d becomes a symlink: d/f.txt must not be read through it.
		other := t.TempDir()
		write(t, other, "f.txt", []byte("outside"), 0o644)
		if err := os.RemoveAll(filepath.Join(repo, "d")); err != nil {
			t.Fatal(err)
		}
		symlink(t, repo, "d", other)
		nested := filepath.Join(repo, "nested")
		if err := os.MkdirAll(nested, 0o755); err != nil {
			t.Fatal(err)
		}
		e.git(nested, "init", "-q")
		snap, err := Inspect(ctx, e.runner(), repo, Options{IncludeUntracked: true})
		if err != nil {
			t.Fatal(err)
		}
		if snap.SkippedCount(SkipBeyondSymlink) != 1 || snap.SkippedCount(SkipNestedRepo) != 1 {
			t.Fatalf("skipped: %v", snap.Skipped())
		}
		for _, f := range snap.Files() {
			if f.Path == "d/f.txt" {
				t.Fatal("shipped a file through a symlink")
			}
		}
	})
}

func TestSparseAndSkipWorktree(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	repo := t.TempDir()
	e.git(repo, "init", "-q")
	write(t, repo, "in/x.txt", []byte("in\n"), 0o644)
	write(t, repo, "out/y.txt", []byte("out\n"), 0o644)
	write(t, repo, "kept.txt", []byte("kept\n"), 0o644)
	e.git(repo, "add", "-A")
	e.git(repo, "commit", "-q", "-m", "x")
	// A skip-worktree file still present in the work tree and locally
	// edited (git status hides it): its bytes must travel.
	other := t.TempDir()
	e.git("", "clone", "-q", repo, other)
	e.git(other, "update-index", "--skip-worktree", "kept.txt")
	write(t, other, "kept.txt", []byte("kept, edited locally\n"), 0o644)
	// A sparse checkout: out/ is not in the work tree.
	e.git(repo, "sparse-checkout", "set", "in")

	for i, dir := range []string{repo, other} {
		snap, err := Inspect(ctx, e.runner(), dir, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if want := 1 - i; snap.SkippedCount(SkipSparse) != want {
			t.Fatalf("%s: skipped %v", dir, snap.Skipped())
		}
		guest := filepath.Join(e.home, fmt.Sprintf("sparse-%d", i))
		if _, err := Prepare(ctx, e.remote(), snap, guest); err != nil {
			t.Fatal(err)
		}
		if d := diffTrees(tree(t, dir), tree(t, guest)); d != "" {
			t.Fatalf("%s: guest differs:\n%s", dir, d)
		}
		if g, h := e.git(guest, "status", "--porcelain"), e.git(dir, "status", "--porcelain"); g != h {
			t.Fatalf("%s: status: guest %q host %q", dir, g, h)
		}
		if g, h := e.git(guest, "ls-files", "-t"), e.git(dir, "ls-files", "-t"); g != h {
			t.Fatalf("%s: ls-files -t: guest %q host %q", dir, g, h)
		}
	}
}
