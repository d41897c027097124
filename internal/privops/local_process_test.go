package privops

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bangerdev/banger/internal/model"
)

func TestValidateLaunchSpecRejectsHostileInput(t *testing.T) {
	good := LaunchSpec{Argv: []string{"/usr/bin/qemu-system-x86_64", "-m", "512"}, Dir: "/run/x", LogPath: "/run/x/vm.log", UID: -1, GID: -1}
	if err := ValidateLaunchSpec(good); err != nil {
		t.Fatalf("good spec refused: %v", err)
	}
	for _, ok := range []string{"firecracker", "/opt/fc/firecracker-v1.14.1-x86_64", "jailer", "qemu-system-aarch64"} {
		s := good
		s.Argv = []string{ok}
		if err := ValidateLaunchSpec(s); err != nil {
			t.Errorf("%s refused: %v", ok, err)
		}
	}
	cases := map[string]func(*LaunchSpec){
		"empty argv":      func(s *LaunchSpec) { s.Argv = nil },
		"shell":           func(s *LaunchSpec) { s.Argv = []string{"/bin/sh", "-c", "id"} },
		"lookalike":       func(s *LaunchSpec) { s.Argv = []string{"/tmp/firecrackerx;rm"} },
		"qemu-img":        func(s *LaunchSpec) { s.Argv = []string{"qemu-img"} },
		"nul in arg":      func(s *LaunchSpec) { s.Argv = []string{"firecracker", "a\x00b"} },
		"relative dir":    func(s *LaunchSpec) { s.Dir = "run/x" },
		"unclean log":     func(s *LaunchSpec) { s.LogPath = "/run/x/../../etc/shadow" },
		"relative pid":    func(s *LaunchSpec) { s.PIDFile = "vm.pid" },
		"half creds":      func(s *LaunchSpec) { s.UID = 1000 },
		"negative uid":    func(s *LaunchSpec) { s.UID, s.GID = -5, -5 },
		"env without key": func(s *LaunchSpec) { s.Env = []string{"=x"} },
		"env no equals":   func(s *LaunchSpec) { s.Env = []string{"LD_PRELOAD"} },
	}
	for name, mut := range cases {
		s := good
		s.Argv = append([]string(nil), good.Argv...)
		mut(&s)
		if err := ValidateLaunchSpec(s); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%s: got %v, want ErrInvalidArgument", name, err)
		}
	}
}

func TestSelfDaemonizing(t *testing.T) {
	for argv, want := range map[string]bool{
		"jailer --id a --daemonize -- --api-sock x":  true,
		"jailer --id a -- --daemonize":               false,
		"firecracker --daemonize":                    false,
		"/usr/bin/jailer-v1.14.1 --daemonize --id a": true,
		"jailer --id a":                              false,
	} {
		if got := selfDaemonizing(strings.Fields(argv)); got != want {
			t.Errorf("%q: got %v want %v", argv, got, want)
		}
	}
}

