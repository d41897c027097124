// Package vmmtest is the conformance suite every vmm.Driver passes. Run it
// from a test with a driver constructor and an Env describing the guest:
//
//	func TestConformance(t *testing.T) {
//		vmmtest.Run(t, func(t *testing.T) vmm.Driver { return newDriver(t) }, env)
//	}
//
// The suite starts its main guest from a helper subprocess (the same test
// binary re-run with -test.run for the calling test) and SIGKILLs that
// subprocess right after Start returns: everything that follows checks a
// guest whose starter is dead (it keeps running with the same pid, its
// console keeps being written, Find re-attaches by evidence). A second
// guest, started in-process and booting concurrently, serves the recycled
// pid and shutdown checks. Real-guest runs therefore cost two boots.
package vmmtest

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/privops"
	"github.com/bangerdev/banger/internal/vmm"
)

// Env describes the guest the suite boots.
type Env struct {
	Kernel, Initrd string
	Cmdline        string   // guest kernel arguments
	Marker         string   // console line proving the guest runs
	LogContains    []string // more strings the VM log must hold once Marker is there
	VCPU           int      // default 1
	MemoryMiB      int64    // default 256
	BootTimeout    time.Duration
	// ShutdownExits says the guest honours Driver.Shutdown by exiting; when
	// false the suite checks that the request is delivered and the VMM keeps
	// running until killed.
	ShutdownExits bool
}

const helperEnv = "VMMTEST_HELPER_SPEC"

