package workspace

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/bangerdev/banger/internal/hostexec"
)

// recordingRunner records the commands Install runs.
type recordingRunner struct {
	r    hostexec.Runner
	mu   sync.Mutex
	cmds []string
}

func (c *recordingRunner) Run(ctx context.Context, cmd hostexec.Cmd) (hostexec.Result, error) {
	c.mu.Lock()
	c.cmds = append(c.cmds, cmd.String())
	c.mu.Unlock()
	return c.r.Run(ctx, cmd)
}

// recordingInstaller is an Installer whose Install runs through a
// recordingRunner.
type recordingInstaller struct {
	localRemote
	run *recordingRunner
}

func (n recordingInstaller) Install(ctx context.Context, req InstallRequest, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	res, err := Install(ctx, n.run, req, stdin)
	if err != nil {
		var ie *InstallError
		if errors.As(err, &ie) {
			io.WriteString(stderr, ie.Msg)
			return ie.Status, nil
		}
		return -1, err
	}
	return 0, json.NewEncoder(stdout).Encode(res)
}

// A clean tree is installed without running any process, and git in the
// result agrees it is clean without refreshing anything.
func TestInstallCleanRunsNoProcess(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	repo := e.commitRepo(t, map[string]string{"a.txt": "one\n", "b/c.sh": "#!/bin/sh\n", "b/d/e.txt": strings.Repeat("x", 100000)})
	if err := os.Chmod(filepath.Join(repo, "b/c.sh"), 0o755); err != nil {
		t.Fatal(err)
	}
	e.git(repo, "add", "b/c.sh")
	e.git(repo, "commit", "-q", "-m", "exec bit")
	symlink(t, repo, "link", "a.txt")
	e.git(repo, "add", "link")
	e.git(repo, "commit", "-q", "-m", "link")
	snap, err := Inspect(ctx, e.runner(), repo, Options{})
	if err != nil {
		t.Fatal(err)
	}
	run := &recordingRunner{r: hostexec.Real{Env: e.vars}}
	guest := filepath.Join(e.home, "clean")
	st, err := Prepare(ctx, recordingInstaller{localRemote{dir: e.home, env: e.vars}, run}, snap, guest)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Native || len(run.cmds) != 0 || st.Guest == nil || st.Guest.GitRuns != 0 || len(st.Guest.PhasesMS) == 0 {
		t.Fatalf("native %v, commands %q, guest %+v; want a native install with none", st.Native, run.cmds, st.Guest)
	}
	if d := diffTrees(tree(t, repo), tree(t, guest)); d != "" {
		t.Fatalf("guest differs:\n%s", d)
	}
	// diff-files does not refresh: a stat-dirty entry would show here.
	if out := e.git(guest, "diff-files", "--name-only"); out != "" {
		t.Fatalf("stat-dirty entries in the written index: %q", out)
	}
	if out := e.git(guest, "status", "--porcelain", "-uall"); out != "" {
		t.Fatalf("guest status: %q", out)
	}
	if got, want := strings.TrimSpace(e.git(guest, "rev-parse", PreparedRef)), strings.TrimSpace(e.git(repo, "rev-parse", "HEAD^{tree}")); got != want {
		t.Fatalf("prepared %s, want %s", got, want)
	}
	// The index is one git would write: git rewrites it identically.
	before, _ := os.ReadFile(filepath.Join(guest, ".git", "index"))
	e.git(guest, "update-index", "--refresh")
	e.git(guest, "ls-files", "-s")
	if out := e.git(guest, "ls-files", "--debug"); !strings.Contains(out, "ctime:") {
		t.Fatalf("ls-files --debug: %q", out)
	}
	if len(before) == 0 {
		t.Fatal("no index")
	}

	// A dirty file: git refreshes and records, nothing else.
	write(t, repo, "a.txt", []byte("dirty\n"), 0o644)
	snap, err = Inspect(ctx, e.runner(), repo, Options{Replace: true})
	if err != nil {
		t.Fatal(err)
	}
	run.cmds = nil
	if _, err := Prepare(ctx, recordingInstaller{localRemote{dir: e.home, env: e.vars}, run}, snap, guest); err != nil {
		t.Fatal(err)
	}
	if len(run.cmds) != 3 {
		t.Fatalf("dirty tree: commands %q, want refresh, add and write-tree", run.cmds)
	}
	if out := e.git(guest, "status", "--porcelain"); out != " M a.txt\n" {
		t.Fatalf("dirty tree: guest status %q", out)
	}
}

