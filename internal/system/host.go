package system

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/atomicfile"
	"github.com/bangerdev/banger/internal/buildinfo"
	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/privops"
	"github.com/bangerdev/banger/internal/rpc"
)

// HelperSocket is the root helper's socket in system mode.
const HelperSocket = HelperRuntimeDir + "/root-helper.sock"

// DaemonSocket is the owner daemon's socket in system mode.
const DaemonSocket = RuntimeDir + "/bangerd.sock"

// VMsRunningError is returned by Uninstall when VMs run; it wraps
// ErrVMsRunning and names them.
type VMsRunningError struct{ Names []string }

func (e *VMsRunningError) Error() string {
	return fmt.Sprintf("%d VM(s) still running: %s; stop them (`banger vm stop NAME`) or pass --force",
		len(e.Names), strings.Join(e.Names, ", "))
}
func (e *VMsRunningError) Unwrap() error { return ErrVMsRunning }

// Host is the Manager of this machine's systemd.
type Host struct {
	// Runner runs systemctl (and the installed bangerd for its version).
	Runner hostexec.Runner
	// Build is this binary's identity (written into the record).
	Build buildinfo.Info
	// Out receives one line per step (files written, units restarted);
	// may be nil.
	Out io.Writer
	// The following default to the real thing when nil.
	Getenv     func(string) string
	Euid       func() int
	LookupUser func(name string) (Owner, error)
	Now        func() time.Time
	// Root is the install root Status reads ("" = /).
	Root string
	// Executable is the running binary ("" = os.Executable).
	Executable string
	// HelperReady and DaemonReady report the version of a helper / daemon
	// that answers on its socket (default: ping the system sockets).
	HelperReady func(ctx context.Context) (buildinfo.Info, error)
	DaemonReady func(ctx context.Context) (buildinfo.Info, error)
	// RunningVMs names the VMs that are running (default: ask the daemon).
	RunningVMs func(ctx context.Context) ([]string, error)
	// KillVM kills one VM through the daemon (uninstall --force).
	KillVM func(ctx context.Context, name string) error
	// ReadyTimeout bounds the wait for each service to answer (default 60s).
	ReadyTimeout time.Duration
	// Poll is the readiness poll interval (default 100ms).
	Poll time.Duration
}

var _ Manager = (*Host)(nil)

func (h *Host) getenv(k string) string {
	if h.Getenv != nil {
		return h.Getenv(k)
	}
	return os.Getenv(k)
}

func (h *Host) euid() int {
	if h.Euid != nil {
		return h.Euid()
	}
	return os.Geteuid()
}

func (h *Host) now() time.Time {
	if h.Now != nil {
		return h.Now()
	}
	return time.Now()
}

func (h *Host) say(format string, args ...any) {
	if h.Out != nil {
		fmt.Fprintf(h.Out, format+"\n", args...)
	}
}

func isHostRoot(root string) bool { return root == "" || filepath.Clean(root) == "/" }

func (h *Host) needRoot(what string) error {
	if h.euid() != 0 {
		return fmt.Errorf("banger system %s changes systemd units and /usr/local: %w (`sudo banger system %s`)", what, ErrNeedsRoot, what)
	}
	return nil
}

// LookupOwner resolves a user name on this host.
func LookupOwner(name string) (Owner, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return Owner{}, fmt.Errorf("%w %q: no such user on this host (create it with `useradd`, or pass --owner with an existing user)", ErrUnknownOwner, name)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return Owner{}, fmt.Errorf("%w %q: uid %q / gid %q are not numbers", ErrUnknownOwner, name, u.Uid, u.Gid)
	}
	return Owner{User: u.Username, UID: uid, GID: gid, Home: u.HomeDir}, nil
}

func (h *Host) owner(name string) (Owner, error) {
	if name == "" {
		name = h.getenv("SUDO_USER")
	}
	if name == "" || name == "root" {
		return Owner{}, errors.New("which user owns banger's VMs? pass --owner USER (the daemon never runs as root)")
	}
	lookup := h.LookupUser
	if lookup == nil {
		lookup = LookupOwner
	}
	o, err := lookup(name)
	if err != nil {
		return Owner{}, err
	}
	if o.UID == 0 {
		return Owner{}, fmt.Errorf("owner %q has uid 0: the owner daemon never runs as root; pass --owner with an ordinary user", name)
	}
	return o, nil
}

