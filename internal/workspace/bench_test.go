package workspace

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/testreq"
	"github.com/bangerdev/banger/internal/workspace/workspacebench"
)

// BenchmarkPrepareVsTar compares Prepare of a ~200 MB repository into a
// local "guest" directory (Stream | sh -c GuestScript) with the plain
// `tar -c | tar -x` of the same work tree (without .git), and reports
// both throughputs (MB/s of work-tree bytes) and their ratio
// (prepare/tar: 1.0 = as fast as plain tar). Two corpora: "mixed" (half
// incompressible binaries) and "source" (the Go source tree). Run with
// -benchtime=3x.
func BenchmarkPrepareVsTar(b *testing.B) {
	for _, c := range workspacebench.Corpora() {
		b.Run(c.Name, func(b *testing.B) {
			e := newEnv(b)
			benchPrepare(b, e, c.Make(b, testreq.CacheDir(b, "workspace-bench")))
		})
	}
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
