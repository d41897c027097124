package disk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/bangerdev/banger/internal/privops"
)

// fakeOps implements the disk half of privops.Ops against a fake sysfs
// tree, validating every argument like the real server side does, and
// records each call. fail names the call that fails: "AttachLoop#2" is the
// second AttachLoop, "CreateSnapshot#1" the first CreateSnapshot.
type fakeOps struct {
	privops.Ops // network and process operations are not used: nil panics

	sys  string
	fail string

	mu     sync.Mutex
	calls  []string
	counts map[string]int
}

func newFakeOps(t *testing.T) *fakeOps {
	sys := t.TempDir()
	if err := os.MkdirAll(filepath.Join(sys, "block"), 0o755); err != nil {
		t.Fatal(err)
	}
	return &fakeOps{sys: sys, counts: map[string]int{}}
}

func (f *fakeOps) record(method, line string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, line)
	f.counts[method]++
	if f.fail == fmt.Sprintf("%s#%d", method, f.counts[method]) {
		return fmt.Errorf("injected %s failure", method)
	}
	return nil
}

func (f *fakeOps) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *fakeOps) reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = nil
}

// attach puts a loop for file into the fake sysfs, on the first free number.
func (f *fakeOps) attach(file string) string {
	for i := 0; ; i++ {
		dir := filepath.Join(f.sys, "block", fmt.Sprintf("loop%d", i))
		if _, err := os.Stat(filepath.Join(dir, "loop")); err == nil {
			continue
		}
		if err := os.MkdirAll(filepath.Join(dir, "loop"), 0o755); err != nil {
			panic(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "loop", "backing_file"), []byte(file+"\n"), 0o644); err != nil {
			panic(err)
		}
		return fmt.Sprintf("/dev/loop%d", i)
	}
}

func (f *fakeOps) AttachLoop(_ context.Context, spec privops.LoopSpec) (string, error) {
	if err := privops.ValidateLoopSpec(spec); err != nil {
		return "", err
	}
	mode := "rw"
	if spec.ReadOnly {
		mode = "ro"
	}
	if err := f.record("AttachLoop", "AttachLoop "+spec.File+" "+mode); err != nil {
		return "", err
	}
	return f.attach(spec.File), nil
}

func (f *fakeOps) DetachLoop(_ context.Context, dev string) error {
	if err := privops.ValidateLoopDevice(dev); err != nil {
		return err
	}
	if err := f.record("DetachLoop", "DetachLoop "+dev); err != nil {
		return err
	}
	return os.RemoveAll(filepath.Join(f.sys, "block", filepath.Base(dev), "loop"))
}

func (f *fakeOps) CreateSnapshot(_ context.Context, spec privops.SnapshotSpec) (string, error) {
	if err := privops.ValidateSnapshotSpec(spec); err != nil {
		return "", err
	}
	if err := f.record("CreateSnapshot", fmt.Sprintf("CreateSnapshot %s %s %s %d", spec.Name, spec.Origin, spec.COW, spec.SizeBytes)); err != nil {
		return "", err
	}
	for i := 0; ; i++ {
		dir := filepath.Join(f.sys, "block", fmt.Sprintf("dm-%d", i))
		if _, err := os.Stat(dir); err == nil {
			continue
		}
		for _, p := range []string{"dm", "slaves/" + filepath.Base(spec.Origin), "slaves/" + filepath.Base(spec.COW)} {
			if err := os.MkdirAll(filepath.Join(dir, p), 0o755); err != nil {
				return "", err
			}
		}
		if err := os.WriteFile(filepath.Join(dir, "dm", "name"), []byte(spec.Name+"\n"), 0o644); err != nil {
			return "", err
		}
		return "/dev/mapper/" + spec.Name, nil
	}
}

func (f *fakeOps) RemoveSnapshot(_ context.Context, name string) error {
	if err := privops.ValidateDMName(name); err != nil {
		return err
	}
	if err := f.record("RemoveSnapshot", "RemoveSnapshot "+name); err != nil {
		return err
	}
	dm, err := dmDeviceByName(f.sys, name)
	if err != nil || dm == "" {
		return err
	}
	return os.RemoveAll(filepath.Join(f.sys, "block", dm))
}

// state lists attached loops and dm devices in the fake sysfs.
func (f *fakeOps) state(t *testing.T) (loops map[string]string, dms []string) {
	t.Helper()
	loops, err := loopBackingFiles(f.sys)
	if err != nil {
		t.Fatal(err)
	}
	es, _ := os.ReadDir(filepath.Join(f.sys, "block"))
	for _, e := range es {
		if strings.HasPrefix(e.Name(), "dm-") {
			dms = append(dms, e.Name())
		}
	}
	return loops, dms
}

