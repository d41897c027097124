// Package disktest holds the conformance suite every disk.CoW strategy
// passes, and the test gating that decides whether a strategy the host
// cannot run is skipped (developer machine) or fails the run (CI declares
// the strategies it must run in BANGER_TEST_EXPECT_COW).
package disktest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/bangerdev/banger/internal/disk"
	"github.com/bangerdev/banger/internal/disk/diskbench"
	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/privops"
)

// ExpectEnv lists, comma-separated, the strategies this machine must be
// able to test ("copy,reflink"); .ci/run sets it.
const ExpectEnv = "BANGER_TEST_EXPECT_COW"

// Expected reports whether ExpectEnv lists s.
func Expected(s disk.Strategy) bool {
	for f := range strings.SplitSeq(os.Getenv(ExpectEnv), ",") {
		if disk.Strategy(strings.TrimSpace(f)) == s {
			return true
		}
	}
	return false
}

// Require gates a test of strategy s: when missing is non-nil the test
// fails if s is expected on this machine (ExpectEnv) and is skipped with
// the reason otherwise.
func Require(t testing.TB, s disk.Strategy, missing error) {
	t.Helper()
	if missing == nil {
		return
	}
	if Expected(s) {
		t.Fatalf("disk strategy %s is expected here (%s=%q) but cannot run: %v", s, ExpectEnv, os.Getenv(ExpectEnv), missing)
	}
	t.Skipf("disk strategy %s cannot run here (%v); list it in %s to make this a failure", s, missing, ExpectEnv)
}

// ScratchFS mounts a fresh btrfs or xfs filesystem (reflink enabled) on a
// loop device for the test and returns its mount point; it is unmounted
// and detached in t.Cleanup. A host that cannot do it (not root, tools
// missing) is handled by Require for the reflink strategy.
func ScratchFS(t *testing.T, fstype string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		Require(t, disk.Reflink, errors.New("mounting a scratch "+fstype+" needs root"))
	}
	r := hostexec.Real{}
	for _, tool := range []string{"mkfs." + fstype, "losetup", "mount", "umount"} {
		if _, err := exec.LookPath(tool); err != nil {
			Require(t, disk.Reflink, fmt.Errorf("%s not installed (apt-get install btrfs-progs xfsprogs util-linux mount)", tool))
		}
	}
	ops := privops.NewLocal(r, nil)
	// xfs refuses filesystems under 300 MB; the file is sparse.
	s, err := diskbench.MountScratch(context.Background(), r, ops, fstype, t.TempDir(), 512<<20)
	if err != nil {
		Require(t, disk.Reflink, fmt.Errorf("scratch %s: %w", fstype, err))
	}
	t.Cleanup(func() {
		if err := s.Close(context.Background()); err != nil {
			t.Errorf("scratch %s cleanup: %v", fstype, err)
		}
	})
	return s.Dir
}

// image layout used by the suite: data extents and holes.
const (
	imageSize = 8 << 20
	growBy    = 4 << 20
)

var imageExtents = [][2]int64{{0, 64 << 10}, {1 << 20, 4 << 10}, {5 << 20, 1 << 20}, {imageSize - 4096, 4096}}

// makeImage writes a sparse image with pseudo-random data extents.
func makeImage(t *testing.T, dir string) (path string, sum [32]byte) {
	t.Helper()
	path = filepath.Join(dir, "base.img")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(imageSize); err != nil {
		t.Fatal(err)
	}
	rng := rand.NewChaCha8([32]byte{'c', 'o', 'w'})
	for _, e := range imageExtents {
		buf := make([]byte, e[1])
		_, _ = rng.Read(buf)
		if _, err := f.WriteAt(buf, e[0]); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return path, fileSum(t, path, imageSize)
}

func fileSum(t *testing.T, path string, n int64) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyN(h, f, n); err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return [32]byte(h.Sum(nil))
}

// deviceSize returns the size of a file or block device.
func deviceSize(t *testing.T, path string) int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func readAt(t *testing.T, path string, off, n int64) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, off); err != nil {
		t.Fatalf("read %s at %d: %v", path, off, err)
	}
	return buf
}