// Render implements Manager.
func (h *Host) Render(rec *Record) ([]Unit, error) { return RenderUnits(rec, RenderOptions{}) }

// Install implements Manager.
func (h *Host) Install(ctx context.Context, o InstallOptions) (*Record, error) {
	onHost := isHostRoot(o.Root)
	if onHost {
		if err := h.needRoot("install"); err != nil {
			return nil, err
		}
	}
	owner, err := h.owner(o.Owner)
	if err != nil {
		return nil, err
	}
	src := o.SourceDir
	if src == "" {
		exe := h.Executable
		if exe == "" {
			if exe, err = os.Executable(); err != nil {
				return nil, fmt.Errorf("find this executable: %w", err)
			}
		}
		if r, err := filepath.EvalSymlinks(exe); err == nil {
			exe = r
		}
		src = filepath.Dir(exe)
	}
	bins := []struct{ name, src, dst string }{{CLIBinary, "", CLIPath}, {DaemonBinary, "", DaemonPath}, {AgentBinary, "", AgentPath}}
	for i, b := range bins {
		// Next to banger (a build's bin/), or where an install puts it
		// (/usr/local/bin/banger with /usr/local/lib/banger/bangerd), so
		// the installed CLI can re-install itself.
		cands := []string{filepath.Join(src, b.name)}
		if b.name != CLIBinary {
			cands = append(cands, filepath.Join(filepath.Dir(src), "lib", "banger", b.name))
		}
		for _, c := range cands {
			if fi, err := os.Stat(c); err == nil && fi.Mode().IsRegular() {
				bins[i].src = c
				break
			}
		}
		if bins[i].src == "" {
			return nil, fmt.Errorf("install needs %s next to banger (%s): not found (build them with `make build`)", b.name, strings.Join(cands, " or "))
		}
	}
	rec := &Record{Owner: owner, Build: h.Build, InstalledAt: h.now().UTC().Truncate(time.Second)}
	units, err := h.Render(rec)
	if err != nil {
		return nil, err
	}
	// Binaries first: the units refer to them.
	for _, b := range bins {
		dst := at(o.Root, b.dst)
		if err := installFile(b.src, dst); err != nil {
			return nil, err
		}
		h.say("installed %s", dst)
	}
	if err := writeRecord(o.Root, rec); err != nil {
		return nil, err
	}
	h.say("wrote %s (owner %s, uid %d)", at(o.Root, RecordPath), owner.User, owner.UID)
	if err := os.MkdirAll(at(o.Root, UnitDir), 0o755); err != nil {
		return nil, fmt.Errorf("create unit directory: %w", err)
	}
	for _, u := range units {
		if err := atomicfile.Write(at(o.Root, filepath.Join(UnitDir, u.Name)), []byte(u.Content), 0o644); err != nil {
			return nil, fmt.Errorf("write %s: %w", u.Name, err)
		}
		h.say("wrote %s", at(o.Root, filepath.Join(UnitDir, u.Name)))
	}
	for _, d := range []struct {
		path string
		mode os.FileMode
	}{{StateDir, 0o700}, {CacheDir, 0o755}} {
		p := at(o.Root, d.path)
		if err := os.MkdirAll(p, d.mode); err != nil {
			return nil, fmt.Errorf("create %s: %w", p, err)
		}
		if h.euid() == 0 {
			if err := os.Chown(p, owner.UID, owner.GID); err != nil {
				return nil, fmt.Errorf("give %s to %s: %w", p, owner.User, err)
			}
		}
	}
	if !onHost {
		h.say("installed under %s; nothing started", o.Root)
		return rec, nil
	}
	if err := h.systemctl(ctx, "daemon-reload"); err != nil {
		return nil, err
	}
	if err := h.systemctl(ctx, "enable", "--quiet", HelperUnit, DaemonUnit); err != nil {
		return nil, err
	}
	if o.NoStart {
		h.say("units enabled, not started (--no-start): start them with `sudo banger system restart`")
		return rec, nil
	}
	if err := h.Restart(ctx); err != nil {
		return nil, err
	}
	return rec, nil
}

