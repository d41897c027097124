package privops

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/testreq"
)

func dmYes() error { return nil }
func dmNo() error  { return fmt.Errorf("%w: no dm", ErrNotSupported) }

func tempFile(t *testing.T) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(f, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestAttachLoopArgv(t *testing.T) {
	file := tempFile(t)
	for _, ro := range []bool{false, true} {
		rec := &hostexec.Recorder{Respond: func(hostexec.Cmd) (hostexec.Result, error) {
			return hostexec.Result{Stdout: []byte("/dev/loop7\n")}, nil
		}}
		dev, err := NewLocal(rec, nil).AttachLoop(context.Background(), LoopSpec{File: file, ReadOnly: ro})
		if err != nil {
			t.Fatal(err)
		}
		if dev != "/dev/loop7" {
			t.Errorf("device = %q", dev)
		}
		// losetup gets the file banger opened (through /proc/PID/fd/N),
		// never the path again.
		want := `^losetup --find --show /proc/[0-9]+/fd/[0-9]+$`
		if ro {
			want = `^losetup --find --show --read-only /proc/[0-9]+/fd/[0-9]+$`
		}
		if got := rec.Lines(); len(got) != 1 || !regexp.MustCompile(want).MatchString(got[0]) {
			t.Errorf("ro=%v: commands = %q, want %s", ro, got, want)
		}
	}
}

func TestAttachLoopErrors(t *testing.T) {
	file := tempFile(t)
	ctx := context.Background()

	garbage := &hostexec.Recorder{Respond: func(hostexec.Cmd) (hostexec.Result, error) {
		return hostexec.Result{Stdout: []byte("/dev/sda\n")}, nil
	}}
	if _, err := NewLocal(garbage, nil).AttachLoop(ctx, LoopSpec{File: file}); err == nil {
		t.Error("accepted a non-loop device from losetup")
	}

	missing := &hostexec.Recorder{Respond: func(hostexec.Cmd) (hostexec.Result, error) {
		return hostexec.Result{ExitCode: -1}, fmt.Errorf("losetup: %w", hostexec.ErrNotFound)
	}}
	if _, err := NewLocal(missing, nil).AttachLoop(ctx, LoopSpec{File: file}); !errors.Is(err, ErrNotSupported) {
		t.Errorf("losetup missing: err = %v, want ErrNotSupported", err)
	}

	dir := t.TempDir()
	for _, bad := range []string{"", "rel/disk.img", file + "/../disk.img", dir + "//disk.img", dir, filepath.Join(dir, "nope"), file + "\n-d"} {
		rec := &hostexec.Recorder{}
		if _, err := NewLocal(rec, nil).AttachLoop(ctx, LoopSpec{File: bad}); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("AttachLoop(%q): err = %v, want ErrInvalidArgument", bad, err)
		}
		if n := len(rec.Calls()); n != 0 {
			t.Errorf("AttachLoop(%q) ran %d commands", bad, n)
		}
	}
}

func TestDetachLoop(t *testing.T) {
	ctx := context.Background()
	rec := &hostexec.Recorder{}
	if err := NewLocal(rec, nil).DetachLoop(ctx, "/dev/loop3"); err != nil {
		t.Fatal(err)
	}
	if got := rec.Lines(); !slices.Equal(got, []string{"losetup --detach /dev/loop3"}) {
		t.Errorf("commands = %q", got)
	}

	gone := &hostexec.Recorder{Respond: func(c hostexec.Cmd) (hostexec.Result, error) {
		return hostexec.Result{ExitCode: 1}, &hostexec.ExitError{Cmd: c.String(), ExitCode: 1,
			Stderr: "losetup: /dev/loop3: detach failed: No such device or address\n"}
	}}
	if err := NewLocal(gone, nil).DetachLoop(ctx, "/dev/loop3"); err != nil {
		t.Errorf("detaching an unattached loop: %v, want nil", err)
	}

	busy := &hostexec.Recorder{Respond: func(c hostexec.Cmd) (hostexec.Result, error) {
		return hostexec.Result{ExitCode: 1}, &hostexec.ExitError{Cmd: c.String(), ExitCode: 1, Stderr: "losetup: permission denied"}
	}}
	if err := NewLocal(busy, nil).DetachLoop(ctx, "/dev/loop3"); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("err = %v, want the losetup failure", err)
	}

	for _, bad := range []string{"", "/dev/sda", "loop0", "/dev/loop", "/dev/loop1/../sda", "/dev/loop1 ", "/dev/loopx"} {
		rec := &hostexec.Recorder{}
		if err := NewLocal(rec, nil).DetachLoop(ctx, bad); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("DetachLoop(%q): err = %v, want ErrInvalidArgument", bad, err)
		}
		if len(rec.Calls()) != 0 {
			t.Errorf("DetachLoop(%q) ran a command", bad)
		}
	}
}

