package workspace

import (
	"context"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/testreq"
)

// benchRepo returns a generated ~200 MB repository (half source-like text
// in 2000 files, half incompressible binaries in 20 files, one commit, loose
// objects as after a first `git add`, plus a few uncommitted edits),
// cached across runs under the test cache.
func benchRepo(b *testing.B, e *env) string {
	b.Helper()
	dir := filepath.Join(testreq.CacheDir(b, "workspace-bench"), "repo-200m-v1")
	if _, err := os.Stat(filepath.Join(dir, ".git", "banger-bench-complete")); err == nil {
		return dir
	}
	os.RemoveAll(dir)
	tmp := dir + ".tmp"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		b.Fatal(err)
	}
	e.git(tmp, "init", "-q")
	e.git(tmp, "config", "gc.auto", "0") // stays loose, as after a first `git add`
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
			write(b, tmp, fmt.Sprintf("src/pkg%02d/file%02d.go", d, f), []byte(sb.String()), 0o644)
		}
	}
	for i := 0; i < 20; i++ {
		write(b, tmp, fmt.Sprintf("assets/blob%02d.bin", i), randomBytes(int64(i), 5<<20), 0o644)
	}
	e.git(tmp, "add", "-A")
	e.git(tmp, "commit", "-q", "-m", "bench")
	write(b, tmp, "src/pkg00/file00.go", []byte("package changed\n"), 0o644)
	write(b, tmp, "assets/blob00.bin", randomBytes(99, 5<<20), 0o644)
	write(b, tmp, ".git/banger-bench-complete", nil, 0o644)
	if err := os.Rename(tmp, dir); err != nil {
		b.Fatal(err)
	}
	return dir
}

// sourceRepo returns a repository holding a copy of the Go distribution's
// src tree (~150 MB of real source code and test data, ~11k files), one
// commit, packed, cached across runs.
func sourceRepo(b *testing.B, e *env) string {
	b.Helper()
	src := filepath.Join(runtime.GOROOT(), "src")
	if _, err := os.Stat(src); err != nil {
		b.Skipf("no Go source tree at %s", src)
	}
	dir := filepath.Join(testreq.CacheDir(b, "workspace-bench"), "repo-gosrc-"+runtime.Version())
	if _, err := os.Stat(filepath.Join(dir, ".git", "banger-bench-complete")); err == nil {
		return dir
	}
	os.RemoveAll(dir)
	tmp := dir + ".tmp"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		b.Fatal(err)
	}
	e.sh(tmp, "cp -a "+hostexec.Quote(src+"/.")+" .")
	e.git(tmp, "init", "-q")
	e.git(tmp, "config", "gc.auto", "0")
	e.git(tmp, "add", "-A")
	e.git(tmp, "commit", "-q", "-m", "bench")
	// Packed, as a cloned repository is: Stream reuses the pack's data.
	e.git(tmp, "repack", "-a", "-d", "-q")
	write(b, tmp, ".git/banger-bench-complete", nil, 0o644)
	if err := os.Rename(tmp, dir); err != nil {
		b.Fatal(err)
	}
	return dir
}

// BenchmarkPrepareVsTar compares Prepare of a ~200 MB repository into a
// local "guest" directory (Stream | sh -c GuestScript) with the plain
// `tar -c | tar -x` of the same work tree (without .git), and reports
// both throughputs (MB/s of work-tree bytes) and their ratio
// (prepare/tar: 1.0 = as fast as plain tar). Two corpora: "mixed" (half
// incompressible binaries) and "source" (the Go source tree). Run with
// -benchtime=3x.
func BenchmarkPrepareVsTar(b *testing.B) {
	b.Run("mixed", func(b *testing.B) { e := newEnv(b); benchPrepare(b, e, benchRepo(b, e)) })
	b.Run("source", func(b *testing.B) { e := newEnv(b); benchPrepare(b, e, sourceRepo(b, e)) })
}

func benchPrepare(b *testing.B, e *env, repo string) {
	ctx := context.Background()
	snap, err := Inspect(ctx, e.runner(), repo, Options{})
	if err != nil {
		b.Fatal(err)
	}
	size := snap.Bytes()
	b.SetBytes(size)
	var prep, plain, stream time.Duration
	var st Stats
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		dst := filepath.Join(e.home, fmt.Sprintf("prepare-%d", i))
		t0 := time.Now()
		st, err = Prepare(ctx, e.remote(), snap, dst)
		if err != nil {
			b.Fatal(err)
		}
		prep += time.Since(t0)

		tdst := filepath.Join(e.home, fmt.Sprintf("tar-%d", i))
		if err := os.MkdirAll(tdst, 0o755); err != nil {
			b.Fatal(err)
		}
		t0 = time.Now()
		c := exec.Command("sh", "-c", `tar -c -C "$1" --exclude=./.git . | tar -x -p -C "$2"`, "sh", repo, tdst)
		if out, err := c.CombinedOutput(); err != nil {
			b.Fatalf("tar pipeline: %v: %s", err, out)
		}
		plain += time.Since(t0)

		t0 = time.Now()
		if _, err := Stream(ctx, snap, io.Discard); err != nil {
			b.Fatal(err)
		}
		stream += time.Since(t0)

		b.StopTimer()
		os.RemoveAll(dst)
		os.RemoveAll(tdst)
		b.StartTimer()
	}
	mbps := func(d time.Duration) float64 { return float64(size) * float64(b.N) / 1e6 / d.Seconds() }
	b.ReportMetric(mbps(prep), "prepare-MB/s")
	b.ReportMetric(mbps(plain), "tar-MB/s")
	b.ReportMetric(mbps(stream), "stream-only-MB/s")
	b.ReportMetric(plain.Seconds()/prep.Seconds(), "ratio")
	b.ReportMetric(float64(st.StreamBytes)/float64(size), "stream-bytes/file-bytes")
}
