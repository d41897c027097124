package workspace

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/testreq"
)

// env is an isolated git environment: its own HOME and global config, no
// system config, fixed identity and dates.
type env struct {
	t    testing.TB
	home string
	vars []string
	// native makes remote an Installer (Install run in-process, like the
	// guest agent), so Prepare sends the snapshots that suit it to Install
	// instead of GuestScript.
	native bool
}

// modes runs f as two subtests: with the script ("script") and with an
// Installer remote ("native").
func modes(t *testing.T, f func(t *testing.T, native bool)) {
	t.Run("script", func(t *testing.T) { f(t, false) })
	t.Run("native", func(t *testing.T) { f(t, true) })
}

// nativeRemote is localRemote that installs workspaces itself, through
// InstallCommand as the agent does.
type nativeRemote struct{ localRemote }

func (n nativeRemote) Install(ctx context.Context, req InstallRequest, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	res, err := Install(ctx, hostexec.Real{Env: n.env}, req, stdin)
	var ie *InstallError
	switch {
	case err == nil:
		return 0, json.NewEncoder(stdout).Encode(res)
	case errors.As(err, &ie):
		fmt.Fprintln(stderr, ie.Msg)
		return ie.Status, nil
	}
	return -1, err
}

func newEnv(t testing.TB) *env {
	t.Helper()
	testreq.Tools(t, "git", "tar", "sh", "find", "mktemp")
	home := t.TempDir()
	cfg := "[user]\n\tname = Test\n\temail = test@example.com\n[init]\n\tdefaultBranch = main\n[protocol \"file\"]\n\tallow = always\n[advice]\n\tdetachedHead = false\n"
	if err := os.WriteFile(filepath.Join(home, ".gitconfig"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	vars := []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + home,
		"GIT_CONFIG_NOSYSTEM=1",
		"GIT_CONFIG_GLOBAL=" + filepath.Join(home, ".gitconfig"),
		"GIT_AUTHOR_DATE=2024-01-02T03:04:05Z",
		"GIT_COMMITTER_DATE=2024-01-02T03:04:05Z",
		"LC_ALL=C",
		"TMPDIR=" + os.TempDir(),
	}
	return &env{t: t, home: home, vars: vars}
}

func (e *env) runner() hostexec.Runner { return hostexec.Real{Env: e.vars} }

// remote is a "guest" that is the local machine: it runs the command with
// sh -c in the env's home, like ssh would in the guest's home.
func (e *env) remote() Remote {
	if e.native {
		return nativeRemote{localRemote{dir: e.home, env: e.vars}}
	}
	return localRemote{dir: e.home, env: e.vars}
}

type localRemote struct {
	dir string
	env []string
}

func (l localRemote) Run(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	c := exec.CommandContext(ctx, "sh", "-c", cmd)
	c.Dir, c.Env, c.Stdin, c.Stdout, c.Stderr = l.dir, l.env, stdin, stdout, stderr
	err := c.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), nil
	}
	if err != nil {
		return -1, err
	}
	return 0, nil
}

// git runs git in dir and returns stdout; it fails the test on error.
// commitRepo makes a repository holding files (path -> content, mode
// 0644) in one commit.
func (e *env) commitRepo(t testing.TB, files map[string]string) string {
	t.Helper()
	repo := t.TempDir()
	e.git(repo, "init", "-q")
	for p, data := range files {
		write(t, repo, p, []byte(data), 0o644)
	}
	e.git(repo, "add", "-A")
	e.git(repo, "commit", "-q", "-m", "one")
	return repo
}

func (e *env) git(dir string, args ...string) string {
	e.t.Helper()
	out, err := e.gitErr(dir, args...)
	if err != nil {
		e.t.Fatalf("git %s: %v", strings.Join(args, " "), err)
	}
	return out
}

func (e *env) gitErr(dir string, args ...string) (string, error) {
	c := exec.Command("git", args...)
	c.Dir, c.Env = dir, e.vars
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%w: %s", err, stderr.String())
	}
	return stdout.String(), nil
}

func (e *env) sh(dir, script string) string {
	e.t.Helper()
	c := exec.Command("sh", "-c", script)
	c.Dir, c.Env = dir, e.vars
	out, err := c.CombinedOutput()
	if err != nil {
		e.t.Fatalf("sh %q: %v: %s", script, err, out)
	}
	return string(out)
}

func write(t testing.TB, root, rel string, data []byte, mode fs.FileMode) {
	t.Helper()
	p := filepath.Join(root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

func symlink(t testing.TB, root, rel, target string) {
	t.Helper()
	p := filepath.Join(root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
}

func randomBytes(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

// entry is what fidelity compares for one path.
type entry struct {
	Kind   string // file, symlink
	Mode   fs.FileMode
	SHA256 string
	Target string
}

func (e entry) String() string {
	if e.Kind == "symlink" {
		return "symlink -> " + e.Target
	}
	return fmt.Sprintf("%s %o %s", e.Kind, e.Mode, e.SHA256[:12])
}

// tree returns every file and symlink under root except .git, keyed by
// slash-separated relative path.
func tree(t testing.TB, root string) map[string]entry {
	t.Helper()
	out := map[string]entry{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		if rel == ".git" {
			return filepath.SkipDir
		}
		if d.IsDir() {
			return nil
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			out[rel] = entry{Kind: "symlink", Target: target}
		case fi.Mode().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(data)
			out[rel] = entry{Kind: "file", Mode: permBits(fi.Mode()), SHA256: hex.EncodeToString(sum[:])}
		default:
			out[rel] = entry{Kind: "other"}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// diffTrees describes how got differs from want ("" = identical).
func diffTrees(want, got map[string]entry) string {
	var keys []string
	seen := map[string]bool{}
	for k := range want {
		keys, seen[k] = append(keys, k), true
	}
	for k := range got {
		if !seen[k] {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		w, wok := want[k]
		g, gok := got[k]
		switch {
		case !gok:
			fmt.Fprintf(&b, "missing %q (%v)\n", k, w)
		case !wok:
			fmt.Fprintf(&b, "extra %q (%v)\n", k, g)
		case w != g:
			fmt.Fprintf(&b, "%q: want %v, got %v\n", k, w, g)
		}
	}
	return b.String()
}

func keep(m map[string]entry, pred func(string) bool) map[string]entry {
	out := map[string]entry{}
	for k, v := range m {
		if pred(k) {
			out[k] = v
		}
	}
	return out
}