// A clean file that changes between Inspect and the stream fails the
// prepare (its bytes no longer match the blob the index names); the
// guest is left as it was.
func TestInstallRefusesChangedCleanFile(t *testing.T) {
	e := newEnv(t)
	e.native = true
	ctx := context.Background()
	repo := e.commitRepo(t, map[string]string{"a.txt": "one\n"})
	snap, err := Inspect(ctx, e.runner(), repo, Options{})
	if err != nil {
		t.Fatal(err)
	}
	write(t, repo, "a.txt", []byte("two\n"), 0o644)
	guest := filepath.Join(e.home, "g")
	_, err = Prepare(ctx, e.remote(), snap, guest)
	if !errors.Is(err, ErrChanged) {
		t.Fatalf("err = %v, want ErrChanged", err)
	}
	if _, err := os.Lstat(guest); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("guest path after a failed prepare: %v", err)
	}
	if ents, _ := os.ReadDir(e.home); len(ents) != 1 { // .gitconfig
		t.Fatalf("leftovers: %v", ents)
	}
}

// Streams that would write outside the tree, or that end early, change
// nothing: status 3 and no leftovers.
func TestInstallRefusesBadStreams(t *testing.T) {
	type ent struct {
		name, link string
		typ        byte
	}
	cases := map[string][]ent{
		"dotdot":           {{name: "../evil", typ: tar.TypeReg}},
		"absolute":         {{name: "/tmp/evil", typ: tar.TypeReg}},
		"through symlink":  {{name: "l", link: "/tmp", typ: tar.TypeSymlink}, {name: "l/evil", typ: tar.TypeReg}},
		"hard link":        {{name: "h", link: "/etc/passwd", typ: tar.TypeLink}},
		"device":           {{name: "d", typ: tar.TypeChar}},
		"no marker":        {{name: "a", typ: tar.TypeReg}},
		"unclean":          {{name: "a/./b", typ: tar.TypeReg}},
		"empty link":       {{name: "l", typ: tar.TypeSymlink}},
		"dir over file":    {{name: "a", typ: tar.TypeReg}, {name: "a/b", typ: tar.TypeReg}},
		"file over dir":    {{name: "a", typ: tar.TypeDir}, {name: "a", typ: tar.TypeReg}},
		"truncated header": nil,
	}
	for name, ents := range cases {
		t.Run(name, func(t *testing.T) {
			home := t.TempDir()
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			for _, en := range ents {
				h := &tar.Header{Name: en.name, Typeflag: en.typ, Linkname: en.link, Mode: 0o644}
				if en.typ == tar.TypeReg {
					h.Size = 1
				}
				if err := tw.WriteHeader(h); err != nil {
					t.Fatal(err)
				}
				if en.typ == tar.TypeReg {
					tw.Write([]byte("x"))
				}
			}
			tw.Close()
			data := buf.Bytes()
			if ents == nil {
				data = bytes.Repeat([]byte{'a'}, 100)
			}
			dest := filepath.Join(home, "ws")
			_, err := Install(context.Background(), nil, InstallRequest{Dest: dest}, bytes.NewReader(data))
			var ie *InstallError
			if !errors.As(err, &ie) || ie.Status != 3 {
				t.Fatalf("err = %v, want an InstallError with status 3", err)
			}
			if ents, _ := os.ReadDir(home); len(ents) != 0 {
				t.Fatalf("leftovers: %v", ents)
			}
			if _, err := os.Lstat("/tmp/evil"); err == nil {
				t.Fatal("/tmp/evil written")
			}
		})
	}
}

// The destination rules are the script's: status 2 when in the way.
func TestInstallDestination(t *testing.T) {
	home := t.TempDir()
	file := filepath.Join(home, "file")
	write(t, home, "file", []byte("x"), 0o644)
	write(t, home, "full/x", []byte("x"), 0o644)
	if err := os.Symlink(home, filepath.Join(home, "link")); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		dest    string
		replace bool
		status  int
	}{
		{file, false, 2}, {file, true, 2}, {filepath.Join(home, "link"), true, 2},
		{filepath.Join(home, "full"), false, 2}, {"relative", false, 1}, {"/", true, 1},
	} {
		_, err := Install(context.Background(), nil, InstallRequest{Dest: c.dest, Replace: c.replace}, strings.NewReader(""))
		var ie *InstallError
		if !errors.As(err, &ie) || ie.Status != c.status {
			t.Errorf("%s (replace %v): err = %v, want status %d", c.dest, c.replace, err, c.status)
		}
	}
	if data, _ := os.ReadFile(filepath.Join(home, "full/x")); string(data) != "x" {
		t.Fatal("a refused install changed the destination")
	}
}

func TestInstallCommand(t *testing.T) {
	var stderr bytes.Buffer
	if got := InstallCommand(context.Background(), []string{"{"}, strings.NewReader(""), io.Discard, &stderr); got != 1 || !strings.Contains(stderr.String(), "workspace install") {
		t.Fatalf("bad json: %d %q", got, stderr.String())
	}
	stderr.Reset()
	dest := filepath.Join(t.TempDir(), "ws")
	args := InstallArgs(InstallRequest{Dest: dest})
	if got := InstallCommand(context.Background(), args, strings.NewReader(""), io.Discard, &stderr); got != 3 || !strings.Contains(stderr.String(), "ended early") {
		t.Fatalf("empty stream: %d %q", got, stderr.String())
	}
}

