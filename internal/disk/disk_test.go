package disk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/privops"
)

func TestParseStrategy(t *testing.T) {
	for in, want := range map[string]Strategy{"": Auto, "auto": Auto, " DM ": DM, "reflink": Reflink, "copy": Copy} {
		if got, err := ParseStrategy(in); err != nil || got != want {
			t.Errorf("ParseStrategy(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"overlay", "d m", "cp"} {
		if _, err := ParseStrategy(bad); err == nil {
			t.Errorf("ParseStrategy(%q) accepted", bad)
		}
	}
}

func TestNew(t *testing.T) {
	for _, s := range Strategies() {
		c, err := New(s, &fakeOps{}, &hostexec.Recorder{})
		if err != nil || c.Name() != s {
			t.Errorf("New(%s) = %v, %v", s, c, err)
		}
	}
	if _, err := New(DM, nil, nil); err == nil {
		t.Error("dm without privops accepted")
	}
	for _, s := range []Strategy{Auto, "bogus"} {
		if _, err := New(s, nil, nil); err == nil {
			t.Errorf("New(%q) accepted", s)
		}
	}
}

func TestPlan(t *testing.T) {
	h := Plan(Copy, "/img/base.img", "/vms/a/../b/root.img", 1<<20)
	if h.Path != "/vms/b/root.img" || h.DMName != "" || h.COWFile != "" || h.Base != "/img/base.img" {
		t.Errorf("copy plan %+v", *h)
	}
	d := Plan(DM, "img/base.img", "/vms/b/root.cow", 1<<20)
	if d.COWFile != "/vms/b/root.cow" || d.Origin != "/vms/b/root.cow.origin" || d.Path != "/dev/mapper/"+d.DMName ||
		!filepath.IsAbs(d.Base) {
		t.Errorf("dm plan %+v", *d)
	}
	if DMName("/vms/b/root.cow") != d.DMName {
		t.Error("DMName is not deterministic")
	}
	if DMName("/vms/b/root.cow") == DMName("/vms/c/root.cow") || DMName("/vms/b_x/root.cow") == DMName("/vms/b-x/root.cow") {
		t.Error("DMName collides")
	}
}

func FuzzDMName(f *testing.F) {
	for _, s := range []string{"/var/lib/banger/vms/0123/root.cow", "rel", "/", "", "/ü/ /\n.cow", strings.Repeat("/x", 200)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, dst string) {
		if strings.ContainsRune(dst, 0) {
			return
		}
		if err := privops.ValidateDMName(DMName(dst)); err != nil {
			t.Fatalf("DMName(%q) = %q: %v", dst, DMName(dst), err)
		}
	})
}

func TestCopyKeepsHoles(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.img")
	f, err := os.Create(base)
	if err != nil {
		t.Fatal(err)
	}
	const size = 64 << 20
	data := []byte(strings.Repeat("x", 1<<20))
	for _, off := range []int64{0, 20 << 20, size - 1<<20} {
		if _, err := f.WriteAt(data, off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	h, err := copyCoW{}.Create(context.Background(), base, filepath.Join(dir, "disk.img"), 2*size)
	if err != nil {
		t.Fatal(err)
	}
	bs, _ := os.Stat(base)
	ds, _ := os.Stat(h.Path)
	baseBlocks := bs.Sys().(*syscall.Stat_t).Blocks
	diskBlocks := ds.Sys().(*syscall.Stat_t).Blocks
	// 3 MiB of data = 6144 sectors; allow filesystem slack, not 64 MiB.
	if diskBlocks > baseBlocks+2048 {
		t.Errorf("copy allocated %d sectors for an image using %d: holes were filled", diskBlocks, baseBlocks)
	}
	if ds.Size() != 2*size {
		t.Errorf("size %d", ds.Size())
	}
}

// TestCopyRangeFallback exercises the read/write path used when
// copy_file_range is refused.
func TestCopyRangeFallback(t *testing.T) {
	dir := t.TempDir()
	want := []byte(strings.Repeat("0123456789", 300000))
	if err := os.WriteFile(filepath.Join(dir, "in"), want, 0o600); err != nil {
		t.Fatal(err)
	}
	in, _ := os.Open(filepath.Join(dir, "in"))
	defer in.Close()
	out, _ := os.Create(filepath.Join(dir, "out"))
	defer out.Close()
	if n, err := copyRange(out, in, 7, int64(len(want))-7); err != nil || n != int64(len(want))-7 {
		t.Fatalf("copyRange = %d, %v", n, err)
	}
	got, _ := os.ReadFile(filepath.Join(dir, "out"))
	if string(got[7:]) != string(want[7:]) {
		t.Error("content differs")
	}
	if _, err := copyRange(out, in, 10, int64(len(want))); err == nil {
		t.Error("reading past the end succeeded")
	}
}

func TestReflinkUnsupported(t *testing.T) {
	dir := t.TempDir()
	if fs := FilesystemName(dir); fs == "btrfs" || fs == "xfs" {
		t.Skipf("temp dir is on %s, which may reflink", fs)
	}
	base := filepath.Join(dir, "base.img")
	if err := os.WriteFile(base, make([]byte, 8192), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := reflinkCoW{}.Create(context.Background(), base, filepath.Join(dir, "d.img"), 0)
	if !errors.Is(err, privops.ErrNotSupported) {
		t.Errorf("err = %v, want ErrNotSupported", err)
	}
	if es, _ := os.ReadDir(dir); len(es) != 1 {
		t.Errorf("left behind: %v", es)
	}
}

// fakeHost builds procfs and /dev trees for the prober. Every host gets a
// /dev/mapper/control node: dmsetup makes one on its first run even where
// the kernel has no device-mapper, so it must never count.
func fakeHost(t *testing.T, dm, loop bool) prober {
	t.Helper()
	p := prober{proc: t.TempDir(), dev: t.TempDir(), euid: 0}
	misc := "237 loop-control\n200 tun\n"
	if dm {
		misc += "236 device-mapper\n"
	}
	if err := os.WriteFile(filepath.Join(p.proc, "misc"), []byte(misc), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(p.dev, "mapper"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p.dev, "mapper", "control"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if loop {
		if err := os.WriteFile(filepath.Join(p.dev, "loop-control"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

func TestProbe(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	noReflink := FilesystemName(dir) != "btrfs" && FilesystemName(dir) != "xfs"
	version := func(hostexec.Cmd) (hostexec.Result, error) {
		return hostexec.Result{Stdout: []byte("Library version:   1.02.185\nDriver version:    4.48.0\n")}, nil
	}
	cases := []struct {
		name     string
		p        prober
		ops      privops.Ops
		respond  func(hostexec.Cmd) (hostexec.Result, error)
		want     Strategy
		reason   string
		commands []string
	}{
		{"dm", fakeHost(t, true, true), &fakeOps{}, version, DM, "driver 4.48.0", []string{"dmsetup version"}},
		{"no kernel dm", fakeHost(t, false, true), &fakeOps{}, version, Copy, "no device-mapper", []string{"dmsetup version"}},
		{"no loop", fakeHost(t, true, false), &fakeOps{}, version, Copy, "loop-control", []string{"dmsetup version"}},
		{"no privops", fakeHost(t, true, true), nil, version, Copy, "no privileged operations", nil},
		{"no dmsetup", fakeHost(t, true, true), &fakeOps{}, func(hostexec.Cmd) (hostexec.Result, error) {
			return hostexec.Result{ExitCode: -1}, fmt.Errorf("dmsetup: %w", hostexec.ErrNotFound)
		}, Copy, "dmsetup is not installed", []string{"dmsetup version"}},
		{"driver refuses root", fakeHost(t, true, true), &fakeOps{}, func(c hostexec.Cmd) (hostexec.Result, error) {
			return hostexec.Result{ExitCode: 1}, &hostexec.ExitError{Cmd: c.String(), ExitCode: 1, Stderr: "Failure to communicate"}
		}, Copy, "Failure to communicate", []string{"dmsetup version"}},
		{"no driver version", fakeHost(t, true, true), &fakeOps{}, func(hostexec.Cmd) (hostexec.Result, error) {
			return hostexec.Result{Stdout: []byte("Library version:   1.02.185\n")}, nil
		}, Copy, "no driver version", []string{"dmsetup version"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.want == Copy && !noReflink {
				t.Skip("temp dir reflinks")
			}
			rec := &hostexec.Recorder{Respond: tc.respond}
			got, reason := tc.p.probe(ctx, dir, tc.ops, rec)
			if got != tc.want || !strings.Contains(reason, tc.reason) {
				t.Errorf("probe = %s, %q; want %s with %q", got, reason, tc.want, tc.reason)
			}
			if lines := rec.Lines(); !slices.Equal(lines, tc.commands) {
				t.Errorf("commands %q, want %q", lines, tc.commands)
			}
			if es, _ := os.ReadDir(dir); len(es) != 0 {
				t.Errorf("probe left %v", es)
			}
		})
	}
	// A daemon that is not root cannot open the snapshot devices, so dm is
	// never chosen for it, whatever the kernel offers.
	p := fakeHost(t, true, true)
	p.euid = 1000
	rec := &hostexec.Recorder{Respond: version}
	if got, reason := p.probe(ctx, dir, &fakeOps{}, rec); got == DM || !strings.Contains(reason, "not run as root") {
		t.Errorf("non-root probe = %s (%s), want no dm", got, reason)
	}
}
