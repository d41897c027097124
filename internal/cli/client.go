package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/progress"
	"github.com/bangerdev/banger/internal/rpc"
	"github.com/bangerdev/banger/internal/system"
)

// layout is the installation this CLI talks to: the system one when
// banger is installed as a system service (and the environment does not
// point elsewhere), else the one BANGER_MODE and the BANGER_*_DIR
// variables select (user mode by default). On a system install the CLI
// never starts a user-mode daemon, for the owner and root alike.
func (a *app) layout() (paths.Layout, error) {
	if a.env.Getenv(paths.EnvMode) == "" && a.env.Getenv(paths.EnvRuntimeDir) == "" && system.Installed(a.env.SystemRoot) {
		return paths.System(), nil
	}
	return paths.FromEnv()
}

// call invokes a daemon method, starting the daemon first when needed.
func (a *app) call(ctx context.Context, method string, params, result any, opts ...rpc.CallOption) error {
	c, err := a.daemon(ctx)
	if err != nil {
		return err
	}
	return c.Call(ctx, method, params, result, opts...)
}

// callWithStages invokes a long-running method and renders its progress
// stages on stderr.
func (a *app) callWithStages(ctx context.Context, method string, params, result any) error {
	c, err := a.daemon(ctx)
	if err != nil {
		return err
	}
	r := newStageRenderer(a.env.Stderr)
	err = c.Call(ctx, method, params, result, rpc.WithEvents(func(e progress.Event) { r.Event(e) }))
	r.Close(err != nil)
	return err
}

// daemon returns a client for a running daemon of this CLI's version,
// auto-starting (or restarting) it in user mode.
func (a *app) daemon(ctx context.Context) (*rpc.Client, error) {
	if a.client != nil {
		return a.client, nil
	}
	layout, err := a.layout()
	if err != nil {
		return nil, err
	}
	c := rpc.NewClient(layout.DaemonSocket())
	ping, err := a.ping(ctx, c)
	switch {
	case err == nil && ping.Build.Same(a.env.Build):
		a.client = c
		return c, nil
	case err == nil || rpc.CodeOf(err) == rpc.CodeBadVersion:
		if layout.Mode == paths.ModeSystem {
			if err != nil {
				return nil, err
			}
			fmt.Fprintf(a.env.Stderr, "banger: warning: daemon is %s, this CLI is %s (run `sudo banger system restart`)\n", ping.Build.Version, a.env.Build.Version)
			a.client = c
			return c, nil
		}
		// A daemon of another version: restart it (VMs keep running).
		_ = c.Call(ctx, api.MethodShutdown, nil, nil)
		if err := waitGone(ctx, c, 10*time.Second); err != nil {
			return nil, err
		}
	case errors.Is(err, rpc.ErrUnreachable):
		if layout.Mode == paths.ModeSystem {
			return nil, fmt.Errorf("the system daemon (bangerd.service) is not answering at %s: start it with `sudo banger system restart` (see `banger system status`)", layout.DaemonSocket())
		}
	default:
		return nil, err
	}
	if err := a.startDaemon(ctx, layout, c); err != nil {
		return nil, err
	}
	a.client = c
	return c, nil
}

func (a *app) ping(ctx context.Context, c *rpc.Client) (*api.PingResult, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var p api.PingResult
	if err := c.Call(ctx, api.MethodPing, nil, &p); err != nil {
		return nil, err
	}
	return &p, nil
}

func waitGone(ctx context.Context, c *rpc.Client, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		var p api.PingResult
		err := c.Call(ctx, api.MethodPing, nil, &p)
		if errors.Is(err, rpc.ErrUnreachable) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("the old daemon did not stop within %s; stop it with `banger daemon stop` and retry", limit)
}

func (a *app) daemonBinary() (string, error) {
	if a.env.DaemonBinary != "" {
		return a.env.DaemonBinary, nil
	}
	if p := a.env.Getenv("BANGER_DAEMON"); p != "" {
		return p, nil
	}
	if self, err := os.Executable(); err == nil {
		cand := filepath.Join(filepath.Dir(self), "bangerd")
		if _, err := os.Stat(cand); err == nil {
			return cand, nil
		}
	}
	if p, err := exec.LookPath("bangerd"); err == nil {
		return p, nil
	}
	return "", errors.New("cannot find the bangerd binary next to banger or on PATH: install both (`make install`) or set BANGER_DAEMON")
}

// startDaemon starts bangerd detached, serialised by a lock file so two
// CLIs racing start only one daemon.
func (a *app) startDaemon(ctx context.Context, layout paths.Layout, c *rpc.Client) error {
	if err := layout.Ensure(); err != nil {
		return err
	}
	lock, err := os.OpenFile(filepath.Join(layout.RuntimeDir, "bangerd.start.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("daemon start lock: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("daemon start lock: %w", err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	// Another CLI may have started it while we waited for the lock.
	if p, err := a.ping(ctx, c); err == nil && p.Build.Same(a.env.Build) {
		return nil
	}
	bin, err := a.daemonBinary()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(layout.LogDir(), 0o700); err != nil {
		return err
	}
	logPath := filepath.Join(layout.LogDir(), "bangerd.log")
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("daemon log: %w", err)
	}
	defer logf.Close()
	offset, _ := logf.Seek(0, 2)
	args := []string{}
	if a.logLevel != "" {
		args = append(args, "--log-level", a.logLevel)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.After(20 * time.Second)
	for {
		if p, err := a.ping(ctx, c); err == nil {
			if !p.Build.Same(a.env.Build) {
				return fmt.Errorf("started %s but it reports version %s, not %s: reinstall banger so both binaries match", bin, p.Build, a.env.Build)
			}
			return nil
		}
		select {
		case err := <-exited:
			return fmt.Errorf("bangerd exited during start-up (%v): %s\n(full log: %s)", err, logTail(logPath, offset), logPath)
		case <-deadline:
			return fmt.Errorf("bangerd did not answer within 20s; see %s", logPath)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func logTail(path string, from int64) string {
	data, err := os.ReadFile(path)
	if err != nil || int64(len(data)) < from {
		return ""
	}
	data = bytes.TrimSpace(data[from:])
	if len(data) > 2000 {
		data = data[len(data)-2000:]
	}
	return string(data)
}