// dmRecorder answers blockdev with originSectors and fails the first command
// whose line starts with failOn.
func dmRecorder(originSectors int64, failOn string) *hostexec.Recorder {
	return &hostexec.Recorder{Respond: func(c hostexec.Cmd) (hostexec.Result, error) {
		if failOn != "" && strings.HasPrefix(c.String(), failOn) {
			return hostexec.Result{ExitCode: 1}, &hostexec.ExitError{Cmd: c.String(), ExitCode: 1, Stderr: "injected failure"}
		}
		if c.Name == "blockdev" {
			return hostexec.Result{Stdout: fmt.Appendf(nil, "%d\n", originSectors)}, nil
		}
		return hostexec.Result{}, nil
	}}
}

func TestCreateSnapshotSameSize(t *testing.T) {
	rec := dmRecorder(2048, "")
	spec := SnapshotSpec{Name: "banger-vm1-root", Origin: "/dev/loop1", COW: "/dev/loop2", SizeBytes: 2048 * 512}
	dev, err := NewLocal(rec, nil).createSnapshot(context.Background(), spec, dmYes)
	if err != nil {
		t.Fatal(err)
	}
	if dev != "/dev/mapper/banger-vm1-root" {
		t.Errorf("device = %q", dev)
	}
	want := []string{
		"blockdev --getsz /dev/loop1",
		"dmsetup create banger-vm1-root --table '0 2048 snapshot /dev/loop1 /dev/loop2 P 8'",
		"dmsetup mknodes banger-vm1-root",
	}
	if got := rec.Lines(); !slices.Equal(got, want) {
		t.Errorf("commands:\n got %q\nwant %q", got, want)
	}
}

func TestCreateSnapshotGrown(t *testing.T) {
	rec := dmRecorder(2048, "")
	spec := SnapshotSpec{Name: "banger-vm1-root", Origin: "/dev/loop1", COW: "/dev/loop2", SizeBytes: 8192 * 512}
	if _, err := NewLocal(rec, nil).createSnapshot(context.Background(), spec, dmYes); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"blockdev --getsz /dev/loop1",
		"dmsetup create --readonly banger-vm1-root-origin",
		"dmsetup create banger-vm1-root --table '0 8192 snapshot /dev/mapper/banger-vm1-root-origin /dev/loop2 P 8'",
		"dmsetup mknodes banger-vm1-root",
	}
	calls := rec.Calls()
	if got := rec.Lines(); !slices.Equal(got, want) {
		t.Fatalf("commands:\n got %q\nwant %q", got, want)
	}
	table, _ := io.ReadAll(calls[1].Stdin)
	if got, want := string(table), "0 2048 linear /dev/loop1 0\n2048 6144 zero\n"; got != want {
		t.Errorf("origin table = %q, want %q", got, want)
	}
}

func TestCreateSnapshotUndo(t *testing.T) {
	spec := SnapshotSpec{Name: "banger-x", Origin: "/dev/loop1", COW: "/dev/loop2", SizeBytes: 4096 * 512}
	cases := []struct {
		failOn string
		tail   []string // commands after the failing one
	}{
		{"blockdev", nil},
		{"dmsetup create --readonly banger-x-origin", nil},
		{"dmsetup create banger-x --table", []string{"dmsetup remove --retry banger-x-origin"}},
		{"dmsetup mknodes", []string{"dmsetup remove --retry banger-x", "dmsetup remove --retry banger-x-origin"}},
	}
	for _, tc := range cases {
		t.Run(tc.failOn, func(t *testing.T) {
			rec := dmRecorder(2048, tc.failOn)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			rec.Respond = func(inner func(hostexec.Cmd) (hostexec.Result, error)) func(hostexec.Cmd) (hostexec.Result, error) {
				return func(c hostexec.Cmd) (hostexec.Result, error) {
					r, err := inner(c)
					if err != nil {
						cancel() // undo must still run with a cancelled caller context
					}
					return r, err
				}
			}(rec.Respond)
			_, err := NewLocal(rec, nil).createSnapshot(ctx, spec, dmYes)
			if err == nil || !strings.Contains(err.Error(), "injected failure") {
				t.Fatalf("err = %v, want the injected failure", err)
			}
			lines := rec.Lines()
			i := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, tc.failOn) })
			if i < 0 {
				t.Fatalf("failing command never ran: %q", lines)
			}
			if got := lines[i+1:]; !slices.Equal(got, tc.tail) && !(len(got) == 0 && len(tc.tail) == 0) {
				t.Errorf("after failure ran %q, want %q", got, tc.tail)
			}
		})
	}
}