// installFile copies src over dst atomically with mode 0755 (nothing to
// do when they are the same file).
func installFile(src, dst string) error {
	if si, err := os.Stat(src); err == nil {
		if di, err := os.Stat(dst); err == nil && os.SameFile(si, di) {
			return nil
		}
	}
	data, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("read %s: %w", src, err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(dst), err)
	}
	if err := atomicfile.Write(dst, data, 0o755); err != nil {
		return fmt.Errorf("install %s: %w", dst, err)
	}
	return nil
}

func (h *Host) systemctl(ctx context.Context, args ...string) error {
	_, err := h.Runner.Run(ctx, hostexec.Cmd{Name: "systemctl", Args: args})
	if err != nil {
		return fmt.Errorf("systemctl %s: %w", strings.Join(args, " "), err)
	}
	return nil
}

// Restart implements Manager.
func (h *Host) Restart(ctx context.Context) error {
	if err := h.needRoot("restart"); err != nil {
		return err
	}
	h.say("restarting %s", HelperUnit)
	if err := h.systemctl(ctx, "restart", HelperUnit); err != nil {
		return err
	}
	if _, err := h.waitReady(ctx, HelperUnit, h.helperReady); err != nil {
		return err
	}
	h.say("restarting %s", DaemonUnit)
	if err := h.systemctl(ctx, "restart", DaemonUnit); err != nil {
		return err
	}
	b, err := h.waitReady(ctx, DaemonUnit, h.daemonReady)
	if err != nil {
		return err
	}
	h.say("bangerd %s is ready", b.Version)
	return nil
}

func (h *Host) waitReady(ctx context.Context, unit string, probe func(context.Context) (buildinfo.Info, error)) (buildinfo.Info, error) {
	limit := h.ReadyTimeout
	if limit == 0 {
		limit = 60 * time.Second
	}
	poll := h.Poll
	if poll == 0 {
		poll = 100 * time.Millisecond
	}
	deadline := time.Now().Add(limit)
	for {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		b, err := probe(pctx)
		cancel()
		if err == nil {
			return b, nil
		}
		if time.Now().After(deadline) {
			return buildinfo.Info{}, fmt.Errorf("%s did not answer within %s: %w (see `systemctl status %s` and `journalctl -u %s`)", unit, limit, err, unit, unit)
		}
		select {
		case <-ctx.Done():
			return buildinfo.Info{}, ctx.Err()
		case <-time.After(poll):
		}
	}
}

func (h *Host) helperReady(ctx context.Context) (buildinfo.Info, error) {
	if h.HelperReady != nil {
		return h.HelperReady(ctx)
	}
	info, err := privops.NewClient(HelperSocket).Ping(ctx)
	if err != nil {
		return buildinfo.Info{}, err
	}
	return buildinfo.Info{Version: info.Version, Commit: info.Commit}, nil
}

func (h *Host) daemonReady(ctx context.Context) (buildinfo.Info, error) {
	if h.DaemonReady != nil {
		return h.DaemonReady(ctx)
	}
	var p api.PingResult
	if err := rpc.NewClient(DaemonSocket).Call(ctx, api.MethodPing, nil, &p); err != nil {
		return buildinfo.Info{}, err
	}
	return p.Build, nil
}

func (h *Host) runningVMs(ctx context.Context) ([]string, error) {
	if h.RunningVMs != nil {
		return h.RunningVMs(ctx)
	}
	var res api.VMList
	if err := rpc.NewClient(DaemonSocket).Call(ctx, api.MethodVMList, api.VMListParams{RunningOnly: true}, &res); err != nil {
		return nil, err
	}
	var names []string
	for _, vm := range res.VMs {
		if vm.State == model.StateRunning {
			names = append(names, vm.Name)
		}
	}
	sort.Strings(names)
	return names, nil
}

func (h *Host) killVM(ctx context.Context, name string) error {
	if h.KillVM != nil {
		return h.KillVM(ctx, name)
	}
	return rpc.NewClient(DaemonSocket).Call(ctx, api.MethodVMKill, api.VMKillParams{Ref: name}, nil)
}

