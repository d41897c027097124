package privops

// VMM process launch and signalling, and chown of paths.
//
// Process lifetime. LaunchVMM starts the VMM in a new session (setsid) with
// stdin from /dev/null and stdout+stderr appended to the VM's log, so it has
// no controlling terminal, is not in the caller's process group and never
// receives a signal meant for the daemon. No parent-death signal is set: the
// VMM outlives the process that launched it.
//
// Reaping. The launched VMM is a child of the launcher process (the owner
// daemon when it runs as root, otherwise the root helper). While that process
// lives, a goroutine waits on the child so it never lingers as a zombie. When
// the launcher exits (crash, restart, upgrade) the kernel re-parents the VMM
// to the nearest child subreaper or to PID 1, which reaps it on exit; the
// restarted daemon is not its parent and observes it only through /proc and
// pidfds (see vmm.Wait), which also treat a zombie as exited. Under systemd
// the units use KillMode=process so a restart does not kill the VMMs.
//
// The jailer exception: `jailer --daemonize` calls setsid() itself and fails
// when it is already a process-group leader, so for that argv LaunchVMM does
// not create the session (the jailer does, before exec'ing into firecracker).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/paths"
)

// defaultVMMEnv is the environment of a VMM when the spec gives none: a root
// helper must not leak its own environment into guests' processes.
var defaultVMMEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

// LaunchVMM starts a VMM detached from the caller and returns its pid. See
// the file comment for the session and reaping rules. ctx bounds only the
// launch itself; cancelling it later never affects the VMM.
func (l *Local) LaunchVMM(ctx context.Context, spec LaunchSpec) (int, error) {
	if err := ValidateLaunchSpec(spec); err != nil {
		return 0, fmt.Errorf("launch vmm: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	path, err := exec.LookPath(spec.Argv[0])
	if err != nil {
		return 0, fmt.Errorf("launch vmm: %s not found: %w (install it or set its path in config.toml)", spec.Argv[0], err)
	}
	if st, err := os.Stat(spec.Dir); err != nil || !st.IsDir() {
		return 0, fmt.Errorf("launch vmm: working dir %s: does not exist", spec.Dir)
	}
	dropCreds := spec.UID >= 0 && (spec.UID != os.Geteuid() || spec.GID != os.Getegid())
	if dropCreds && os.Geteuid() != 0 {
		return 0, fmt.Errorf("launch vmm as uid %d: %w: only root can change the VMM's user", spec.UID, ErrNotSupported)
	}
	if err := checkBinary(path); err != nil {
		return 0, fmt.Errorf("launch vmm: %w", err)
	}
	// The log and pid file live in the owner's directories: resolved once,
	// below the managed root, on descriptors (beneath.go).
	logDir, err := openParent(l.Roots, spec.LogPath)
	if err != nil {
		return 0, fmt.Errorf("launch vmm: log directory: %w", err)
	}
	defer logDir.Close()
	logf, err := openAppendAt(logDir, filepath.Base(spec.LogPath))
	if err != nil {
		return 0, fmt.Errorf("launch vmm: open log: %w", err)
	}
	defer logf.Close()
	if dropCreds {
		// The VMM reopens its log by path (QEMU's serial chardev), so the
		// file must belong to the user it runs as.
		if err := logf.Chown(spec.UID, spec.GID); err != nil {
			return 0, fmt.Errorf("launch vmm: chown log: %w", err)
		}
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return 0, fmt.Errorf("launch vmm: %w", err)
	}
	defer devnull.Close()

	cmd := &exec.Cmd{
		Path:   path,
		Args:   slices.Clone(spec.Argv),
		Dir:    spec.Dir,
		Env:    spec.Env,
		Stdin:  devnull,
		Stdout: logf,
		Stderr: logf,
		SysProcAttr: &syscall.SysProcAttr{
			Setsid: !selfDaemonizing(spec.Argv),
		},
	}
	if cmd.Env == nil {
		cmd.Env = slices.Clone(defaultVMMEnv)
	}
	if dropCreds {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(spec.UID), Gid: uint32(spec.GID), Groups: []uint32{}}
	}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("launch vmm %s: %w", filepath.Base(path), err)
	}
	pid := cmd.Process.Pid
	logger := l.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	l.childMu.Lock()
	if l.children == nil {
		l.children = map[int]bool{}
	}
	l.children[pid] = true
	l.childMu.Unlock()
	go func() {
		err := cmd.Wait() // reap; see the file comment
		l.childMu.Lock()
		delete(l.children, pid)
		l.childMu.Unlock()
		logger.Debug("vmm process exited", "pid", pid, "program", filepath.Base(path), "status", fmt.Sprint(err))
	}()
	logger.Info("vmm launched", "pid", pid, "argv", strings.Join(spec.Argv, " "))
	if spec.PIDFile != "" {
		if err := l.writePIDFile(spec.PIDFile, pid, spec.UID, spec.GID, dropCreds); err != nil {
			_ = cmd.Process.Kill()
			return 0, fmt.Errorf("launch vmm: %w", err)
		}
	}
	return pid, nil
}