// Run runs the conformance cases against the drivers newDriver returns.
func Run(t *testing.T, newDriver func(t *testing.T) vmm.Driver, env Env) {
	if env.VCPU == 0 {
		env.VCPU = 1
	}
	if env.MemoryMiB == 0 {
		env.MemoryMiB = 256
	}
	if env.BootTimeout == 0 {
		env.BootTimeout = 90 * time.Second
	}
	if raw := os.Getenv(helperEnv); raw != "" {
		helperMain(t, newDriver, raw)
		return
	}
	d := newDriver(t)

	t.Run("bad kernel path", func(t *testing.T) {
		spec := NewSpec(t, env, "bad")
		spec.Kernel = filepath.Join(spec.RuntimeDir, "no-such-kernel")
		h, err := d.Start(context.Background(), spec)
		if err == nil {
			_ = d.Kill(context.Background(), h, syscall.SIGKILL)
			t.Fatal("Start with a missing kernel succeeded")
		}
		if !strings.Contains(err.Error(), "no-such-kernel") {
			t.Errorf("error does not name the kernel path: %v", err)
		}
		if _, ferr := d.Find(context.Background(), spec); !errors.Is(ferr, model.ErrNotRunning) {
			t.Errorf("Find after failed start = %v, want ErrNotRunning", ferr)
		}
		if pids := ProcessesMentioning(spec.RuntimeDir); len(pids) > 0 {
			t.Errorf("failed Start left processes running: %v", pids)
		}
		t.Logf("error: %v", err)
	})
	if t.Failed() {
		return
	}

	specA := NewSpec(t, env, "a")
	hA, killedAt := StartInHelper(t, specA)
	t.Cleanup(func() { stop(d, hA) })
	logSizeAtKill := fileSize(hA.LogPath)

	// Guest C boots in-process, concurrently with A.
	specC := NewSpec(t, env, "c")
	hC, err := d.Start(context.Background(), specC)
	if err != nil {
		t.Fatalf("start second guest: %v", err)
	}
	t.Cleanup(func() { stop(d, hC) })
	checkHandle(t, d, hC, specC)

	t.Run("start to serial marker after the starter was SIGKILLed", func(t *testing.T) {
		off := WaitForLog(t, hA.LogPath, env.Marker, env.BootTimeout)
		if off >= logSizeAtKill {
			t.Logf("marker written %s after the starting process was killed (offset %d >= %d)", time.Since(killedAt).Round(time.Millisecond), off, logSizeAtKill)
		} else {
			t.Logf("marker was already on the console when the starter died (offset %d < %d); liveness checked below", off, logSizeAtKill)
		}
		if !vmm.Alive(hA.Identity()) {
			t.Fatal("vmm not alive after the marker")
		}
	})
	t.Run("find after the parent process exited", func(t *testing.T) {
		h, err := d.Find(context.Background(), specA)
		if err != nil {
			t.Fatalf("Find: %v", err)
		}
		if h.PID != hA.PID || h.APISocket != hA.APISocket || h.PIDFile != hA.PIDFile || h.Driver != d.Name() {
			t.Errorf("Find = %+v, started %+v", h, hA)
		}
		if os.Getppid() == h.PID {
			t.Error("impossible: vmm is our parent")
		}
	})
	t.Run("log file content", func(t *testing.T) {
		data, err := os.ReadFile(hA.LogPath)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range append([]string{env.Marker}, env.LogContains...) {
			if !strings.Contains(string(data), want) {
				t.Errorf("log %s lacks %q; tail:\n%s", hA.LogPath, want, vmm.LogTail(hA.LogPath, 15))
			}
		}
	})
	t.Run("kill", func(t *testing.T) {
		if err := d.Kill(context.Background(), hA, syscall.SIGTERM); err != nil {
			t.Fatalf("Kill: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := d.Wait(ctx, hA); err != nil {
			t.Fatalf("Wait after SIGTERM: %v", err)
		}
		if vmm.Alive(hA.Identity()) {
			t.Fatal("vmm alive after Wait returned")
		}
		if _, err := d.Find(context.Background(), specA); !errors.Is(err, model.ErrNotRunning) {
			t.Errorf("Find after kill = %v, want ErrNotRunning", err)
		}
	})
	t.Run("double stop", func(t *testing.T) {
		ctx := context.Background()
		if err := d.Kill(ctx, hA, syscall.SIGKILL); err != nil {
			t.Errorf("second Kill: %v", err)
		}
		if err := d.Shutdown(ctx, hA); err != nil {
			t.Errorf("Shutdown of a stopped vm: %v", err)
		}
		wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		if err := d.Wait(wctx, hA); err != nil {
			t.Errorf("Wait on a stopped vm: %v", err)
		}
	})
	t.Run("find refuses a recycled pid", func(t *testing.T) {
		if hA.PIDFile == "" {
			t.Fatal("handle has no pid file")
		}
		// A's VMM is gone; its pid file now names other live processes:
		// an unrelated one (other comm) and guest C's VMM (same comm, other VM).
		sleeper := exec.Command("sleep", "60")
		if err := sleeper.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = sleeper.Process.Kill(); _ = sleeper.Wait() }()
		for name, pid := range map[string]int{"unrelated process": sleeper.Process.Pid, "another vm's vmm": hC.PID} {
			if err := os.WriteFile(hA.PIDFile, []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			h, err := d.Find(context.Background(), specA)
			if !errors.Is(err, model.ErrNotRunning) {
				t.Errorf("%s (pid %d): Find = %+v, %v; want ErrNotRunning", name, pid, h, err)
			}
			// Kill through the stale handle must not touch the other process.
			stale := *hA
			stale.PID = pid
			if err := d.Kill(context.Background(), &stale, syscall.SIGKILL); err != nil {
				t.Errorf("%s: Kill with stale identity = %v, want nil", name, err)
			}
		}
		if !vmm.Alive(hC.Identity()) {
			t.Fatal("the other vm's vmm was killed through a recycled pid")
		}
		if sleeper.ProcessState != nil {
			t.Fatal("the unrelated process was killed")
		}
	})
	t.Run("shutdown", func(t *testing.T) {
		WaitForLog(t, hC.LogPath, env.Marker, env.BootTimeout)
		ctx := context.Background()
		if err := d.Shutdown(ctx, hC); err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		if env.ShutdownExits {
			wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
			defer cancel()
			if err := d.Wait(wctx, hC); err != nil {
				t.Fatalf("guest did not exit after Shutdown: %v", err)
			}
		} else {
			wctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			if err := d.Wait(wctx, hC); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Wait on a guest that ignores Shutdown = %v, want deadline exceeded", err)
			}
			if err := d.Kill(ctx, hC, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			wctx2, cancel2 := context.WithTimeout(ctx, 20*time.Second)
			defer cancel2()
			if err := d.Wait(wctx2, hC); err != nil {
				t.Fatal(err)
			}
		}
		if err := d.Shutdown(ctx, hC); err != nil {
			t.Errorf("second Shutdown: %v", err)
		}
		// Children of the VMM (fakefc's qemu) die by their parent-death
		// signal, asynchronously: give them a moment.
		deadline := time.Now().Add(10 * time.Second)
		pids := ProcessesMentioning(specC.RuntimeDir)
		for len(pids) > 0 && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
			pids = ProcessesMentioning(specC.RuntimeDir)
		}
		if len(pids) > 0 {
			t.Errorf("processes left after stop: %v", pids)
		}
	})
	t.Run("snapshot save and restore", func(t *testing.T) {
		if !d.Capabilities().Snapshots {
			if _, ok := d.(vmm.Snapshotter); ok {
				t.Log("driver implements Snapshotter but does not advertise Snapshots")
			}
			t.Skip("driver does not advertise snapshots")
		}
		snapshotCase(t, d, env)
	})
}

