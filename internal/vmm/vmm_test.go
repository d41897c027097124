package vmm

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/privops"
)

func validSpec() Spec {
	return Spec{VMID: "a1b2", RuntimeDir: "/run/b/a1b2", Kernel: "/k", VCPU: 1, MemoryMiB: 128, LogPath: "/run/b/a1b2/vm.log",
		Drives: []Drive{{ID: "root", Path: "/r", Root: true}, {ID: "work", Path: "/w"}}, Net: []NetIface{{Tap: "bgtap0"}}, UID: -1, GID: -1}
}

func TestSpecValidate(t *testing.T) {
	if err := validSpec().Validate(); err != nil {
		t.Fatal(err)
	}
	bad := map[string]func(*Spec){
		"id with slash":    func(s *Spec) { s.VMID = "a/b" },
		"id too long":      func(s *Spec) { s.VMID = strings.Repeat("a", 65) },
		"relative dir":     func(s *Spec) { s.RuntimeDir = "run" },
		"no kernel":        func(s *Spec) { s.Kernel = "" },
		"zero vcpu":        func(s *Spec) { s.VCPU = 0 },
		"tiny memory":      func(s *Spec) { s.MemoryMiB = 1 },
		"relative log":     func(s *Spec) { s.LogPath = "vm.log" },
		"root not first":   func(s *Spec) { s.Drives[0].Root, s.Drives[1].Root = false, true },
		"duplicate drive":  func(s *Spec) { s.Drives[1].ID = "root" },
		"long tap":         func(s *Spec) { s.Net[0].Tap = "a-very-long-tap-name" },
		"vsock half set":   func(s *Spec) { s.VsockCID = 3 },
		"vsock cid 2":      func(s *Spec) { s.VsockCID, s.VsockPath = 2, "/v" },
		"drive empty path": func(s *Spec) { s.Drives[1].Path = "" },
	}
	for name, mut := range bad {
		s := validSpec()
		s.Drives = append([]Drive(nil), s.Drives...)
		s.Net = append([]NetIface(nil), s.Net...)
		mut(&s)
		if err := s.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestSocketPath(t *testing.T) {
	if p, err := SocketPath("/run/b", "qmp.sock"); err != nil || p != "/run/b/qmp.sock" {
		t.Errorf("%q %v", p, err)
	}
	if _, err := SocketPath("/"+strings.Repeat("d", 100), "qmp.sock"); err == nil {
		t.Error("long path accepted")
	}
}

func TestReadPIDFileAndFind(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "vm.pid")
	if _, err := ReadPIDFile(p); !errors.Is(err, model.ErrNotRunning) {
		t.Errorf("missing: %v", err)
	}
	for _, garbage := range []string{"", "abc", "1", "-5"} {
		os.WriteFile(p, []byte(garbage), 0o644)
		if _, err := ReadPIDFile(p); !errors.Is(err, model.ErrNotRunning) {
			t.Errorf("%q: %v", garbage, err)
		}
	}
	cmd := exec.Command("sh", "-c", "sleep 30; :", "marker-for-find")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); _ = cmd.Wait() }()
	os.WriteFile(p, []byte(" 123\n"), 0o644)
	os.WriteFile(p, []byte(itoa(cmd.Process.Pid)+"\n"), 0o644)
	if pid, err := FindProcess(p, "sh", "marker-for-find"); err != nil || pid != cmd.Process.Pid {
		t.Errorf("find: %d %v", pid, err)
	}
	if _, err := FindProcess(p, "qemu-system-x86_64", "marker-for-find"); !errors.Is(err, model.ErrNotRunning) {
		t.Errorf("wrong comm: %v", err)
	}
	if _, err := FindProcess(p, "sh", "other-marker"); !errors.Is(err, model.ErrNotRunning) {
		t.Errorf("wrong marker: %v", err)
	}
}

func itoa(i int) string { return fmtInt(i) }

func fmtInt(i int) string {
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{byte('0' + i%10)}, b...)
	}
	return string(b)
}

// TestWaitExitNonChild waits on a process that is not our child (a
// grandchild whose parent exited) and on an identity that no longer matches.
func TestWaitExitNonChild(t *testing.T) {
	out, err := exec.Command("sh", "-c", "sleep 2 >/dev/null 2>&1 & echo $!").Output()
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	for _, c := range strings.TrimSpace(string(out)) {
		pid = pid*10 + int(c-'0')
	}
	id := privops.ProcessIdentity{PID: pid, Comm: "sleep", Marker: "sleep"}
	if !Alive(id) {
		t.Fatal("grandchild not alive")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := WaitExit(ctx, id); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("early wait: %v", err)
	}
	start := time.Now()
	if err := WaitExit(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("wait took %s", d)
	}
	if err := WaitExit(context.Background(), privops.ProcessIdentity{PID: os.Getpid(), Comm: "x", Marker: "not-us"}); err != nil {
		t.Errorf("mismatched identity should count as exited: %v", err)
	}
}

func TestLogTail(t *testing.T) {
	p := filepath.Join(t.TempDir(), "log")
	var b strings.Builder
	for i := range 100 {
		b.WriteString("line " + fmtInt(i) + "\n")
	}
	os.WriteFile(p, []byte(b.String()), 0o644)
	if got := LogTail(p, 3); got != "line 97\nline 98\nline 99" {
		t.Errorf("tail %q", got)
	}
	if LogTail(filepath.Join(t.TempDir(), "none"), 3) != "" {
		t.Error("tail of a missing file")
	}
	err := WithLogTail(errors.New("boom"), p)
	if !strings.Contains(err.Error(), "boom\n--- last lines of") || !strings.Contains(err.Error(), "line 99") {
		t.Errorf("%v", err)
	}
}

func TestWaitWithoutProcessReturnsAtOnce(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // a wait that had to block would fail with ctx.Err()
	for _, h := range []*Handle{nil, {PID: 0, Comm: "x", Marker: "y"}} {
		if err := Wait(ctx, h); err != nil {
			t.Errorf("Wait(%+v) = %v, want nil", h, err)
		}
	}
}
