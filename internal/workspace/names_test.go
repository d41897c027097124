package workspace

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/hostexec"
)

// oddNames are names that break naive tar/shell/git plumbing.
var oddNames = []string{
	"-rf",
	"--help",
	"*",
	"$(touch pwned)",
	"`id`",
	`it's "quoted"`,
	`back\slash`,
	"tab\there",
	"cr\rhere",
	"trailing space ",
	" leading space",
	"emoji 🚀.txt",
	"invalid-utf8-\xff\xfe",
	"latin1-caf\xe9",
	"...",
	".gitx",
	"x.git",
	".GIT",
	strings.Repeat("long", 25) + "/" + strings.Repeat("n", 120) + ".txt",
	strings.Repeat("c", 255),
	"a/" + strings.Repeat("d", 200) + "/" + strings.Repeat("e", 200),
}

func TestOddNamesRoundTrip(t *testing.T) { modes(t, testOddNamesRoundTrip) }

func testOddNamesRoundTrip(t *testing.T, native bool) {
	e := newEnv(t)
	e.native = native
	ctx := context.Background()
	repo := t.TempDir()
	e.git(repo, "init", "-q")
	for i, n := range oddNames {
		write(t, repo, n, []byte(n), 0o644)
		if i%2 == 0 {
			e.git(repo, "add", "--", n)
		}
	}
	symlink(t, repo, "link to odd", oddNames[12])
	e.git(repo, "add", "--", "link to odd")
	e.git(repo, "commit", "-q", "-m", "odd names")
	snap, err := Inspect(ctx, e.runner(), repo, Options{IncludeUntracked: true})
	if err != nil {
		t.Fatal(err)
	}
	guest := filepath.Join(e.home, "odd")
	if _, err := Prepare(ctx, e.remote(), snap, guest); err != nil {
		t.Fatal(err)
	}
	if d := diffTrees(tree(t, repo), tree(t, guest)); d != "" {
		t.Fatalf("guest differs:\n%s", d)
	}
	if g, h := e.git(guest, "status", "--porcelain", "-z", "-uall"), e.git(repo, "status", "--porcelain", "-z", "-uall"); g != h {
		t.Fatalf("status differs:\nguest %q\nhost  %q", g, h)
	}
	// From a commit, too.
	snap, err = Inspect(ctx, e.runner(), repo, Options{From: "HEAD"})
	if err != nil {
		t.Fatal(err)
	}
	guest2 := filepath.Join(e.home, "odd-from")
	if _, err := Prepare(ctx, e.remote(), snap, guest2); err != nil {
		t.Fatal(err)
	}
	if s := e.git(guest2, "status", "--porcelain", "-uall"); s != "" {
		t.Fatalf("from HEAD: guest not clean: %q", s)
	}
}