func TestCreateSnapshotNotSupported(t *testing.T) {
	spec := SnapshotSpec{Name: "banger-x", Origin: "/dev/loop1", COW: "/dev/loop2", SizeBytes: 512}
	rec := &hostexec.Recorder{}
	if _, err := NewLocal(rec, nil).createSnapshot(context.Background(), spec, dmNo); !errors.Is(err, ErrNotSupported) {
		t.Errorf("err = %v, want ErrNotSupported", err)
	}
	if len(rec.Calls()) != 0 {
		t.Errorf("ran %q without device-mapper", rec.Lines())
	}

	noTool := &hostexec.Recorder{Respond: func(c hostexec.Cmd) (hostexec.Result, error) {
		if c.Name == "dmsetup" {
			return hostexec.Result{ExitCode: -1}, fmt.Errorf("dmsetup: %w", hostexec.ErrNotFound)
		}
		return hostexec.Result{Stdout: []byte("1\n")}, nil
	}}
	if _, err := NewLocal(noTool, nil).createSnapshot(context.Background(), spec, dmYes); !errors.Is(err, ErrNotSupported) {
		t.Errorf("dmsetup missing: err = %v, want ErrNotSupported", err)
	}

	noDriver := &hostexec.Recorder{Respond: func(c hostexec.Cmd) (hostexec.Result, error) {
		if c.Name == "dmsetup" {
			return hostexec.Result{ExitCode: 1}, &hostexec.ExitError{Cmd: c.String(), ExitCode: 1,
				Stderr: "/dev/mapper/control: open failed: No such device\nFailure to communicate with kernel device-mapper driver.\n"}
		}
		return hostexec.Result{Stdout: []byte("1\n")}, nil
	}}
	if _, err := NewLocal(noDriver, nil).createSnapshot(context.Background(), spec, dmYes); !errors.Is(err, ErrNotSupported) {
		t.Errorf("no driver: err = %v, want ErrNotSupported", err)
	}
}

func TestCreateSnapshotValidation(t *testing.T) {
	good := SnapshotSpec{Name: "banger-x", Origin: "/dev/loop1", COW: "/dev/loop2", SizeBytes: 4096}
	bad := []func(*SnapshotSpec){
		func(s *SnapshotSpec) { s.Name = "x" },
		func(s *SnapshotSpec) { s.Name = "banger-" },
		func(s *SnapshotSpec) { s.Name = "banger-a/b" },
		func(s *SnapshotSpec) { s.Name = "banger-a b" },
		func(s *SnapshotSpec) { s.Name = "banger-" + strings.Repeat("a", 120) },
		func(s *SnapshotSpec) { s.Origin = "/dev/sda" },
		func(s *SnapshotSpec) { s.COW = "/dev/mapper/x" },
		func(s *SnapshotSpec) { s.COW = s.Origin },
		func(s *SnapshotSpec) { s.SizeBytes = 0 },
		func(s *SnapshotSpec) { s.SizeBytes = 1000 },
		func(s *SnapshotSpec) { s.SizeBytes = -512 },
	}
	for i, mutate := range bad {
		spec := good
		mutate(&spec)
		rec := &hostexec.Recorder{}
		if _, err := NewLocal(rec, nil).createSnapshot(context.Background(), spec, dmYes); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("case %d %+v: err = %v, want ErrInvalidArgument", i, spec, err)
		}
		if len(rec.Calls()) != 0 {
			t.Errorf("case %d ran commands", i)
		}
	}
}