// selfDaemonizing reports whether argv is a jailer that calls setsid()
// itself (and fails when it is a process-group leader).
func selfDaemonizing(argv []string) bool {
	if !strings.HasPrefix(filepath.Base(argv[0]), "jailer") {
		return false
	}
	for _, a := range argv[1:] {
		if a == "--" {
			break
		}
		if a == "--daemonize" {
			return true
		}
	}
	return false
}

// writePIDFile writes pid to path through a new temporary file in path's
// directory (created O_EXCL|O_NOFOLLOW on the directory's descriptor) and
// renameat: a symlink planted at path or at any temporary name is never
// followed.
func (l *Local) writePIDFile(path string, pid, uid, gid int, chown bool) error {
	dir, err := openParent(l.Roots, path)
	if err != nil {
		return fmt.Errorf("pid file directory: %w", err)
	}
	defer dir.Close()
	if err := createFileAt(dir, filepath.Base(path), []byte(strconv.Itoa(pid)+"\n"), 0o644, uid, gid, chown); err != nil {
		return fmt.Errorf("write pid file: %w", err)
	}
	return nil
}

// checkBinary refuses to run a program that someone other than root could
// have replaced: the file and every directory above it must be owned by
// root and not writable by group or others.
func checkBinary(path string) error {
	if os.Geteuid() != 0 {
		return nil // not root: nothing is gained by running it
	}
	for p := path; ; p = filepath.Dir(p) {
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		if st.Uid != 0 || st.Mode&0o022 != 0 && !(st.Mode&unix.S_IFMT == unix.S_IFDIR && st.Mode&unix.S_ISVTX != 0 && p != path) {
			return fmt.Errorf("%w: %s is not a safe VMM binary: %s is owned by uid %d with mode %04o (it must be root's and not writable by group or others)",
				ErrInvalidArgument, path, p, st.Uid, st.Mode&0o7777)
		}
		if p == "/" {
			return nil
		}
	}
}

// SignalVMM sends sig to the process identified by id after re-verifying the
// identity from /proc. The pid is pinned with a pidfd before the check, so
// the signal cannot reach a process that replaced the verified one. A
// process that is gone or does not match returns an error wrapping
// model.ErrNotRunning.
func (l *Local) SignalVMM(ctx context.Context, id ProcessIdentity, sig syscall.Signal) error {
	if err := ValidateSignalArgs(id, sig); err != nil {
		return fmt.Errorf("signal vmm: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	fd, err := unix.PidfdOpen(id.PID, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("signal vmm pid %d: %w", id.PID, model.ErrNotRunning)
		}
		return fmt.Errorf("signal vmm pid %d: pidfd_open: %w", id.PID, err)
	}
	defer unix.Close(fd)
	if err := VerifyProcess(id); err != nil {
		return fmt.Errorf("signal vmm: %w", err)
	}
	if err := l.verifyVMMProcess(id.PID); err != nil {
		return fmt.Errorf("signal vmm: %w", err)
	}
	if err := unix.PidfdSendSignal(fd, sig, nil, 0); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("signal vmm pid %d: %w", id.PID, model.ErrNotRunning)
		}
		return fmt.Errorf("signal vmm pid %d: %w", id.PID, err)
	}
	l.logger().Info("vmm signalled", "pid", id.PID, "signal", sig.String())
	return nil
}

// verifyVMMProcess checks, when the Local is configured for it (the root
// helper), that pid runs as the owner and executes one of the configured
// VMM binaries, so the owner can never make root signal a process banger
// did not start: a root-owned qemu, the owner's own shell, pid 1.
func (l *Local) verifyVMMProcess(pid int) error {
	if l.SignalOwnerUID < 0 || len(l.VMMPaths) == 0 {
		return nil
	}
	dir := "/proc/" + strconv.Itoa(pid)
	status, err := os.ReadFile(dir + "/status")
	if err != nil {
		return fmt.Errorf("pid %d has exited: %w", pid, model.ErrNotRunning)
	}
	uid := -1
	for _, line := range strings.Split(string(status), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "Uid:" {
			uid, _ = strconv.Atoi(f[1])
		}
	}
	l.childMu.Lock()
	child := l.children[pid]
	l.childMu.Unlock()
	// A jailer this Local launched runs as root until it drops to the
	// owner (it is still our unreaped child, so the pid is not recycled).
	if uid != l.SignalOwnerUID && !(uid == 0 && child) {
		return fmt.Errorf("%w: pid %d runs as uid %d, not as the owner (%d): not a VMM banger started", ErrInvalidArgument, pid, uid, l.SignalOwnerUID)
	}
	exe, err := os.Readlink(dir + "/exe")
	if err != nil {
		return fmt.Errorf("%w: pid %d: cannot read its executable: %v", ErrInvalidArgument, pid, err)
	}
	exe = strings.TrimSuffix(exe, " (deleted)")
	if !slices.Contains(l.VMMPaths, exe) && !l.jailedVMM(exe) {
		return fmt.Errorf("%w: pid %d executes %s, not a configured VMM binary", ErrInvalidArgument, pid, exe)
	}
	return nil
}

