package privops

// Regression tests for the root helper's path and process handling, each
// reproducing an escalation the owner (uid 4242 here) had before the
// operations moved onto descriptors (beneath.go) and SignalVMM learned who
// it may signal. They need root.

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/testreq"
)

const hostileUID = 4242

// fakeVMM copies /bin/sleep to a world-readable directory as a VMM-looking
// binary (qemu-system-fake) and returns its path.
func fakeVMMBinary(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "banger-fakevmm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open("/bin/sleep")
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	bin := filepath.Join(dir, "qemu-system-fake")
	dst, err := os.OpenFile(bin, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	dst.Close()
	return bin
}

// managedRoot makes a managed root the owner controls (owned by the
// hostile uid, as /var/lib/banger is in system mode) and a victim file
// outside it that only root may write.
func managedRoot(t *testing.T) (root, victim string) {
	t.Helper()
	base := t.TempDir()
	root = filepath.Join(base, "state")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(root, hostileUID, hostileUID); err != nil {
		t.Fatal(err)
	}
	victim = filepath.Join(base, "shadow")
	if err := os.WriteFile(victim, []byte("root's secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return root, victim
}

func assertVictim(t *testing.T, victim string) {
	t.Helper()
	data, err := os.ReadFile(victim)
	if err != nil || string(data) != "root's secret\n" {
		t.Errorf("victim %s was changed: %q %v", victim, data, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(victim, &st); err == nil && (st.Uid != 0 || st.Gid != 0) {
		t.Errorf("victim %s was given to %d:%d", victim, st.Uid, st.Gid)
	}
}

func helperLocal(root string) *Local {
	l := NewLocal(hostexec.Real{}, nil)
	l.Roots = []string{root}
	return l
}

func launchSpec(bin, vmDir string) LaunchSpec {
	return LaunchSpec{Argv: []string{bin, "30"}, Dir: filepath.Dir(bin), LogPath: filepath.Join(vmDir, "console.log"),
		PIDFile: filepath.Join(vmDir, "qemu.pid"), UID: hostileUID, GID: hostileUID}
}

func killPID(pid int) {
	if pid > 0 {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// #1: LaunchVMM wrote <pid_file>.tmp as root, following a symlink the
// owner planted there.
func TestLaunchPIDFileNeverFollowsPlantedSymlinks(t *testing.T) {
	testreq.Root(t)
	root, victim := managedRoot(t)
	vmDir := filepath.Join(root, "vm")
	if err := os.Mkdir(vmDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, planted := range []string{"qemu.pid.tmp", "qemu.pid"} {
		if err := os.Symlink(victim, filepath.Join(vmDir, planted)); err != nil {
			t.Fatal(err)
		}
	}
	dangling := filepath.Join(filepath.Dir(victim), "created-by-root")
	if err := os.Symlink(dangling, filepath.Join(vmDir, "console.log")); err != nil {
		t.Fatal(err)
	}
	spec := launchSpec(fakeVMMBinary(t), vmDir)
	// The log is a planted symlink: refused.
	pid, err := helperLocal(root).LaunchVMM(context.Background(), spec)
	killPID(pid)
	if err == nil || !errors.Is(err, ErrUnsafePath) {
		t.Errorf("launch with a symlinked log = %d, %v; want ErrUnsafePath", pid, err)
	}
	if _, err := os.Lstat(dangling); !os.IsNotExist(err) {
		t.Errorf("root created %s through a dangling symlink", dangling)
	}
	// With a real log, the pid file replaces the symlinks instead of
	// writing through them.
	os.Remove(filepath.Join(vmDir, "console.log"))
	pid, err = helperLocal(root).LaunchVMM(context.Background(), spec)
	defer killPID(pid)
	if err != nil {
		t.Fatal(err)
	}
	assertVictim(t, victim)
	data, err := os.ReadFile(filepath.Join(vmDir, "qemu.pid"))
	fi, lerr := os.Lstat(filepath.Join(vmDir, "qemu.pid"))
	if err != nil || lerr != nil || !fi.Mode().IsRegular() || string(data) != strconv.Itoa(pid)+"\n" {
		t.Errorf("pid file: %q %v (%v)", data, err, fi)
	}
}

// #3: the log was opened O_NOFOLLOW on its last component only, so a
// parent directory swapped for a symlink handed the owner any file with
// the log's basename.
func TestLaunchLogRefusesSymlinkedParent(t *testing.T) {
	testreq.Root(t)
	root, victim := managedRoot(t)
	outside := filepath.Dir(victim)
	if err := os.Rename(victim, filepath.Join(outside, "console.log")); err != nil {
		t.Fatal(err)
	}
	victim = filepath.Join(outside, "console.log")
	if err := os.Symlink(outside, filepath.Join(root, "vm")); err != nil {
		t.Fatal(err)
	}
	pid, err := helperLocal(root).LaunchVMM(context.Background(), launchSpec(fakeVMMBinary(t), filepath.Join(root, "vm")))
	killPID(pid)
	if err == nil || !errors.Is(err, ErrUnsafePath) {
		t.Errorf("launch through a symlinked directory = %d, %v; want ErrUnsafePath", pid, err)
	}
	assertVictim(t, victim)
}

// #2: ChownPath was checked by name and then Lchown'ed by name: swapping a
// parent for a symlink between the two (a RENAME_EXCHANGE loop) chowned any
// host file to the owner. The helper's own sequence (Policy check, then
// Local) is hammered while another goroutine swaps.
func TestChownPathSurvivesParentSwapRace(t *testing.T) {
	testreq.Root(t)
	root, victim := managedRoot(t)
	real := filepath.Join(root, "a")
	if err := os.Mkdir(real, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(real, "shadow"), []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(root, "b")
	if err := os.Symlink(filepath.Dir(victim), link); err != nil {
		t.Fatal(err)
	}
	p := &Policy{OwnerUID: hostileUID, OwnerGID: hostileUID, ManagedRoots: []string{root}}
	l := helperLocal(root)
	var stop atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		for !stop.Load() {
			_ = unix.Renameat2(unix.AT_FDCWD, real, unix.AT_FDCWD, link, unix.RENAME_EXCHANGE)
		}
	}()
	target := filepath.Join(real, "shadow")
	deadline := time.Now().Add(3 * time.Second)
	tries := 0
	for ; tries < 20000 && time.Now().Before(deadline); tries++ {
		if p.ValidateChown(target, hostileUID, hostileUID) == nil {
			_ = l.ChownPath(context.Background(), target, hostileUID, hostileUID)
		}
	}
	stop.Store(true)
	<-done
	t.Logf("%d chown attempts during the swap loop", tries)
	assertVictim(t, victim)
}

// A hard link to a file elsewhere is refused by ChownPath.
func TestChownPathRefusesHardLinks(t *testing.T) {
	testreq.Root(t)
	root, victim := managedRoot(t)
	if err := os.Link(victim, filepath.Join(root, "log")); err != nil {
		t.Skipf("cannot hard-link across the test dirs: %v", err)
	}
	err := helperLocal(root).ChownPath(context.Background(), filepath.Join(root, "log"), hostileUID, hostileUID)
	if !errors.Is(err, ErrUnsafePath) {
		t.Errorf("chown of a hard link = %v, want ErrUnsafePath", err)
	}
	assertVictim(t, victim)
}

// #5: SignalVMM killed any process whose comm was a VMM's and whose
// command line held the marker, whoever ran it: here a root-owned "qemu"
// banger never started.
func TestSignalVMMOnlyOwnersVMMs(t *testing.T) {
	testreq.Root(t)
	bin := fakeVMMBinary(t)
	marker := "/run/banger/vms/abcd/qmp.sock"
	// argv[0] carries the marker (sleep takes only durations).
	cmd := &exec.Cmd{Path: bin, Args: []string{marker, "30"}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	waitCmdline(t, cmd.Process.Pid, marker)
	l := NewLocal(hostexec.Real{}, nil)
	l.SignalOwnerUID, l.VMMPaths = hostileUID, []string{bin}
	id := ProcessIdentity{PID: cmd.Process.Pid, Comm: "qemu-system-fake", Marker: marker}
	err := l.SignalVMM(context.Background(), id, syscall.SIGKILL)
	if err == nil || !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("signal of root's process = %v, want a refusal", err)
	}
	time.Sleep(50 * time.Millisecond)
	if err := syscall.Kill(cmd.Process.Pid, 0); err != nil {
		t.Errorf("root's process was killed: %v", err)
	}
	// The owner's own VMM (same binary, running as the owner) may be.
	own := &exec.Cmd{Path: bin, Args: []string{marker, "30"}}
	own.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: hostileUID, Gid: hostileUID}}
	if err := own.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = own.Process.Kill(); _ = own.Wait() }()
	id.PID = own.Process.Pid
	waitCmdline(t, id.PID, marker)
	if err := l.SignalVMM(context.Background(), id, syscall.SIGKILL); err != nil {
		t.Errorf("signal of the owner's VMM: %v", err)
	}
	// Another binary running as the owner (a shell, say) may not.
	l.VMMPaths = []string{"/usr/bin/qemu-system-x86_64"}
	other := &exec.Cmd{Path: bin, Args: []string{marker, "30"}}
	other.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: hostileUID, Gid: hostileUID}}
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = other.Process.Kill(); _ = other.Wait() }()
	id.PID = other.Process.Pid
	waitCmdline(t, id.PID, marker)
	if err := l.SignalVMM(context.Background(), id, syscall.SIGKILL); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("signal of a process running another binary = %v, want a refusal", err)
	}
}

// #12: a VMM binary that someone but root could replace is not run.
func TestLaunchRefusesReplaceableBinary(t *testing.T) {
	testreq.Root(t)
	root, _ := managedRoot(t)
	vmDir := filepath.Join(root, "vm")
	if err := os.Mkdir(vmDir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := fakeVMMBinary(t)
	for _, tc := range []struct {
		name  string
		setup func() func()
	}{
		{"group-writable binary", func() func() {
			_ = os.Chmod(bin, 0o775)
			return func() { _ = os.Chmod(bin, 0o755) }
		}},
		{"owner's binary", func() func() {
			_ = os.Chown(bin, hostileUID, hostileUID)
			return func() { _ = os.Chown(bin, 0, 0) }
		}},
		{"world-writable directory", func() func() {
			_ = os.Chmod(filepath.Dir(bin), 0o777)
			return func() { _ = os.Chmod(filepath.Dir(bin), 0o755) }
		}},
	} {
		undo := tc.setup()
		pid, err := helperLocal(root).LaunchVMM(context.Background(), launchSpec(bin, vmDir))
		killPID(pid)
		undo()
		if err == nil || !bytes.Contains([]byte(err.Error()), []byte("not a safe VMM binary")) {
			t.Errorf("%s: launch = %d, %v; want a refusal", tc.name, pid, err)
		}
	}
}

// waitCmdline waits until pid's command line shows marker (the exec is
// done).
func waitCmdline(t *testing.T, pid int, marker string) {
	t.Helper()
	for i := 0; i < 200; i++ {
		if b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline"); err == nil && bytes.Contains(b, []byte(marker)) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("pid %d never showed %s in its command line", pid, marker)
}

// #8: DetachLoop and CreateSnapshot took any /dev/loopN; now only free
// loops or loops backed by banger's own files.
func TestLoopDeviceMustBeBangers(t *testing.T) {
	sys := t.TempDir()
	back := func(n, file string) {
		d := filepath.Join(sys, "block", "loop"+n, "loop")
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "backing_file"), []byte(file+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	back("1", "/var/lib/banger/vms/x/root.cow")
	back("2", "/home/alice/disk.img")
	back("3", "/var/lib/banger/images/base.ext4 (deleted)")
	p := &Policy{ManagedRoots: []string{"/var/lib/banger"}, SysDir: sys}
	for dev, ok := range map[string]bool{"/dev/loop1": true, "/dev/loop2": false, "/dev/loop3": true, "/dev/loop9": true} {
		err := p.ValidateLoopDevice("device", dev)
		if (err == nil) != ok {
			t.Errorf("%s: %v, want ok=%v", dev, err, ok)
		}
		if !ok && !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%s: %v is not ErrInvalidArgument", dev, err)
		}
	}
	snap := SnapshotSpec{Name: DMNamePrefix + "x", Origin: "/dev/loop1", COW: "/dev/loop2", SizeBytes: 512}
	if err := p.ValidateSnapshot(snap); err == nil {
		t.Error("a snapshot over someone else's loop device was accepted")
	}
}

// #4: AttachLoop re-opened the checked path by name in losetup; now it
// opens the file once below the roots and hands losetup that descriptor.
func TestAttachLoopRefusesSymlinkedParent(t *testing.T) {
	root := t.TempDir()
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "disk.img"), make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(root, "vm")); err != nil {
		t.Fatal(err)
	}
	rec := &hostexec.Recorder{Respond: func(hostexec.Cmd) (hostexec.Result, error) {
		return hostexec.Result{Stdout: []byte("/dev/loop7\n")}, nil
	}}
	l := NewLocal(rec, nil)
	l.Roots = []string{root}
	_, err := l.AttachLoop(context.Background(), LoopSpec{File: filepath.Join(root, "vm", "disk.img")})
	if !errors.Is(err, ErrUnsafePath) || len(rec.Lines()) != 0 {
		t.Errorf("attach through a symlinked directory = %v (commands %q), want ErrUnsafePath and no losetup", err, rec.Lines())
	}
}
