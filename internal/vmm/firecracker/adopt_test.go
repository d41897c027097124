package firecracker

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/privops"
	"github.com/bangerdev/banger/internal/vmm"
)

// jailFixture is a jailer-mode driver whose "firecracker" is a copy of
// sleep (so its comm is firecracker), with the VM's runtime dir and jail
// laid out as Start leaves them.
type jailFixture struct {
	d      *Driver
	spec   vmm.Spec
	l      layout
	binary string
}

func newJailFixture(t *testing.T) *jailFixture {
	t.Helper()
	dir := t.TempDir()
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	data, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "bin", "firecracker")
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{Binary: bin, Jailer: &JailerConfig{ChrootBase: filepath.Join(dir, "jail")}}, privops.NewLocal(nil, nil), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	spec := vmm.Spec{VMID: "vm-adopt", RuntimeDir: filepath.Join(dir, "run")}
	l, err := d.layout(spec)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{spec.RuntimeDir, filepath.Join(l.chroot, "run")} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Join(l.chroot, JailedSocket), l.socket); err != nil {
		t.Fatal(err)
	}
	return &jailFixture{d: d, spec: spec, l: l, binary: bin}
}

// start runs prog (a long sleep) and returns its pid; killed at cleanup.
func (f *jailFixture) start(t *testing.T, prog string) int {
	t.Helper()
	cmd := exec.Command(prog, "300")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd.Process.Pid
}

func (f *jailFixture) writePID(t *testing.T, content string) {
	t.Helper()
	if err := os.WriteFile(f.l.pidFile, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestFindJailedAdoptsTheJailersFirecracker(t *testing.T) {
	f := newJailFixture(t)
	pid := f.start(t, f.binary)
	f.writePID(t, strconv.Itoa(pid))
	h, err := f.d.Find(t.Context(), f.spec)
	if err != nil {
		t.Fatal(err)
	}
	if h.PID != pid || h.Chroot != f.l.chroot || h.APISocket != f.l.socket || h.PIDFile != f.l.pidFile {
		t.Errorf("handle %+v", h)
	}
}

func TestFindJailedWhitespaceAroundThePID(t *testing.T) {
	f := newJailFixture(t)
	pid := f.start(t, f.binary)
	f.writePID(t, " \t"+strconv.Itoa(pid)+"\n\n")
	if h, err := f.d.Find(t.Context(), f.spec); err != nil || h.PID != pid {
		t.Fatalf("find: %+v %v", h, err)
	}
}

func expectDead(t *testing.T, f *jailFixture, why string) {
	t.Helper()
	h, err := f.d.Find(t.Context(), f.spec)
	if !errors.Is(err, model.ErrNotRunning) {
		t.Fatalf("%s: want ErrNotRunning, got %+v %v", why, h, err)
	}
	t.Logf("%s: %v", why, err)
}

func TestFindJailedMissingPIDFile(t *testing.T) {
	f := newJailFixture(t)
	f.start(t, f.binary)
	expectDead(t, f, "missing pidfile")
}

func TestFindJailedGarbagePIDFile(t *testing.T) {
	for _, garbage := range []string{"", "abc", "12ab", "-3", "1", "99999999999999999999", "\x00\x01"} {
		f := newJailFixture(t)
		f.writePID(t, garbage)
		expectDead(t, f, "garbage "+strconv.Quote(garbage))
	}
}

func TestFindJailedWrongComm(t *testing.T) {
	f := newJailFixture(t)
	sleep, _ := exec.LookPath("sleep")
	pid := f.start(t, sleep)
	f.writePID(t, strconv.Itoa(pid))
	expectDead(t, f, "wrong comm")
}

// A stale pidfile whose pid now belongs to a newer firecracker process
// (pid reuse): the process started after the pidfile was written.
func TestFindJailedStalePID(t *testing.T) {
	f := newJailFixture(t)
	pid := f.start(t, f.binary)
	f.writePID(t, strconv.Itoa(pid))
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(f.l.pidFile, old, old); err != nil {
		t.Fatal(err)
	}
	expectDead(t, f, "stale pid")

	// A pid that no longer exists at all.
	f2 := newJailFixture(t)
	cmd := exec.Command(f2.binary, "0")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	f2.writePID(t, strconv.Itoa(cmd.Process.Pid))
	expectDead(t, f2, "exited pid")
}

func TestFindJailedNonSymlinkAPISocket(t *testing.T) {
	f := newJailFixture(t)
	pid := f.start(t, f.binary)
	f.writePID(t, strconv.Itoa(pid))
	if err := os.Remove(f.l.socket); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.l.socket, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	expectDead(t, f, "regular file as api socket")

	// A unix socket there is not banger's link either.
	_ = os.Remove(f.l.socket)
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: f.l.socket}); err != nil {
		t.Fatal(err)
	}
	expectDead(t, f, "socket as api socket")

	// A symlink elsewhere.
	_ = os.Remove(f.l.socket)
	if err := os.Symlink("/tmp/elsewhere.sock", f.l.socket); err != nil {
		t.Fatal(err)
	}
	expectDead(t, f, "symlink out of the jail")

	// Missing link.
	_ = os.Remove(f.l.socket)
	expectDead(t, f, "no api socket link")
}