// jailedVMM reports whether exe is a firecracker the jailer copied into a
// jail: exactly <base>/<exec>/<id>/root/<exec> below the jailer chroot base
// (root's; the owner cannot plant a binary there).
func (l *Local) jailedVMM(exe string) bool {
	if l.JailerChrootBase == "" {
		return false
	}
	rel, err := paths.Beneath(l.JailerChrootBase, exe)
	if err != nil {
		return false
	}
	parts := strings.Split(rel, "/")
	return len(parts) == 4 && strings.HasPrefix(parts[0], "firecracker") && parts[2] == "root" && parts[3] == parts[0]
}

func (l *Local) logger() *slog.Logger {
	if l.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l.Logger
}

// ProcessComm returns the kernel's comm for a program path: its base name cut
// to 15 bytes (TASK_COMM_LEN - 1).
func ProcessComm(program string) string {
	c := filepath.Base(program)
	if len(c) > 15 {
		c = c[:15]
	}
	return c
}

// VerifyProcess checks that id.PID is alive (not a zombie), that its comm
// equals id.Comm (when set) and that its command line contains id.Marker.
// A mismatch or a dead pid returns an error wrapping model.ErrNotRunning
// that says which evidence failed.
func VerifyProcess(id ProcessIdentity) error {
	if id.PID <= 0 {
		return fmt.Errorf("pid %d: %w", id.PID, model.ErrNotRunning)
	}
	dir := "/proc/" + strconv.Itoa(id.PID)
	stat, err := os.ReadFile(dir + "/stat")
	if err != nil {
		return fmt.Errorf("pid %d has exited: %w", id.PID, model.ErrNotRunning)
	}
	if st := procState(stat); st == 'Z' || st == 'X' || st == 'x' {
		return fmt.Errorf("pid %d has exited (zombie): %w", id.PID, model.ErrNotRunning)
	}
	if id.Comm != "" {
		comm, err := os.ReadFile(dir + "/comm")
		if err != nil {
			return fmt.Errorf("pid %d has exited: %w", id.PID, model.ErrNotRunning)
		}
		if got := strings.TrimSuffix(string(comm), "\n"); got != ProcessComm(id.Comm) {
			return fmt.Errorf("pid %d is %q, not %q (pid reused): %w", id.PID, got, ProcessComm(id.Comm), model.ErrNotRunning)
		}
	}
	if id.Marker == "" {
		return fmt.Errorf("pid %d: no marker to verify against: %w", id.PID, model.ErrNotRunning)
	}
	cmdline, err := os.ReadFile(dir + "/cmdline")
	if err != nil {
		return fmt.Errorf("pid %d has exited: %w", id.PID, model.ErrNotRunning)
	}
	if !bytes.Contains(cmdline, []byte(id.Marker)) {
		return fmt.Errorf("pid %d command line does not mention %s (another VM's or an unrelated process): %w", id.PID, id.Marker, model.ErrNotRunning)
	}
	return nil
}

// ProcessExists reports whether pid is a live process (not a zombie),
// whatever it runs: for a child just launched, whose comm and command line
// may not show the new program yet.
func ProcessExists(pid int) bool {
	if pid <= 0 {
		return false
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	st := procState(stat)
	return st != 0 && st != 'Z' && st != 'X' && st != 'x'
}

// procState returns the state letter of a /proc/PID/stat line ("1 (comm) S ...").
func procState(stat []byte) byte {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 || i+2 >= len(stat) {
		return 0
	}
	return stat[i+2]
}

// ChownPath changes the owner of path (a socket, pidfile or log the VMM
// created). The path is resolved once, below a managed root and without
// symlinks anywhere (beneath.go), and the owner changed on that descriptor
// (fchownat AT_EMPTY_PATH); a regular file with several links is refused.
// path must be clean and absolute; uid and gid must be >= 0.
func (l *Local) ChownPath(ctx context.Context, path string, uid, gid int) error {
	if err := ValidateChownArgs(path, uid, gid); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	f, err := openBeneath(l.Roots, path, unix.O_PATH|unix.O_NOFOLLOW, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return fmt.Errorf("chown %s: %w: refusing to follow a symlink", path, ErrInvalidArgument)
		}
		return fmt.Errorf("chown: %w", err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fmt.Errorf("chown %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return fmt.Errorf("chown %s: %w: refusing to follow a symlink", path, ErrInvalidArgument)
	}
	if _, err := checkSingleLink(f); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if err := unix.Fchownat(int(f.Fd()), "", uid, gid, unix.AT_EMPTY_PATH); err != nil {
		return fmt.Errorf("chown %s: %w", path, err)
	}
	return nil
}