// fakeVMM writes a shell script named like a VMM binary that logs its args
// and sleeps.
func fakeVMM(t *testing.T, name string) string {
	t.Helper()
	dir := t.TempDir()
	p := filepath.Join(dir, name)
	script := "#!/bin/sh\necho \"fake vmm started: $*\"\necho to-stderr >&2\nwhile :; do sleep 1; done\n"
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLaunchVMMDetachesAndSignalVerifiesIdentity(t *testing.T) {
	l := NewLocal(nil, nil)
	bin := fakeVMM(t, "qemu-system-fake")
	dir := t.TempDir()
	logPath := filepath.Join(dir, "vm.log")
	pidFile := filepath.Join(dir, "vm.pid")
	marker := filepath.Join(dir, "qmp.sock")
	if err := os.WriteFile(logPath, []byte("previous line\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	pid, err := l.LaunchVMM(ctx, LaunchSpec{Argv: []string{bin, "-qmp", marker}, Dir: dir, LogPath: logPath, PIDFile: pidFile, UID: -1, GID: -1})
	if err != nil {
		t.Fatal(err)
	}
	id := ProcessIdentity{PID: pid, Comm: "qemu-system-fake", Marker: marker}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })

	if data, err := os.ReadFile(pidFile); err != nil || strings.TrimSpace(string(data)) != strconv.Itoa(pid) {
		t.Fatalf("pid file = %q, %v; want %d", data, err, pid)
	}
	if sid, err := unix.Getsid(pid); err != nil || sid != pid {
		t.Errorf("getsid = %d, %v; want own session %d", sid, err, pid)
	}
	if fd0, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/fd/0"); err != nil || fd0 != os.DevNull {
		t.Errorf("stdin = %q, %v; want /dev/null", fd0, err)
	}
	waitFor(t, func() bool {
		b, _ := os.ReadFile(logPath)
		return strings.Contains(string(b), "to-stderr")
	})
	b, _ := os.ReadFile(logPath)
	if !strings.HasPrefix(string(b), "previous line\nfake vmm started: -qmp "+marker) {
		t.Errorf("log not appended in order:\n%s", b)
	}
	if err := VerifyProcess(id); err != nil {
		t.Fatalf("verify: %v", err)
	}

	// Wrong evidence: the process must not be signalled.
	for name, bad := range map[string]ProcessIdentity{
		"other marker": {PID: pid, Comm: id.Comm, Marker: "/run/other/qmp.sock"},
		"other comm":   {PID: pid, Comm: "firecracker", Marker: marker},
	} {
		if err := l.SignalVMM(ctx, bad, syscall.SIGKILL); !errors.Is(err, model.ErrNotRunning) {
			t.Errorf("%s: SignalVMM = %v, want ErrNotRunning", name, err)
		}
	}
	if err := VerifyProcess(id); err != nil {
		t.Fatalf("process died after refused signals: %v", err)
	}
	if err := l.SignalVMM(ctx, id, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// The launcher's goroutine reaps the child: /proc/PID disappears, no zombie.
	waitFor(t, func() bool { _, err := os.Stat("/proc/" + strconv.Itoa(pid)); return err != nil })
	if err := l.SignalVMM(ctx, id, syscall.SIGTERM); !errors.Is(err, model.ErrNotRunning) {
		t.Errorf("signal after exit = %v, want ErrNotRunning", err)
	}
}

func TestLaunchVMMErrors(t *testing.T) {
	l := NewLocal(nil, nil)
	dir := t.TempDir()
	_, err := l.LaunchVMM(context.Background(), LaunchSpec{Argv: []string{"qemu-system-doesnotexist"}, Dir: dir, LogPath: filepath.Join(dir, "log"), UID: -1, GID: -1})
	if err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("missing binary: %v", err)
	}
	bin := fakeVMM(t, "firecracker")
	_, err = l.LaunchVMM(context.Background(), LaunchSpec{Argv: []string{bin}, Dir: filepath.Join(dir, "nope"), LogPath: filepath.Join(dir, "log"), UID: -1, GID: -1})
	if err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("missing dir: %v", err)
	}
	if err := l.SignalVMM(context.Background(), ProcessIdentity{PID: 1, Marker: "x"}, syscall.SIGKILL); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("pid 1: %v", err)
	}
	if err := l.SignalVMM(context.Background(), ProcessIdentity{PID: 1234}, syscall.SIGKILL); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("no marker: %v", err)
	}
}

func TestVerifyProcessSelf(t *testing.T) {
	self := os.Getpid()
	exe, _ := os.Executable()
	if err := VerifyProcess(ProcessIdentity{PID: self, Comm: exe, Marker: "-test."}); err != nil {
		t.Errorf("self: %v", err)
	}
	if err := VerifyProcess(ProcessIdentity{PID: self, Comm: exe, Marker: "no-such-marker-xyz"}); !errors.Is(err, model.ErrNotRunning) {
		t.Errorf("wrong marker: %v", err)
	}
	if err := VerifyProcess(ProcessIdentity{PID: 1 << 22, Marker: "x"}); !errors.Is(err, model.ErrNotRunning) {
		t.Errorf("dead pid: %v", err)
	}
	if got := ProcessComm("/usr/bin/qemu-system-x86_64"); got != "qemu-system-x86" {
		t.Errorf("comm = %q", got)
	}
	if got := procState([]byte("12 (a) b) Z 1 2")); got != 'Z' {
		t.Errorf("state = %q", got)
	}
}

func TestChownPath(t *testing.T) {
	l := NewLocal(nil, nil)
	dir := t.TempDir()
	f := filepath.Join(dir, "sock")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink("/etc/passwd", link); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := l.ChownPath(ctx, link, os.Getuid(), os.Getgid()); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("symlink: %v", err)
	}
	if err := l.ChownPath(ctx, "rel/path", 0, 0); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("relative: %v", err)
	}
	if err := l.ChownPath(ctx, f, -1, 0); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("negative uid: %v", err)
	}
	if err := l.ChownPath(ctx, f, os.Getuid(), os.Getgid()); err != nil {
		t.Errorf("own file: %v", err)
	}
	if os.Geteuid() == 0 {
		if err := l.ChownPath(ctx, f, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		st, _ := os.Stat(f)
		if st.Sys().(*syscall.Stat_t).Uid != 65534 {
			t.Errorf("uid not changed")
		}
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