// snapshotCase boots a guest, saves it, restores it into a new VMM and checks
// the restored guest runs without booting its kernel again; a corrupt state
// file fails Start and leaves nothing running.
func snapshotCase(t *testing.T, d vmm.Driver, env Env) {
	sn, ok := d.(vmm.Snapshotter)
	if !ok {
		t.Fatal("Capabilities().Snapshots is true but the driver is not a vmm.Snapshotter")
	}
	ctx := context.Background()
	spec := NewSpec(t, env, "s")
	h, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() { stop(d, h) })
	WaitForLog(t, h.LogPath, env.Marker, env.BootTimeout)
	state := filepath.Join(t.TempDir(), "state")
	start := time.Now()
	if err := sn.Save(ctx, h, state); err != nil {
		t.Fatalf("Save: %v", err)
	}
	t.Logf("saved %d bytes in %s", fileSize(state), time.Since(start).Round(time.Millisecond))
	if fileSize(state) <= 0 {
		t.Fatal("state file is empty")
	}
	if err := sn.Save(ctx, h, state); err == nil {
		t.Error("Save over an existing file succeeded")
	}
	stop(d, h)

	rs := NewSpec(t, env, "r")
	rs.RestoreFrom = state
	start = time.Now()
	hr, err := d.Start(ctx, rs)
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	t.Cleanup(func() { stop(d, hr) })
	t.Logf("restored in %s", time.Since(start).Round(time.Millisecond))
	time.Sleep(2 * time.Second)
	if !vmm.Alive(hr.Identity()) {
		t.Fatalf("restored vmm exited; log:\n%s", vmm.LogTail(hr.LogPath, 15))
	}
	if data, _ := os.ReadFile(hr.LogPath); strings.Contains(string(data), "Linux version") {
		t.Error("the restored guest booted its kernel again")
	}
	stop(d, hr)

	bad := filepath.Join(t.TempDir(), "bad")
	if err := os.WriteFile(bad, []byte("not a vm state"), 0o600); err != nil {
		t.Fatal(err)
	}
	bs := NewSpec(t, env, "b")
	bs.RestoreFrom = bad
	if hb, err := d.Start(ctx, bs); err == nil {
		stop(d, hb)
		t.Fatal("restore from a corrupt state file succeeded")
	} else {
		t.Logf("corrupt state: %v", err)
	}
	if pids := ProcessesMentioning(bs.RuntimeDir); len(pids) > 0 {
		t.Errorf("failed restore left processes: %v", pids)
	}
}

func checkHandle(t *testing.T, d vmm.Driver, h *vmm.Handle, spec vmm.Spec) {
	t.Helper()
	if h.Driver != d.Name() || h.PID <= 1 || h.PIDFile == "" || h.APISocket == "" || h.LogPath == "" || h.Marker == "" || h.Comm == "" {
		t.Errorf("incomplete handle %+v", h)
	}
	if len(h.APISocket) > vmm.MaxSocketPath {
		t.Errorf("api socket path too long: %s", h.APISocket)
	}
	if pid, err := vmm.ReadPIDFile(h.PIDFile); err != nil || pid != h.PID {
		t.Errorf("pid file %s = %d, %v; want %d", h.PIDFile, pid, err, h.PID)
	}
	if !vmm.Alive(h.Identity()) {
		t.Errorf("vmm %d not alive after Start", h.PID)
	}
}