// Status implements Manager.
func (h *Host) Status(ctx context.Context) (*Status, error) {
	st := &Status{CLI: h.Build, DaemonSocket: DaemonSocket, HelperSocket: HelperSocket}
	rec, err := ReadRecord(h.Root)
	if err != nil && !errors.Is(err, ErrNotInstalled) {
		return nil, err
	}
	if rec != nil {
		st.Installed, st.Record = true, rec
	}
	var want map[string]string
	if rec != nil {
		if units, err := h.Render(rec); err == nil {
			want = map[string]string{}
			for _, u := range units {
				want[u.Name] = u.Content
			}
		}
	}
	for _, name := range []string{HelperUnit, DaemonUnit} {
		us := h.unitStatus(ctx, name)
		if want != nil {
			us.Drift = !sameBytes(at(h.Root, filepath.Join(UnitDir, name)), []byte(want[name]))
		}
		st.Units = append(st.Units, us)
	}
	if b, err := h.daemonReady(ctx); err == nil {
		st.Daemon = &b
	} else {
		st.DaemonError = err.Error()
	}
	if b, err := h.helperReady(ctx); err == nil {
		st.Helper = &b
	} else {
		st.HelperError = err.Error()
	}
	if rec != nil {
		if res, err := h.Runner.Run(ctx, hostexec.Cmd{Name: at(h.Root, DaemonPath), Args: []string{"--version"}}); err == nil {
			st.InstalledBinary = strings.TrimPrefix(strings.TrimSpace(string(res.Stdout)), "bangerd ")
		}
	}
	return st, nil
}

func (h *Host) unitStatus(ctx context.Context, name string) UnitStatus {
	us := UnitStatus{Name: name, LoadState: "unknown", ActiveState: "unknown"}
	res, err := h.Runner.Run(ctx, hostexec.Cmd{Name: "systemctl", Args: []string{"show", "--property=LoadState,ActiveState,SubState,MainPID,KillMode", name}})
	if err != nil {
		return us
	}
	for _, line := range strings.Split(string(res.Stdout), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok {
			continue
		}
		switch k {
		case "LoadState":
			us.LoadState = v
		case "ActiveState":
			us.ActiveState = v
		case "SubState":
			us.SubState = v
		case "MainPID":
			us.MainPID, _ = strconv.Atoi(v)
		case "KillMode":
			us.KillMode = v
		}
	}
	return us
}

// Uninstall implements Manager.
func (h *Host) Uninstall(ctx context.Context, o UninstallOptions) error {
	onHost := isHostRoot(o.Root)
	if onHost {
		if err := h.needRoot("uninstall"); err != nil {
			return err
		}
		if err := h.uninstallUnits(ctx, o); err != nil {
			return err
		}
	}
	var errs []error
	rm := func(p string) {
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, err)
		} else {
			h.say("removed %s", p)
		}
	}
	for _, u := range []string{DaemonUnit, HelperUnit} {
		rm(at(o.Root, filepath.Join(UnitDir, u)))
	}
	if onHost {
		if err := h.systemctl(ctx, "daemon-reload"); err != nil {
			errs = append(errs, err)
		}
	}
	rm(at(o.Root, CLIPath))
	rm(at(o.Root, LibDir))
	rm(at(o.Root, RecordPath))
	rm(at(o.Root, RuntimeDir))
	rm(at(o.Root, HelperRuntimeDir))
	if o.Purge {
		rm(at(o.Root, StateDir))
		rm(at(o.Root, CacheDir))
		rm(at(o.Root, HelperCache))
		rm(at(o.Root, JailDir))
	}
	return errors.Join(errs...)
}

// uninstallUnits refuses while VMs run (unless Force, which kills them)
// and stops and disables both units.
func (h *Host) uninstallUnits(ctx context.Context, o UninstallOptions) error {
	names, err := h.runningVMs(ctx)
	switch {
	case err != nil && !o.Force:
		return fmt.Errorf("cannot ask bangerd which VMs are running (%w): start it with `sudo banger system restart`, or pass --force", err)
	case len(names) > 0 && !o.Force:
		return &VMsRunningError{Names: names}
	}
	for _, n := range names {
		h.say("killing VM %s (--force)", n)
		if err := h.killVM(ctx, n); err != nil {
			h.say("warning: kill %s: %v", n, err)
		}
	}
	for _, u := range []string{DaemonUnit, HelperUnit} {
		// Not loaded (already removed) is fine: uninstall is idempotent.
		if err := h.systemctl(ctx, "disable", "--now", "--quiet", u); err != nil {
			h.say("note: %v", err)
		}
	}
	return nil
}

// sameBytes reports whether the file at path holds exactly data.
func sameBytes(path string, data []byte) bool {
	have, err := os.ReadFile(path)
	return err == nil && bytes.Equal(have, data)
}
