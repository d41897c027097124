package firecracker

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/privops"
	"github.com/bangerdev/banger/internal/vmm"
)

// startSlack is how much later than its pidfile a jailed process may
// appear to have started: /proc/stat's btime has a one-second resolution
// and clock ticks are 10 ms.
const startSlack = 2 * time.Second

// findJailed adopts a Firecracker that the jailer started, after a daemon
// or helper restart. A jailed Firecracker's command line does not carry
// the host-side socket path, so the evidence is:
//
//   - the VM's runtime-dir api.sock is banger's symlink to the socket in
//     the jail (anything else there is not ours: the VM counts as dead);
//   - <chroot>/firecracker.pid (written by the jailer) holds a pid;
//   - that process, pinned with a pidfd while it is checked, has comm
//     "firecracker";
//   - it started no later than the pidfile was written (a recycled pid
//     belongs to a process started after it), give or take startSlack.
//
// Every refusal wraps model.ErrNotRunning: the caller treats the VM as
// dead and cleans up. Nothing is modified.
func findJailed(l layout, comm string) (int, error) {
	fi, err := os.Lstat(l.socket)
	if err != nil {
		return 0, fmt.Errorf("api socket link %s: %w", l.socket, model.ErrNotRunning)
	}
	if fi.Mode()&os.ModeSymlink == 0 {
		kind := "regular file"
		switch {
		case fi.Mode()&os.ModeSocket != 0:
			kind = "socket"
		case fi.IsDir():
			kind = "directory"
		case fi.Mode().Type() != 0:
			kind = "special file"
		}
		return 0, fmt.Errorf("api socket %s is a %s, not banger's symlink into the jail: %w", l.socket, kind, model.ErrNotRunning)
	}
	if target, err := os.Readlink(l.socket); err != nil || target != filepath.Join(l.chroot, JailedSocket) {
		return 0, fmt.Errorf("api socket %s points at %q, not the jail's socket: %w", l.socket, target, model.ErrNotRunning)
	}
	pid, err := vmm.ReadPIDFile(l.pidFile)
	if err != nil {
		return 0, err
	}
	pfi, err := os.Stat(l.pidFile)
	if err != nil {
		return 0, fmt.Errorf("pid file %s: %w", l.pidFile, model.ErrNotRunning)
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return 0, fmt.Errorf("pid %d from %s has exited: %w", pid, l.pidFile, model.ErrNotRunning)
	}
	defer unix.Close(fd)
	if err := verifyComm(pid, comm); err != nil {
		return 0, err
	}
	started, err := processStart(pid)
	if err != nil {
		return 0, fmt.Errorf("pid %d: %v: %w", pid, err, model.ErrNotRunning)
	}
	if started.After(pfi.ModTime().Add(startSlack)) {
		return 0, fmt.Errorf("pid %d started at %s, after its pid file was written (%s): a recycled pid: %w",
			pid, started.Format(time.RFC3339), pfi.ModTime().Format(time.RFC3339), model.ErrNotRunning)
	}
	// Still the process we checked (the pidfd pins it; signal 0 fails
	// once it has exited).
	if err := unix.PidfdSendSignal(fd, 0, nil, 0); err != nil {
		return 0, fmt.Errorf("pid %d exited while being checked: %w", pid, model.ErrNotRunning)
	}
	return pid, nil
}

// verifyComm checks that pid is alive (not a zombie) and its comm is
// comm.
func verifyComm(pid int, comm string) error {
	dir := "/proc/" + strconv.Itoa(pid)
	stat, err := os.ReadFile(dir + "/stat")
	if err != nil {
		return fmt.Errorf("pid %d has exited: %w", pid, model.ErrNotRunning)
	}
	if i := bytes.LastIndexByte(stat, ')'); i < 0 || i+2 >= len(stat) || stat[i+2] == 'Z' || stat[i+2] == 'X' {
		return fmt.Errorf("pid %d has exited (zombie): %w", pid, model.ErrNotRunning)
	}
	got, err := os.ReadFile(dir + "/comm")
	if err != nil {
		return fmt.Errorf("pid %d has exited: %w", pid, model.ErrNotRunning)
	}
	if want := privops.ProcessComm(comm); strings.TrimSuffix(string(got), "\n") != want {
		return fmt.Errorf("pid %d is %q, not %q (pid reused): %w", pid, strings.TrimSpace(string(got)), want, model.ErrNotRunning)
	}
	return nil
}

// processStart is when pid started (boot time + /proc/PID/stat starttime).
func processStart(pid int) (time.Time, error) {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return time.Time{}, errors.New("has exited")
	}
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return time.Time{}, errors.New("unreadable /proc stat")
	}
	// Fields after "pid (comm)": state is field 3, starttime field 22.
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 20 {
		return time.Time{}, errors.New("short /proc stat")
	}
	ticks, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return time.Time{}, errors.New("bad starttime in /proc stat")
	}
	btime, err := bootTime()
	if err != nil {
		return time.Time{}, err
	}
	const clkTck = 100 // USER_HZ on Linux
	return btime.Add(time.Duration(ticks) * time.Second / clkTck), nil
}

func bootTime() (time.Time, error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return time.Time{}, fmt.Errorf("read /proc/stat: %w", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			s, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				break
			}
			return time.Unix(s, 0), nil
		}
	}
	return time.Time{}, errors.New("no btime in /proc/stat")
}