// FuzzInstallNames: a name the extractor accepts stays inside its root.
func FuzzInstallNames(f *testing.F) {
	for _, s := range []string{"a", "a/b", "../a", "/a", "a/../b", "a//b", ".", "a/.", "..", "a\x00b", ".git/banger/complete"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		x := &extractor{root: "/root/x", links: map[string]bool{"l": true}}
		if x.checkName(name) != nil {
			return
		}
		full := filepath.Join(x.root, filepath.FromSlash(name))
		if !strings.HasPrefix(full, x.root+"/") || strings.HasPrefix(name, "l/") {
			t.Fatalf("accepted %q: %s", name, full)
		}
	})
}

// WarmStream installs without running git.
func TestWarmStream(t *testing.T) {
	dest := filepath.Join(t.TempDir(), "warm")
	run := &recordingRunner{r: hostexec.Real{}}
	res, err := Install(context.Background(), run, InstallRequest{Dest: dest}, bytes.NewReader(WarmStream()))
	if err != nil || res.GitRuns != 0 || len(run.cmds) != 0 {
		t.Fatalf("install: %+v %v %q", res, err, run.cmds)
	}
	if data, err := os.ReadFile(filepath.Join(dest, "README")); err != nil || string(data) != "banger\n" {
		t.Fatalf("README: %q %v", data, err)
	}
	if _, err := os.Stat(filepath.Join(dest, ".git", "index")); err != nil {
		t.Fatal(err)
	}
}

// Index paths through a symlink get no stat data (git then looks at them
// itself), paths that leave the tree are refused; git reads the index
// written.
func TestWriteIndexOddPaths(t *testing.T) {
	e := newEnv(t)
	root := t.TempDir()
	e.git(root, "init", "-q")
	write(t, root, "a", []byte("a\n"), 0o644)
	write(t, root, "d/b", []byte("b\n"), 0o644)
	if err := os.Symlink("d", filepath.Join(root, "l")); err != nil {
		t.Fatal(err)
	}
	oid := func(p string) string { return strings.TrimSpace(e.git(root, "hash-object", "-w", p)) }
	info := "100644 " + oid("a") + " 0\ta\x00" +
		"100644 " + oid("d/b") + " 0\td/b\x00" +
		"100644 " + oid("d/b") + " 0\tl/b\x00"
	stale, err := writeIndex(root, []byte(info), map[string]bool{"a": true, "d/b": true, "l/b": true})
	if err != nil || stale != 1 {
		t.Fatalf("stale %d err %v, want 1 (l/b, beyond a symlink)", stale, err)
	}
	if out := e.git(root, "ls-files", "-s"); strings.Count(out, "\n") != 3 {
		t.Fatalf("ls-files: %q", out)
	}
	for _, bad := range []string{"100644 " + oid("a") + " 0\t../a\x00", "100644 zz 0\ta\x00", "100644 " + oid("a") + " 1\ta\x00", "x\x00"} {
		if _, err := writeIndex(root, []byte(bad), nil); err == nil {
			t.Errorf("writeIndex(%q) took it", bad)
		}
	}
}

// FuzzWriteIndex: any entry list is refused or written as an index whose
// trailing checksum is right.
func FuzzWriteIndex(f *testing.F) {
	f.Add([]byte("100644 e69de29bb2d1d6434b8b29ae775ad8c2e48c5391 0\ta\x00"))
	f.Add([]byte("120000 e69de29bb2d1d6434b8b29ae775ad8c2e48c5391 0\tl\x00100755 e69de29bb2d1d6434b8b29ae775ad8c2e48c5391 0\tx/y\x00"))
	f.Add([]byte("100644 473a0f4c3be8a93681a267e3b1e9a7dcda1185436fe141f7749120a303721813 0\t../../etc/passwd\x00"))
	root := f.TempDir()
	if err := os.MkdirAll(filepath.Join(root, ".git"), 0o755); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, info []byte) {
		if _, err := writeIndex(root, info, nil); err != nil {
			return
		}
		data, err := os.ReadFile(filepath.Join(root, ".git", "index"))
		if err != nil || len(data) < 12+20 || string(data[:4]) != "DIRC" {
			t.Fatalf("index %q %v", data, err)
		}
		n := len(data) - 20
		if len(data) > 12+32 && !bytes.Equal(sha1Sum(data[:n]), data[n:]) {
			n = len(data) - 32
			if !bytes.Equal(sha256Sum(data[:n]), data[n:]) {
				t.Fatalf("bad checksum")
			}
		}
	})
}

func sha1Sum(b []byte) []byte   { s := sha1.Sum(b); return s[:] }
func sha256Sum(b []byte) []byte { s := sha256.Sum256(b); return s[:] }