func TestRemoveSnapshot(t *testing.T) {
	ctx := context.Background()
	rec := &hostexec.Recorder{}
	if err := NewLocal(rec, nil).removeSnapshot(ctx, "banger-x", dmYes); err != nil {
		t.Fatal(err)
	}
	want := []string{"dmsetup remove --retry banger-x", "dmsetup remove --retry banger-x-origin"}
	if got := rec.Lines(); !slices.Equal(got, want) {
		t.Errorf("commands = %q, want %q", got, want)
	}

	absent := &hostexec.Recorder{Respond: func(c hostexec.Cmd) (hostexec.Result, error) {
		return hostexec.Result{ExitCode: 1}, &hostexec.ExitError{Cmd: c.String(), ExitCode: 1,
			Stderr: "device-mapper: remove ioctl on banger-x  failed: No such device or address\nCommand failed.\n"}
	}}
	if err := NewLocal(absent, nil).removeSnapshot(ctx, "banger-x", dmYes); err != nil {
		t.Errorf("removing absent devices: %v, want nil", err)
	}

	// A busy snapshot is an error, and the helper device is still tried.
	busy := &hostexec.Recorder{Respond: func(c hostexec.Cmd) (hostexec.Result, error) {
		if slices.Contains(c.Args, "banger-x") {
			return hostexec.Result{ExitCode: 1}, &hostexec.ExitError{Cmd: c.String(), ExitCode: 1, Stderr: "Device or resource busy"}
		}
		return hostexec.Result{}, nil
	}}
	if err := NewLocal(busy, nil).removeSnapshot(ctx, "banger-x", dmYes); err == nil || !strings.Contains(err.Error(), "busy") {
		t.Errorf("err = %v, want busy", err)
	}
	if n := len(busy.Calls()); n != 2 {
		t.Errorf("ran %d commands, want 2", n)
	}

	none := &hostexec.Recorder{}
	if err := NewLocal(none, nil).removeSnapshot(ctx, "banger-x", dmNo); err != nil || len(none.Calls()) != 0 {
		t.Errorf("without device-mapper: err = %v, commands %q; want nil and none", err, none.Lines())
	}
	if err := NewLocal(none, nil).RemoveSnapshot(ctx, "lvm-root"); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("foreign name: err = %v, want ErrInvalidArgument", err)
	}
}

func FuzzValidateDMName(f *testing.F) {
	for _, s := range []string{"banger-x", "banger-", "x", "banger-a/b", "banger-../../x", "banger-\n", "banger-ü"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if ValidateDMName(name) != nil {
			return
		}
		if !strings.HasPrefix(name, DMNamePrefix) || strings.ContainsAny(name, "/ \t\n\x00") || name == "." || name == ".." ||
			len(name+dmOriginSuffix) > dmMaxName {
			t.Fatalf("accepted %q", name)
		}
	})
}

func FuzzValidateLoopDevice(f *testing.F) {
	for _, s := range []string{"/dev/loop0", "/dev/loop", "/dev/loop1/../sda", "/dev/loop12\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, dev string) {
		if ValidateLoopDevice(dev) != nil {
			return
		}
		rest, ok := strings.CutPrefix(dev, "/dev/loop")
		if !ok || rest == "" || strings.Trim(rest, "0123456789") != "" {
			t.Fatalf("accepted %q", dev)
		}
	})
}

// TestLocalLoopRoundTrip attaches a real loop device read-only and detaches
// it twice.
func TestLocalLoopRoundTrip(t *testing.T) {
	testreq.Root(t)
	testreq.Tools(t, "losetup")
	ctx := context.Background()
	file := tempFile(t)
	l := NewLocal(hostexec.Real{}, nil)
	dev, err := l.AttachLoop(ctx, LoopSpec{File: file, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.DetachLoop(context.Background(), dev) })
	sys := filepath.Join("/sys/block", filepath.Base(dev))
	backing, err := os.ReadFile(filepath.Join(sys, "loop", "backing_file"))
	if err != nil || strings.TrimSpace(string(backing)) != file {
		t.Errorf("backing file = %q (%v), want %s", backing, err, file)
	}
	if ro, _ := os.ReadFile(filepath.Join(sys, "ro")); strings.TrimSpace(string(ro)) != "1" {
		t.Errorf("loop is not read-only: ro=%q", ro)
	}
	for i := range 2 {
		if err := l.DetachLoop(ctx, dev); err != nil {
			t.Fatalf("detach #%d: %v", i+1, err)
		}
	}
	if _, err := os.Stat(filepath.Join(sys, "loop", "backing_file")); err == nil {
		t.Errorf("%s still attached", dev)
	}
}
