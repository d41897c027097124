package vmm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/privops"
)

// ReadPIDFile returns the pid written in path. A missing, empty or garbled
// file returns an error wrapping model.ErrNotRunning.
func ReadPIDFile(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0, fmt.Errorf("pid file %s does not exist: %w", path, model.ErrNotRunning)
		}
		return 0, fmt.Errorf("read pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("pid file %s holds %q, not a pid: %w", path, bytes.TrimSpace(data), model.ErrNotRunning)
	}
	return pid, nil
}

// FindProcess reads pidFile and verifies the pid by evidence (alive, comm,
// cmdline marker). Any failure wraps model.ErrNotRunning.
func FindProcess(pidFile, comm, marker string) (int, error) {
	pid, err := ReadPIDFile(pidFile)
	if err != nil {
		return 0, err
	}
	if err := privops.VerifyProcess(privops.ProcessIdentity{PID: pid, Comm: comm, Marker: marker}); err != nil {
		return 0, err
	}
	return pid, nil
}

// Alive reports whether the identified process is still running.
func Alive(id privops.ProcessIdentity) bool { return privops.VerifyProcess(id) == nil }

// WaitExit blocks until the identified process exits or ctx ends. It works
// for processes that are not children of the caller: it pins the pid with a
// pidfd (then verifies the identity, so a recycled pid is treated as exited)
// and polls it; a zombie counts as exited.
func WaitExit(ctx context.Context, id privops.ProcessIdentity) error {
	fd, err := unix.PidfdOpen(id.PID, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil
		}
		return waitExitPolling(ctx, id)
	}
	defer unix.Close(fd)
	if privops.VerifyProcess(id) != nil {
		return nil
	}
	for {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 100)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("wait for pid %d: %w", id.PID, err)
		}
		if n > 0 {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("wait for pid %d: %w", id.PID, err)
		}
	}
}

func waitExitPolling(ctx context.Context, id privops.ProcessIdentity) error {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for privops.VerifyProcess(id) == nil {
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for pid %d: %w", id.PID, ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// LogTail returns the last maxLines lines (at most 8 KiB) of the file at
// path, for error messages; "" when it cannot be read.
func LogTail(path string, maxLines int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	const maxBytes = 8 << 10
	if st, err := f.Stat(); err == nil && st.Size() > maxBytes {
		_, _ = f.Seek(-maxBytes, io.SeekEnd)
	}
	data, _ := io.ReadAll(io.LimitReader(f, maxBytes))
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > maxLines {
		lines = lines[len(lines)-maxLines:]
	}
	return strings.TrimSpace(strings.Join(lines, "\n"))
}

// WithLogTail decorates err with the tail of the VMM log at path.
func WithLogTail(err error, path string) error {
	tail := LogTail(path, 20)
	if tail == "" {
		return fmt.Errorf("%w (vmm log %s is empty)", err, path)
	}
	return fmt.Errorf("%w\n--- last lines of %s ---\n%s", err, path, tail)
}

// Wait blocks until the VMM of h exits or ctx ends (the Driver.Wait
// contract shared by the drivers): a nil handle or one without a pid has
// nothing to wait for.
func Wait(ctx context.Context, h *Handle) error {
	if h == nil || h.PID <= 0 {
		return nil
	}
	return WaitExit(ctx, h.Identity())
}

// KillAndReap SIGKILLs the identified process through the launcher and waits
// (up to 10 s) for it to exit. A process already gone is success. Drivers use
// it to leave nothing running after a failed Start.
func KillAndReap(l Launcher, id privops.ProcessIdentity) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := l.SignalVMM(ctx, id, syscall.SIGKILL); err != nil && !errors.Is(err, model.ErrNotRunning) {
		return err
	}
	return WaitExit(ctx, id)
}

// Signal sends sig through the launcher, mapping "already gone" to nil (the
// Kill contract).
func Signal(ctx context.Context, l Launcher, h *Handle, sig syscall.Signal) error {
	if h == nil || h.PID <= 0 {
		return nil
	}
	err := l.SignalVMM(ctx, h.Identity(), sig)
	if errors.Is(err, model.ErrNotRunning) {
		return nil
	}
	return err
}

// WaitStartup polls ready until it returns true, the identified process
// exits (error: "exited during startup") or ctx/timeout ends.
func WaitStartup(ctx context.Context, id privops.ProcessIdentity, timeout time.Duration, ready func(context.Context) bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	delay := 10 * time.Millisecond
	for {
		if ready(ctx) {
			return nil
		}
		// Not Alive: right after launch the child may still be inside
		// execve (the launcher's close-on-exec pipe closes before the
		// kernel sets the new comm and argument pages), so its identity
		// evidence is not there yet. A child that exists and is not a
		// zombie is starting, not gone.
		if !Alive(id) && !privops.ProcessExists(id.PID) {
			return fmt.Errorf("%s (pid %d) exited during startup", id.Comm, id.PID)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s (pid %d) not ready after %s: %w", id.Comm, id.PID, timeout, ctx.Err())
		case <-time.After(delay):
		}
		delay = nextStartupPoll(delay)
	}
}

// startupPollMax caps WaitStartup's polling interval. A restore ends when
// the VMM has loaded its state, 0.3–0.6 s after launch under TCG here, at
// no time the caller can predict: with the interval doubling to 320 ms,
// the end was seen up to 0.3 s late (about 0.15 s on average, on every
// restore). A ready check is one QMP or API round trip on a unix socket.
const startupPollMax = 40 * time.Millisecond

// nextStartupPoll is the polling interval after d: doubled, at most
// startupPollMax.
func nextStartupPoll(d time.Duration) time.Duration {
	return min(2*d, startupPollMax)
}