func writeAt(t *testing.T, path string, off int64, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatalf("write %s at %d: %v", path, off, err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// entries lists dir's names.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// fixture is one subtest's workspace: its own directory on the target
// filesystem with a fresh image, checked for leaks at the end.
type fixture struct {
	c       disk.CoW
	dir     string
	base    string
	baseSum [32]byte
}

func setup(t *testing.T, newCoW func(t *testing.T) disk.CoW, root string) *fixture {
	t.Helper()
	dir, err := os.MkdirTemp(root, "conf-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		checkNoLoops(t, dir)
		if err := os.RemoveAll(dir); err != nil {
			t.Error(err)
		}
	})
	base, sum := makeImage(t, dir)
	return &fixture{c: newCoW(t), dir: dir, base: base, baseSum: sum}
}

// checkNoLoops fails if a loop device is still backed by a file in dir,
// and detaches it so the machine stays clean.
func checkNoLoops(t *testing.T, dir string) {
	t.Helper()
	es, err := os.ReadDir("/sys/block")
	if err != nil {
		return
	}
	for _, e := range es {
		b, err := os.ReadFile(filepath.Join("/sys/block", e.Name(), "loop", "backing_file"))
		if err != nil {
			continue
		}
		if file := strings.TrimSpace(string(b)); strings.HasPrefix(file, dir+"/") {
			t.Errorf("leaked loop device /dev/%s backed by %s", e.Name(), file)
			_ = privops.NewLocal(hostexec.Real{}, nil).DetachLoop(context.Background(), "/dev/"+e.Name())
		}
	}
}

// onlyBase asserts that nothing but the image (and keep) is left in dir.
func (f *fixture) onlyBase(t *testing.T, keep ...string) {
	t.Helper()
	want := append([]string{"base.img"}, keep...)
	slices.Sort(want)
	if got := entries(t, f.dir); !slices.Equal(got, want) {
		t.Errorf("left in the disk directory: %q, want %q", got, want)
	}
}

func (f *fixture) baseUntouched(t *testing.T) {
	t.Helper()
	if fileSum(t, f.base, imageSize) != f.baseSum {
		t.Error("the image changed")
	}
	if st, err := os.Stat(f.base); err != nil || st.Size() != imageSize {
		t.Errorf("image size changed: %v %v", st, err)
	}
}

func (f *fixture) create(t *testing.T, name string, size int64) *disk.Handle {
	t.Helper()
	dst := filepath.Join(f.dir, name)
	h, err := f.c.Create(context.Background(), f.base, dst, size)
	if err != nil {
		t.Fatalf("Create(%s): %v", name, err)
	}
	t.Cleanup(func() { _ = f.c.Remove(context.Background(), h) })
	return h
}

// RunConformance runs the disk.CoW contract against the strategy newCoW
// returns, making images and disks under dir (which must be on a
// filesystem the strategy supports). Every subtest checks that no loop
// device is left behind.
func RunConformance(t *testing.T, newCoW func(t *testing.T) disk.CoW, dir string) {
	ctx := context.Background()

	t.Run("CreateMatchesImage", func(t *testing.T) {
		f := setup(t, newCoW, dir)
		dst := filepath.Join(f.dir, "disk.img")
		h := f.create(t, "disk.img", 0)
		plan := disk.Plan(f.c.Name(), f.base, dst, imageSize)
		if h.Strategy != f.c.Name() || h.Base != plan.Base || h.SizeBytes != imageSize || h.DMName != plan.DMName ||
			h.COWFile != plan.COWFile || h.Path == "" {
			t.Errorf("handle %+v does not match plan %+v", *h, *plan)
		}
		if got := deviceSize(t, h.Path); got != imageSize {
			t.Errorf("disk size = %d, want the image's %d", got, imageSize)
		}
		if fileSum(t, h.Path, imageSize) != f.baseSum {
			t.Error("disk content differs from the image")
		}
		f.baseUntouched(t)
	})

	t.Run("CreateGrowsToSize", func(t *testing.T) {
		f := setup(t, newCoW, dir)
		size := int64(imageSize + growBy)
		h := f.create(t, "disk.img", size)
		if h.SizeBytes != size {
			t.Errorf("handle size = %d, want %d", h.SizeBytes, size)
		}
		if got := deviceSize(t, h.Path); got != size {
			t.Errorf("disk size = %d, want %d", got, size)
		}
		if fileSum(t, h.Path, imageSize) != f.baseSum {
			t.Error("disk content differs from the image")
		}
		if tail := readAt(t, h.Path, imageSize, growBy); !bytes.Equal(tail, make([]byte, growBy)) {
			t.Error("grown part of the disk is not zero")
		}
	})

	t.Run("WritesDoNotReachImageOrSiblings", func(t *testing.T) {
		f := setup(t, newCoW, dir)
		size := int64(imageSize + growBy)
		a := f.create(t, "a.img", size)
		b := f.create(t, "b.img", size)
		marks := map[int64][]byte{
			0:               bytes.Repeat([]byte("data"), 1024),  // over a data extent
			3 << 20:         bytes.Repeat([]byte("hole"), 1024),  // over a hole
			imageSize + 512: bytes.Repeat([]byte("grown"), 1000), // past the image
		}
		for off, m := range marks {
			writeAt(t, a.Path, off, m)
		}
		for off, m := range marks {
			if got := readAt(t, a.Path, off, int64(len(m))); !bytes.Equal(got, m) {
				t.Errorf("disk a at %d: wrote %q..., read %q...", off, m[:8], got[:8])
			}
		}
		f.baseUntouched(t)
		if fileSum(t, b.Path, imageSize) != f.baseSum {
			t.Error("a write to disk a shows in disk b")
		}
	})

	t.Run("RemoveIsIdempotent", func(t *testing.T) {
		f := setup(t, newCoW, dir)
		dst := filepath.Join(f.dir, "disk.img")
		h, err := f.c.Create(ctx, f.base, dst, 0)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 2 {
			if err := f.c.Remove(ctx, h); err != nil {
				t.Fatalf("Remove #%d: %v", i+1, err)
			}
		}
		if _, err := os.Stat(h.Path); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s still exists after Remove (%v)", h.Path, err)
		}
		f.onlyBase(t)
		f.baseUntouched(t)
		// A planned handle whose Create never ran removes cleanly too.
		if err := f.c.Remove(ctx, disk.Plan(f.c.Name(), f.base, filepath.Join(f.dir, "never.img"), imageSize)); err != nil {
			t.Errorf("Remove of a never-created disk: %v", err)
		}
	})

	t.Run("ReattachKeepsData", func(t *testing.T) {
		f := setup(t, newCoW, dir)
		h := f.create(t, "disk.img", imageSize+growBy)
		mark := []byte("survives reattach")
		writeAt(t, h.Path, 2<<20, mark)
		for i := range 2 {
			if err := f.c.Reattach(ctx, h); err != nil {
				t.Fatalf("Reattach #%d: %v", i+1, err)
			}
		}
		if got := readAt(t, h.Path, 2<<20, int64(len(mark))); !bytes.Equal(got, mark) {
			t.Errorf("after Reattach read %q, want %q", got, mark)
		}
		if got := deviceSize(t, h.Path); got != imageSize+growBy {
			t.Errorf("after Reattach size = %d", got)
		}
		if err := f.c.Remove(ctx, h); err != nil {
			t.Fatal(err)
		}
		if err := f.c.Reattach(ctx, h); !errors.Is(err, disk.ErrMissing) {
			t.Errorf("Reattach after Remove: %v, want ErrMissing", err)
		}
		f.onlyBase(t)
	})

	t.Run("FailedCreateLeavesNothing", func(t *testing.T) {
		f := setup(t, newCoW, dir)
		dst := filepath.Join(f.dir, "disk.img")
		cancelled, cancel := context.WithCancel(ctx)
		cancel()
		cases := []struct {
			name string
			ctx  context.Context
			base string
			size int64
			is   error
		}{
			{"smaller than image", ctx, f.base, imageSize - 4096, disk.ErrInvalidSize},
			{"not whole sectors", ctx, f.base, imageSize + 100, disk.ErrInvalidSize},
			{"image missing", ctx, filepath.Join(f.dir, "nope.img"), 0, fs.ErrNotExist},
			{"cancelled", cancelled, f.base, 0, context.Canceled},
		}
		for _, tc := range cases {
			h, err := f.c.Create(tc.ctx, tc.base, dst, tc.size)
			if err == nil {
				_ = f.c.Remove(ctx, h)
				t.Errorf("%s: Create succeeded", tc.name)
				continue
			}
			if !errors.Is(err, tc.is) {
				t.Errorf("%s: err = %v, want %v", tc.name, err, tc.is)
			}
			f.onlyBase(t)
		}
		if _, err := f.c.Create(ctx, f.base, filepath.Join(f.dir, "no-such-dir", "disk.img"), 0); err == nil {
			t.Error("Create into a missing directory succeeded")
		}
		f.onlyBase(t)

		// An existing destination is refused and kept as it was.
		if err := os.WriteFile(dst, []byte("keep me"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := f.c.Create(ctx, f.base, dst, 0); !errors.Is(err, fs.ErrExist) {
			t.Errorf("existing destination: err = %v, want ErrExist", err)
		}
		if b, _ := os.ReadFile(dst); string(b) != "keep me" {
			t.Errorf("existing destination overwritten: %q", b)
		}
		f.onlyBase(t, "disk.img")
		f.baseUntouched(t)
	})

	t.Run("ConcurrentCreates", func(t *testing.T) {
		f := setup(t, newCoW, dir)
		var wg sync.WaitGroup
		handles := make([]*disk.Handle, 4)
		errs := make([]error, len(handles))
		for i := range handles {
			wg.Go(func() {
				handles[i], errs[i] = f.c.Create(ctx, f.base, filepath.Join(f.dir, fmt.Sprintf("d%d.img", i)), imageSize+growBy)
			})
		}
		wg.Wait()
		for i, h := range handles {
			if errs[i] != nil {
				t.Errorf("create %d: %v", i, errs[i])
				continue
			}
			if fileSum(t, h.Path, imageSize) != f.baseSum {
				t.Errorf("disk %d differs from the image", i)
			}
		}
		for i, h := range handles {
			if h == nil {
				continue
			}
			wg.Go(func() {
				if err := f.c.Remove(ctx, h); err != nil {
					t.Errorf("remove %d: %v", i, err)
				}
			})
		}
		wg.Wait()
		f.onlyBase(t)
	})
}