func stop(d vmm.Driver, h *vmm.Handle) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_ = d.Kill(ctx, h, syscall.SIGKILL)
	_ = d.Wait(ctx, h)
}

// NewSpec returns a spec for env with a fresh short runtime dir (removed at
// cleanup) and a unique VM id.
func NewSpec(t *testing.T, env Env, tag string) vmm.Spec {
	t.Helper()
	dir, err := os.MkdirTemp("", "vt"+tag)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	var b [6]byte
	_, _ = rand.Read(b[:])
	return vmm.Spec{
		VMID: "vt" + tag + hex.EncodeToString(b[:]), Name: "conf-" + tag, RuntimeDir: dir,
		Kernel: env.Kernel, Initrd: env.Initrd, Cmdline: env.Cmdline,
		VCPU: env.VCPU, MemoryMiB: env.MemoryMiB,
		LogPath: filepath.Join(dir, "vm.log"), UID: -1, GID: -1,
	}
}

// StartInHelper starts spec from a helper subprocess (this test binary,
// re-run for the calling test), reads the handle it prints, SIGKILLs it and
// reaps it. It returns the handle and the time of the kill.
func StartInHelper(t *testing.T, spec vmm.Spec) (*vmm.Handle, time.Time) {
	t.Helper()
	raw, _ := json.Marshal(spec)
	var pattern []string
	for _, part := range strings.Split(t.Name(), "/") {
		pattern = append(pattern, "^"+regexp.QuoteMeta(part)+"$")
	}
	cmd := exec.Command(os.Args[0], "-test.run", strings.Join(pattern, "/"), "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), helperEnv+"="+string(raw))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 256)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var h *vmm.Handle
	var transcript []string
	deadline := time.After(2 * time.Minute)
	for h == nil {
		select {
		case line, ok := <-lines:
			if !ok {
				_ = cmd.Wait()
				t.Fatalf("helper exited without starting the vm:\n%s", strings.Join(transcript, "\n"))
			}
			transcript = append(transcript, line)
			if i := strings.Index(line, "VMMTEST-HANDLE "); i >= 0 {
				h = &vmm.Handle{}
				if err := json.Unmarshal([]byte(line[i+len("VMMTEST-HANDLE "):]), h); err != nil {
					t.Fatalf("bad handle line %q: %v", line, err)
				}
			}
		case <-deadline:
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Fatalf("helper did not start the vm in 2m:\n%s", strings.Join(transcript, "\n"))
		}
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killedAt := time.Now()
	_ = cmd.Wait()
	if st := cmd.ProcessState.Sys().(syscall.WaitStatus); !st.Signaled() || st.Signal() != syscall.SIGKILL {
		t.Fatalf("helper ended with %v, not SIGKILL", cmd.ProcessState)
	}
	if !vmm.Alive(h.Identity()) {
		t.Fatalf("vmm pid %d died with its starter; log:\n%s", h.PID, vmm.LogTail(h.LogPath, 20))
	}
	return h, killedAt
}

func helperMain(t *testing.T, newDriver func(t *testing.T) vmm.Driver, raw string) {
	var spec vmm.Spec
	if err := json.Unmarshal([]byte(raw), &spec); err != nil {
		fmt.Println("VMMTEST-ERROR bad spec:", err)
		os.Exit(3)
	}
	d := newDriver(t)
	h, err := d.Start(context.Background(), spec)
	if err != nil {
		fmt.Println("VMMTEST-ERROR start:", err)
		os.Exit(3)
	}
	data, _ := json.Marshal(h)
	fmt.Println("VMMTEST-HANDLE " + string(data))
	select {} // wait to be SIGKILLed
}

// WaitForLog waits until path contains want and returns its offset.
func WaitForLog(t *testing.T, path, want string, timeout time.Duration) int64 {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		data, _ := os.ReadFile(path)
		if i := strings.Index(string(data), want); i >= 0 {
			return int64(i)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%q not in %s after %s; tail:\n%s", want, path, timeout, vmm.LogTail(path, 20))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func fileSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

// ProcessesMentioning lists live processes (not zombies) whose command line
// contains s.
func ProcessesMentioning(s string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || !strings.Contains(string(cmdline), s) {
			continue
		}
		if privops.VerifyProcess(privops.ProcessIdentity{PID: pid, Marker: s}) == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}