func dmFixture(t *testing.T) (*dmCoW, *fakeOps, string, string) {
	t.Helper()
	ops := newFakeOps(t)
	dir := t.TempDir()
	base := filepath.Join(dir, "base.img")
	if err := os.WriteFile(base, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	return &dmCoW{ops: ops, sys: ops.sys}, ops, dir, base
}

func TestDMCreate(t *testing.T) {
	d, ops, dir, base := dmFixture(t)
	dst := filepath.Join(dir, "root.cow")
	size := int64(4 << 20)
	h, err := d.Create(context.Background(), base, dst, size)
	if err != nil {
		t.Fatal(err)
	}
	name := DMName(dst)
	want := []string{
		"AttachLoop " + dst + ".origin ro",
		"AttachLoop " + dst + " rw",
		fmt.Sprintf("CreateSnapshot %s /dev/loop0 /dev/loop1 %d", name, size),
	}
	if got := ops.Calls(); !slices.Equal(got, want) {
		t.Errorf("calls:\n got %q\nwant %q", got, want)
	}
	wantH := Handle{Strategy: DM, Path: "/dev/mapper/" + name, Base: base, SizeBytes: size,
		Loops: []string{"/dev/loop0", "/dev/loop1"}, DMName: name, COWFile: dst, Origin: dst + ".origin"}
	if fmt.Sprint(*h) != fmt.Sprint(wantH) {
		t.Errorf("handle:\n got %+v\nwant %+v", *h, wantH)
	}
	if !strings.HasPrefix(name, privops.DMNamePrefix) {
		t.Errorf("dm name %q lacks the prefix", name)
	}
	bi, _ := os.Stat(base)
	oi, err := os.Stat(h.Origin)
	if err != nil || !os.SameFile(bi, oi) {
		t.Errorf("origin %s is not a hard link of the image (%v)", h.Origin, err)
	}
	ci, err := os.Stat(dst)
	if err != nil {
		t.Fatal(err)
	}
	if ci.Size() != cowFileSize(size) || ci.Size() < size+size/256 {
		t.Errorf("cow file size = %d, want %d", ci.Size(), cowFileSize(size))
	}
	if blocks := ci.Sys().(*syscall.Stat_t).Blocks; blocks != 0 {
		t.Errorf("cow file is not sparse: %d blocks", blocks)
	}
	if ci.Mode().Perm() != 0o600 {
		t.Errorf("cow file mode = %v", ci.Mode())
	}
}

func TestDMCreateUndoesInReverse(t *testing.T) {
	cases := []struct {
		fail string
		tail []string // calls after the failing one
	}{
		{"AttachLoop#1", nil},
		{"AttachLoop#2", []string{"DetachLoop /dev/loop0"}},
		{"CreateSnapshot#1", []string{"DetachLoop /dev/loop1", "DetachLoop /dev/loop0"}},
	}
	for _, tc := range cases {
		t.Run(tc.fail, func(t *testing.T) {
			d, ops, dir, base := dmFixture(t)
			ops.fail = tc.fail
			h, err := d.Create(context.Background(), base, filepath.Join(dir, "root.cow"), 2<<20)
			if err == nil || !strings.Contains(err.Error(), "injected") {
				t.Fatalf("Create = %v, %v; want the injected failure", h, err)
			}
			calls := ops.Calls()
			failed := len(calls) - len(tc.tail) - 1
			method, _, _ := strings.Cut(tc.fail, "#")
			if failed < 0 || !strings.HasPrefix(calls[failed], method) || !slices.Equal(calls[failed+1:], tc.tail) {
				t.Errorf("calls %q: want %q right after the failing %s", calls, tc.tail, method)
			}
			loops, dms := ops.state(t)
			if len(loops) != 0 || len(dms) != 0 {
				t.Errorf("left attached: loops %v, dm %v", loops, dms)
			}
			if got, _ := os.ReadDir(dir); len(got) != 1 {
				t.Errorf("files left: %v", got)
			}
		})
	}
}

// TestDMCreateUndoSurvivesCancel cancels the context while the snapshot is
// created: the undo must still run.
func TestDMCreateUndoSurvivesCancel(t *testing.T) {
	d, ops, dir, base := dmFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	d.ops = cancelOn{fakeOps: ops, cancel: cancel}
	if _, err := d.Create(ctx, base, filepath.Join(dir, "root.cow"), 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if loops, dms := ops.state(t); len(loops) != 0 || len(dms) != 0 {
		t.Errorf("left attached: loops %v, dm %v", loops, dms)
	}
	if got, _ := os.ReadDir(dir); len(got) != 1 {
		t.Errorf("files left: %v", got)
	}
}

// cancelOn cancels the caller's context right after the second loop is attached.
type cancelOn struct {
	*fakeOps
	cancel func()
}

func (c cancelOn) AttachLoop(ctx context.Context, spec privops.LoopSpec) (string, error) {
	dev, err := c.fakeOps.AttachLoop(ctx, spec)
	if !spec.ReadOnly {
		c.cancel()
	}
	return dev, err
}

func TestDMRemove(t *testing.T) {
	d, ops, dir, base := dmFixture(t)
	h, err := d.Create(context.Background(), base, filepath.Join(dir, "root.cow"), 0)
	if err != nil {
		t.Fatal(err)
	}
	ops.reset()
	if err := d.Remove(context.Background(), h); err != nil {
		t.Fatal(err)
	}
	want := []string{"RemoveSnapshot " + h.DMName, "DetachLoop /dev/loop0", "DetachLoop /dev/loop1"}
	if got := ops.Calls(); !slices.Equal(got, want) {
		t.Errorf("calls %q, want %q", got, want)
	}
	if got, _ := os.ReadDir(dir); len(got) != 1 {
		t.Errorf("files left: %v", got)
	}
	ops.reset()
	if err := d.Remove(context.Background(), h); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
	if got := ops.Calls(); !slices.Equal(got, []string{"RemoveSnapshot " + h.DMName}) {
		t.Errorf("second Remove calls %q", got)
	}
}

// TestDMRemoveAfterCrash removes a disk from its planned handle alone, as
// the daemon does after dying in the middle of Create, on a host where
// loop numbers were reused by others.
func TestDMRemoveAfterCrash(t *testing.T) {
	d, ops, dir, base := dmFixture(t)
	dst := filepath.Join(dir, "root.cow")
	plan := Plan(DM, base, dst, 1<<20)
	other := filepath.Join(dir, "other.img")
	for _, f := range []string{plan.Origin, dst, other} {
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	foreign := ops.attach(other)          // loop0: someone else's
	imageLoop := ops.attach(base)         // loop1: another disk's loop of the shared image
	originLoop := ops.attach(plan.Origin) // loop2: ours, from the crashed Create
	cowLoop := ops.attach(dst)            // loop3: ours
	plan.Loops = []string{foreign}        // a stale record pointing at a reused number
	if err := d.Remove(context.Background(), plan); err != nil {
		t.Fatal(err)
	}
	want := []string{"RemoveSnapshot " + plan.DMName, "DetachLoop " + originLoop, "DetachLoop " + cowLoop}
	if got := ops.Calls(); !slices.Equal(got, want) {
		t.Errorf("calls %q, want %q", got, want)
	}
	loops, _ := ops.state(t)
	if loops[foreign] != other || loops[imageLoop] != base {
		t.Errorf("foreign loops touched: %v", loops)
	}
	for _, f := range []string{plan.Origin, dst} {
		if _, err := os.Stat(f); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s not removed", f)
		}
	}

	// Without an origin link only a recorded loop of the image is ours.
	ops.reset()
	noLink := Plan(DM, base, filepath.Join(dir, "b.cow"), 1<<20)
	noLink.Origin = ""
	noLink.Loops = []string{imageLoop}
	if err := d.Remove(context.Background(), noLink); err != nil {
		t.Fatal(err)
	}
	if got := ops.Calls(); !slices.Equal(got, []string{"RemoveSnapshot " + noLink.DMName, "DetachLoop " + imageLoop}) {
		t.Errorf("calls %q", got)
	}
}

func TestDMReattach(t *testing.T) {
	d, ops, dir, base := dmFixture(t)
	h, err := d.Create(context.Background(), base, filepath.Join(dir, "root.cow"), 2<<20)
	if err != nil {
		t.Fatal(err)
	}
	created := *h

	// Daemon restart: everything is still live; nothing is touched.
	ops.reset()
	if err := d.Reattach(context.Background(), h); err != nil {
		t.Fatal(err)
	}
	if got := ops.Calls(); len(got) != 0 {
		t.Errorf("live reattach made calls %q", got)
	}
	if fmt.Sprint(*h) != fmt.Sprint(created) {
		t.Errorf("live reattach changed the handle: %+v", *h)
	}

	// Host reboot: devices are gone and loop0 now belongs to someone else.
	if err := os.RemoveAll(filepath.Join(ops.sys, "block")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(ops.sys, "block"), 0o755); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "other.img")
	if err := os.WriteFile(other, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	foreign := ops.attach(other)
	ops.reset()
	if err := d.Reattach(context.Background(), h); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"RemoveSnapshot " + h.DMName,
		"AttachLoop " + h.Origin + " ro",
		"AttachLoop " + h.COWFile + " rw",
		fmt.Sprintf("CreateSnapshot %s /dev/loop1 /dev/loop2 %d", h.DMName, h.SizeBytes),
	}
	if got := ops.Calls(); !slices.Equal(got, want) {
		t.Errorf("calls:\n got %q\nwant %q", got, want)
	}
	if !slices.Equal(h.Loops, []string{"/dev/loop1", "/dev/loop2"}) || h.Path != "/dev/mapper/"+h.DMName {
		t.Errorf("handle not updated: %+v", *h)
	}
	if loops, _ := ops.state(t); loops[foreign] != other {
		t.Errorf("foreign loop touched: %v", loops)
	}

	// Half-live (snapshot gone, loops left): released and rebuilt.
	if err := ops.RemoveSnapshot(context.Background(), h.DMName); err != nil {
		t.Fatal(err)
	}
	ops.reset()
	if err := d.Reattach(context.Background(), h); err != nil {
		t.Fatal(err)
	}
	if got := ops.Calls(); len(got) != 6 || got[1] != "DetachLoop /dev/loop1" || got[2] != "DetachLoop /dev/loop2" {
		t.Errorf("calls %q", got)
	}

	// Failure while rebuilding undoes the rebuild.
	if err := os.RemoveAll(filepath.Join(ops.sys, "block")); err != nil {
		t.Fatal(err)
	}
	_ = os.MkdirAll(filepath.Join(ops.sys, "block"), 0o755)
	ops.fail = fmt.Sprintf("CreateSnapshot#%d", ops.counts["CreateSnapshot"]+1)
	if err := d.Reattach(context.Background(), h); err == nil {
		t.Fatal("Reattach succeeded despite the failure")
	}
	if loops, dms := ops.state(t); len(loops) != 0 || len(dms) != 0 {
		t.Errorf("left attached: %v %v", loops, dms)
	}
	ops.fail = ""

	if err := os.Remove(h.COWFile); err != nil {
		t.Fatal(err)
	}
	if err := d.Reattach(context.Background(), h); !errors.Is(err, ErrMissing) {
		t.Errorf("Reattach without cow file: %v, want ErrMissing", err)
	}
}

func TestDMRejectsOddImage(t *testing.T) {
	d, ops, dir, _ := dmFixture(t)
	odd := filepath.Join(dir, "odd.img")
	if err := os.WriteFile(odd, make([]byte, 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Create(context.Background(), odd, filepath.Join(dir, "x.cow"), 4096); !errors.Is(err, ErrInvalidSize) {
		t.Errorf("err = %v, want ErrInvalidSize", err)
	}
	if len(ops.Calls()) != 0 {
		t.Errorf("calls %q", ops.Calls())
	}
	if _, err := d.Create(context.Background(), odd, filepath.Join(dir, "x.cow"), 4096); !errors.Is(err, ErrInvalidSize) {
		t.Error(err)
	}
}

func TestHandleOfOtherStrategyRefused(t *testing.T) {
	d, _, dir, base := dmFixture(t)
	h := Plan(Copy, base, filepath.Join(dir, "x.img"), 0)
	if err := d.Remove(context.Background(), h); err == nil {
		t.Error("dm Remove accepted a copy handle")
	}
	if err := (copyCoW{}).Remove(context.Background(), Plan(DM, base, filepath.Join(dir, "x.cow"), 0)); err == nil {
		t.Error("copy Remove accepted a dm handle")
	}
}

// TestDMDetachOnlyOwnLoops: Detach (VM stop, reconcile) releases the
// snapshot and the disk's own loops and keeps its files; a recorded loop
// number now backed by someone else's file is left alone (#16 defect 4).
func TestDMDetachOnlyOwnLoops(t *testing.T) {
	d, ops, dir, base := dmFixture(t)
	h, err := d.Create(context.Background(), base, filepath.Join(dir, "root.cow"), 0)
	if err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "other.img")
	if err := os.WriteFile(other, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	foreign := ops.attach(other)
	h.Loops = append(h.Loops, foreign) // a stale number in the record
	ops.reset()
	if err := d.Detach(context.Background(), h); err != nil {
		t.Fatal(err)
	}
	want := []string{"RemoveSnapshot " + h.DMName, "DetachLoop /dev/loop0", "DetachLoop /dev/loop1"}
	if got := ops.Calls(); !slices.Equal(got, want) {
		t.Errorf("calls %q, want %q", got, want)
	}
	if loops, _ := ops.state(t); loops[foreign] != other {
		t.Errorf("someone else's loop was touched: %v", loops)
	}
	for _, f := range []string{h.COWFile, h.Origin} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("Detach removed %s: %v", f, err)
		}
	}
}
