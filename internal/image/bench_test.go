package image

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/testreq"
)

// benchImage makes the benchmark image: the tree in BANGER_BENCH_TREE as
// one layer (e.g. a cached debootstrap tree), else a synthetic distro-like
// image of ~25k files in three layers (with a whiteout, symlinks, hard
// links).
func benchImage(b *testing.B) v1.Image {
	b.Helper()
	var layers [][]byte
	if tree := os.Getenv("BANGER_BENCH_TREE"); tree != "" {
		layers = append(layers, tarTree(b, tree))
	} else {
		rng := rand.New(rand.NewPCG(1, 2))
		words := strings.Fields("the quick brown fox jumps over lazy dog lorem ipsum dolor sit amet config value path usr lib share doc")
		text := func(n int) string {
			var sb strings.Builder
			for sb.Len() < n {
				sb.WriteString(words[rng.IntN(len(words))])
				sb.WriteByte(' ')
			}
			return sb.String()
		}
		var base []tarEntry
		for d := range 200 {
			dir := fmt.Sprintf("usr/share/pkg%03d/", d)
			base = append(base, tarEntry{name: dir, typ: tar.TypeDir})
			for f := range 100 {
				base = append(base, tarEntry{name: fmt.Sprintf("%sfile%03d", dir, f), body: text(200 + rng.IntN(6000))})
			}
			base = append(base, tarEntry{name: dir + "link", typ: tar.TypeSymlink, link: "file000"},
				tarEntry{name: dir + "hard", typ: tar.TypeLink, link: dir + "file001"})
		}
		var bins []tarEntry
		bins = append(bins, tarEntry{name: "usr/bin/", typ: tar.TypeDir})
		for i := range 40 {
			blob := make([]byte, 1<<20)
			for j := range blob {
				blob[j] = byte(rng.IntN(16)) // compressible but not trivially
			}
			bins = append(bins, tarEntry{name: fmt.Sprintf("usr/bin/tool%02d", i), mode: 0o755, body: string(blob)})
		}
		top := []tarEntry{{name: "usr/share/pkg000/.wh.file000"}, {name: "etc/", typ: tar.TypeDir}, {name: "etc/os-release", body: "ID=bench\n"}}
		layers = append(layers, mkTar(b, base), mkTar(b, bins), mkTar(b, top))
	}
	var ls []v1.Layer
	for _, data := range layers {
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
		if err != nil {
			b.Fatal(err)
		}
		ls = append(ls, l)
	}
	img, err := mutate.AppendLayers(empty.Image, ls...)
	if err != nil {
		b.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf.OS, cf.Architecture = "linux", "amd64"
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		b.Fatal(err)
	}
	return img
}

// tarTree archives a host tree (no device nodes) in memory.
func tarTree(b *testing.B, root string) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if info.Mode()&(os.ModeDevice|os.ModeSocket|os.ModeNamedPipe) != 0 {
			return nil
		}
		link := ""
		if info.Mode()&os.ModeSymlink != 0 {
			link, _ = os.Readlink(p)
		}
		h, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		h.Name = rel
		if info.IsDir() {
			h.Name += "/"
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			return err
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	tw.Close()
	return buf.Bytes()
}

// BenchmarkPullVsPipeline compares Store.Pull (download, flatten, mkfs,
// guest pieces, hash, publish) with `skopeo copy` + `umoci unpack` +
// `mkfs.ext4 -d` of the same image from the same local registry, both from
// cold caches, and reports the ratio (goal: <= 1.0).
//
//	go test -run XXX -bench PullVsPipeline -benchtime 3x ./internal/image/
func BenchmarkPullVsPipeline(b *testing.B) {
	testreq.Root(b)
	testreq.Tools(b, "skopeo", "umoci", "mkfs.ext4", "debugfs", "e2fsck")
	ctx := context.Background()
	reg := newTestRegistry(b)
	img := benchImage(b)
	ref := reg.push(b, "bench/image:v1", img)
	const sizeMiB = 2048
	r := hostexec.Real{}
	var ours, theirs time.Duration
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		s := newTestStore(b)
		work := b.TempDir()
		b.StartTimer()

		t0 := time.Now()
		if _, err := s.Pull(ctx, ref, PullOptions{Name: fmt.Sprintf("bench-%d", i), Insecure: true, SizeMiB: sizeMiB}); err != nil {
			b.Fatal(err)
		}
		ours += time.Since(t0)

		t0 = time.Now()
		layout := filepath.Join(work, "oci")
		bundle := filepath.Join(work, "bundle")
		out := filepath.Join(work, "pipeline.ext4")
		steps := []hostexec.Cmd{
			{Name: "skopeo", Args: []string{"copy", "-q", "--src-tls-verify=false", "docker://" + ref, "oci:" + layout + ":v1"}},
			{Name: "umoci", Args: []string{"unpack", "--image", layout + ":v1", bundle}},
			{Name: "truncate", Args: []string{"-s", fmt.Sprintf("%dM", sizeMiB), out}},
			{Name: "mkfs.ext4", Args: []string{"-F", "-q", "-d", filepath.Join(bundle, "rootfs"), "-E", "lazy_itable_init=1,lazy_journal_init=1", out}},
		}
		for _, c := range steps {
			if _, err := r.Run(ctx, c); err != nil {
				b.Fatal(err)
			}
		}
		theirs += time.Since(t0)
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(ours.Seconds()/n, "banger-s/op")
	b.ReportMetric(theirs.Seconds()/n, "pipeline-s/op")
	b.ReportMetric(ours.Seconds()/theirs.Seconds(), "ratio")
	fmt.Printf("pull+convert: banger %.2fs, skopeo+umoci+mkfs.ext4 %.2fs, ratio %.2f (goal <= 1.0)\n",
		ours.Seconds()/n, theirs.Seconds()/n, ours.Seconds()/theirs.Seconds())
}