// TestInspectCommands pins the exact git command lines Inspect runs.
func TestInspectCommands(t *testing.T) {
	repo := t.TempDir()
	head := strings.Repeat("a", 40)
	rec := &hostexec.Recorder{Respond: func(c hostexec.Cmd) (hostexec.Result, error) {
		line := c.String()
		switch {
		case strings.HasSuffix(line, "rev-parse --show-toplevel"):
			return hostexec.Result{Stdout: []byte(repo + "\n")}, nil
		case strings.Contains(line, "--show-object-format"):
			return hostexec.Result{Stdout: []byte("sha1\n.git/objects\n.git/info/exclude\n.git/shallow\n.git/info/attributes\n")}, nil
		case strings.Contains(line, " status "):
			return hostexec.Result{Stdout: []byte(" M missing.txt\x00")}, nil
		case strings.Contains(line, "HEAD^{commit}"):
			return hostexec.Result{Stdout: []byte(head + "\n")}, nil
		case strings.Contains(line, "symbolic-ref"):
			return hostexec.Result{Stdout: []byte("refs/heads/dev\n")}, nil
		case strings.Contains(line, "ls-files -z -s -t"):
			return hostexec.Result{Stdout: []byte("H 100644 " + head + " 0\tmissing.txt\x00")}, nil
		case strings.Contains(line, "ls-files -z -o"):
			return hostexec.Result{Stdout: []byte("u1\x00u2\x00")}, nil
		case strings.Contains(line, "config -z --get-regexp"):
			return hostexec.Result{Stdout: []byte("core.filemode\ntrue\x00core.autocrlf\n$(evil)\x00")}, nil
		}
		return hostexec.Result{}, nil
	}}
	snap, err := Inspect(context.Background(), rec, repo, Options{Branch: "topic"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"git -C " + repo + " rev-parse --show-toplevel",
		"git -C " + repo + " rev-parse --show-object-format --git-path objects --git-path info/exclude --git-path shallow --git-path info/attributes",
		"git -C " + repo + " rev-parse --verify -q 'HEAD^{commit}'",
		"git -C " + repo + " symbolic-ref -q HEAD",
		"git check-ref-format refs/heads/topic",
		"git -C " + repo + " config -z --get-regexp '^core\\.(autocrlf|eol|filemode|symlinks|ignorecase)$'",
		"git -C " + repo + " status --porcelain=v1 -z --untracked-files=no --no-renames --ignore-submodules=none",
		"git -C " + repo + " ls-files -z -s -t",
		"git -C " + repo + " ls-files -z -o --exclude-standard",
	}
	got := rec.Lines()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("commands:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if snap.Head != head || snap.HostBranch != "dev" || snap.Branch != "topic" {
		t.Fatalf("snapshot %+v", snap)
	}
	if snap.SkippedCount(SkipDeleted) != 1 || snap.SkippedCount(SkipUntracked) != 2 || len(snap.Files()) != 0 {
		t.Fatalf("skipped %v files %v", snap.Skipped(), snap.Files())
	}
	// Unsafe config values are dropped, safe ones kept.
	if len(snap.config) != 1 || snap.config[0] != (configItem{"core.filemode", "true"}) {
		t.Fatalf("config %v", snap.config)
	}

	// git missing on the host.
	missing := &hostexec.Recorder{Respond: func(hostexec.Cmd) (hostexec.Result, error) {
		return hostexec.Result{}, hostexec.ErrNotFound
	}}
	if _, err := Inspect(context.Background(), missing, repo, Options{}); !errors.Is(err, hostexec.ErrNotFound) || !strings.Contains(err.Error(), "install git") {
		t.Fatalf("got %v", err)
	}
}

func FuzzValidPath(f *testing.F) {
	for _, n := range oddNames {
		f.Add(n)
	}
	for _, n := range []string{"", ".", "..", "a/../b", "/abs", "a//b", "a/", ".git", "x/.git/y", "a\nb", "a\x00b", "ok/file.txt"} {
		f.Add(n)
	}
	f.Fuzz(func(t *testing.T, name string) {
		err := validPath(name)
		// The rule, stated independently.
		bad := name == "" || strings.ContainsAny(name, "\x00\n") || strings.HasPrefix(name, "/")
		for _, c := range strings.Split(name, "/") {
			if c == "" || c == "." || c == ".." || c == ".git" {
				bad = true
			}
		}
		if bad != (err != nil) {
			t.Fatalf("validPath(%q) = %v, rule says bad=%v", name, err, bad)
		}
		if err != nil {
			if cerr := checkName(name); !errors.Is(cerr, ErrUnsupportedName) {
				t.Fatalf("checkName(%q) = %v", name, cerr)
			}
			return
		}
		if !filepath.IsLocal(name) {
			t.Fatalf("accepted non-local %q", name)
		}
		// Every accepted name survives the tar writer and reader exactly,
		// as a file and as a symlink target.
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		hdrs := []*tar.Header{
			{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(name)), ModTime: time.Unix(1, 0)},
			{Typeflag: tar.TypeSymlink, Name: name + "-link", Linkname: name, Mode: 0o777, ModTime: time.Unix(1, 0)},
		}
		if err := tw.WriteHeader(hdrs[0]); err != nil {
			t.Fatalf("write %q: %v", name, err)
		}
		tw.Write([]byte(name))
		if err := tw.WriteHeader(hdrs[1]); err != nil {
			t.Fatalf("write link %q: %v", name, err)
		}
		if err := tw.Close(); err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(&buf)
		h, err := tr.Next()
		if err != nil || h.Name != name || h.Size != int64(len(name)) {
			t.Fatalf("read %q: %v %+v", name, err, h)
		}
		data, _ := io.ReadAll(tr)
		if string(data) != name {
			t.Fatalf("content of %q: %q", name, data)
		}
		h, err = tr.Next()
		if err != nil || h.Name != name+"-link" || h.Linkname != name || h.Typeflag != tar.TypeSymlink {
			t.Fatalf("read link %q: %v %+v", name, err, h)
		}
		if _, err := tr.Next(); err != io.EOF {
			t.Fatalf("trailing entries: %v", err)
		}
	})
}

func FuzzParseLsFiles(f *testing.F) {
	oid := strings.Repeat("0123456789", 4)
	f.Add("H 100644 " + oid + " 0\tpath\x00")
	f.Add("S 100755 " + oid + " 2\ta b\tc\x00M 120000 " + oid + " 1\tl\x00")
	f.Add("garbage\x00")
	f.Fuzz(func(t *testing.T, out string) {
		entries, err := parseLsFiles(out)
		if err != nil {
			return
		}
		// Whatever parses re-serialises to the same records.
		var b strings.Builder
		for _, e := range entries {
			tag := "H"
			if e.skipWorktree {
				tag = "S"
			}
			if !isOctal(e.mode) || !isHex(e.oid) || e.path == "" {
				t.Fatalf("accepted %+v", e)
			}
			b.WriteString(tag + " " + e.mode + " " + e.oid + " " + e.stage + "\t" + e.path + "\x00")
		}
		again, err := parseLsFiles(b.String())
		if err != nil || len(again) != len(entries) {
			t.Fatalf("reparse: %v %d/%d", err, len(again), len(entries))
		}
		for i := range again {
			if again[i] != entries[i] {
				t.Fatalf("reparse %d: %+v != %+v", i, again[i], entries[i])
			}
		}
	})
}

func FuzzParseStatusAndAttrs(f *testing.F) {
	f.Add(" M a\x00MM b c\x00UU conflict\x00A  new\x00")
	f.Add("a\x00text\x00auto\x00a\x00eol\x00crlf\x00")
	f.Add("x")
	f.Fuzz(func(t *testing.T, out string) {
		if dirty, err := parseStatus(out); err == nil {
			for p := range dirty {
				if !strings.Contains(out, p) {
					t.Fatalf("dirty path %q not in input", p)
				}
			}
		}
		if attrs, err := parseCheckAttr(out); err == nil {
			n := 0
			for _, a := range attrs {
				n += len(a)
			}
			if n > len(splitZ(out))/3 {
				t.Fatalf("%d attributes from %d records", n, len(splitZ(out)))
			}
		}
	})
}

func TestParseStatus(t *testing.T) {
	got, err := parseStatus(" M wt\x00M  staged\x00MM both\x00UU conflict\x00AA added-both\x00 A ita\x00D  rm\x00 T type\x00")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"wt": true, "both": true, "conflict": true, "added-both": true, "ita": true, "type": true}
	if len(got) != len(want) {
		t.Fatalf("got %v", got)
	}
	for p := range want {
		if !got[p] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
	if _, err := parseStatus("garbage"); err == nil {
		t.Fatal("accepted garbage")
	}
}
