// Package workspacebench makes the repositories the workspace copy is
// benchmarked on, so the local benchmark (internal/workspace) and the
// in-guest one (test/e2e) measure the same corpora:
//
//   - Mixed: ~200 MB, half source-like text in 2000 files, half
//     incompressible binaries in 20 files, one commit, loose objects (as
//     after a first `git add`), plus two uncommitted edits;
//   - Source: a copy of the Go distribution's src tree (~11k files of real
//     source and test data), one commit, packed (as a clone is).
//
// Each is generated once into a cache directory and reused.
package workspacebench

import (
	"bytes"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// Corpus is a named benchmark repository maker.
type Corpus struct {
	Name string
	Make func(tb testing.TB, cacheDir string) string
}

// Corpora are the repositories the workspace copy must be fast on.
func Corpora() []Corpus {
	return []Corpus{{"mixed", Mixed}, {"source", Source}}
}

// git runs git in dir with a neutral configuration and fixed identity.
func git(tb testing.TB, dir string, args ...string) {
	tb.Helper()
	c := exec.Command("git", args...)
	c.Dir = dir
	c.Env = append(os.Environ(), "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null",
		"GIT_AUTHOR_NAME=bench", "GIT_AUTHOR_EMAIL=bench@example.com",
		"GIT_COMMITTER_NAME=bench", "GIT_COMMITTER_EMAIL=bench@example.com",
		"GIT_AUTHOR_DATE=2024-01-02T03:04:05Z", "GIT_COMMITTER_DATE=2024-01-02T03:04:05Z")
	var stderr bytes.Buffer
	c.Stderr = &stderr
	if err := c.Run(); err != nil {
		tb.Fatalf("git %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
}

func write(tb testing.TB, root, rel string, data []byte) {
	tb.Helper()
	p := filepath.Join(root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		tb.Fatal(err)
	}
}

func randomBytes(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

// cached returns dir/name when a complete copy is there, else builds it
// with fill into a temporary sibling and renames it into place.
func cached(tb testing.TB, cacheDir, name string, fill func(tmp string)) string {
	tb.Helper()
	dir := filepath.Join(cacheDir, name)
	if _, err := os.Stat(filepath.Join(dir, ".git", "banger-bench-complete")); err == nil {
		return dir
	}
	_ = os.RemoveAll(dir)
	tmp := dir + ".tmp"
	_ = os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		tb.Fatal(err)
	}
	fill(tmp)
	write(tb, tmp, ".git/banger-bench-complete", nil)
	if err := os.Rename(tmp, dir); err != nil {
		tb.Fatal(err)
	}
	return dir
}

// Mixed returns the mixed repository (see the package comment).
func Mixed(tb testing.TB, cacheDir string) string {
	tb.Helper()
	return cached(tb, cacheDir, "repo-200m-v1", func(tmp string) {
		git(tb, tmp, "init", "-q")
		git(tb, tmp, "config", "gc.auto", "0") // stays loose, as after a first `git add`
		rng := rand.New(rand.NewSource(42))
		words := make([]string, 4000)
		for i := range words {
			w := make([]byte, 2+rng.Intn(9))
			for j := range w {
				w[j] = byte('a' + rng.Intn(26))
			}
			words[i] = string(w)
		}
		for d := 0; d < 40; d++ {
			for f := 0; f < 50; f++ {
				var sb strings.Builder
				for sb.Len() < 50_000 {
					sb.WriteString("\t")
					for k := 0; k < 8; k++ {
						sb.WriteString(words[rng.Intn(len(words))])
						sb.WriteByte(' ')
					}
					sb.WriteString(";\n")
				}
				write(tb, tmp, fmt.Sprintf("src/pkg%02d/file%02d.go", d, f), []byte(sb.String()))
			}
		}
		for i := 0; i < 20; i++ {
			write(tb, tmp, fmt.Sprintf("assets/blob%02d.bin", i), randomBytes(int64(i), 5<<20))
		}
		git(tb, tmp, "add", "-A")
		git(tb, tmp, "commit", "-q", "-m", "bench")
		write(tb, tmp, "src/pkg00/file00.go", []byte("package changed\n"))
		write(tb, tmp, "assets/blob00.bin", randomBytes(99, 5<<20))
	})
}

// Source returns the source repository (see the package comment); it
// skips tb when the Go source tree is not installed.
func Source(tb testing.TB, cacheDir string) string {
	tb.Helper()
	src := filepath.Join(runtime.GOROOT(), "src")
	if _, err := os.Stat(src); err != nil {
		tb.Skipf("no Go source tree at %s", src)
	}
	return cached(tb, cacheDir, "repo-gosrc-"+runtime.Version(), func(tmp string) {
		c := exec.Command("cp", "-a", src+"/.", tmp)
		if out, err := c.CombinedOutput(); err != nil {
			tb.Fatalf("copy %s: %v: %s", src, err, out)
		}
		git(tb, tmp, "init", "-q")
		git(tb, tmp, "config", "gc.auto", "0")
		git(tb, tmp, "add", "-A")
		git(tb, tmp, "commit", "-q", "-m", "bench")
		// Packed, as a cloned repository is.
		git(tb, tmp, "repack", "-a", "-d", "-q")
	})
}
