package system

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/buildinfo"
	"github.com/bangerdev/banger/internal/doctor"
	"github.com/bangerdev/banger/internal/privops"
	"github.com/bangerdev/banger/internal/rpc"
)

// DoctorProbe is what the system checks ask of the running services;
// nil fields use the real sockets and /proc.
type DoctorProbe struct {
	Root   string // install root ("" = /)
	CLI    buildinfo.Info
	Daemon func(ctx context.Context) (*api.PingResult, error)
	Helper func(ctx context.Context) (buildinfo.Info, error)
	// ProcUID returns the real uid of a process.
	ProcUID func(pid int) (int, error)
}

// DoctorChecks returns `banger doctor`'s checks of a system install: unit
// drift, KillMode of the installed units, version drift between the CLI,
// the daemon, the helper and the installed build, the daemon's user, and
// the helper socket's owner and mode. Without an install record they
// return one PASS saying banger runs in user mode.
func DoctorChecks(p DoctorProbe) []doctor.Check {
	rec, recErr := ReadRecord(p.Root)
	if recErr != nil {
		if !Installed(p.Root) {
			return []doctor.Check{{Name: "system install", Run: func(context.Context) doctor.Result {
				return doctor.Result{Status: doctor.Pass, Message: "not installed (user mode; `sudo banger system install` runs banger as a service)"}
			}}}
		}
		return []doctor.Check{{Name: "system install", Run: func(context.Context) doctor.Result {
			return doctor.Result{Status: doctor.Fail, Message: recErr.Error(), Hint: "re-run `sudo banger system install --owner USER`"}
		}}}
	}
	if p.Daemon == nil {
		p.Daemon = func(ctx context.Context) (*api.PingResult, error) {
			var r api.PingResult
			if err := rpc.NewClient(DaemonSocket).Call(ctx, api.MethodPing, nil, &r); err != nil {
				return nil, err
			}
			return &r, nil
		}
	}
	if p.Helper == nil {
		p.Helper = func(ctx context.Context) (buildinfo.Info, error) {
			info, err := privops.NewClient(HelperSocket).Ping(ctx)
			return buildinfo.Info{Version: info.Version, Commit: info.Commit}, err
		}
	}
	if p.ProcUID == nil {
		p.ProcUID = procUID
	}
	units, renderErr := RenderUnits(rec, RenderOptions{})
	installed := func(name string) (string, error) {
		data, err := os.ReadFile(at(p.Root, filepath.Join(UnitDir, name)))
		return string(data), err
	}
	fix := "re-run `sudo banger system install` (running VMs survive it)"
	return []doctor.Check{
		{Name: "system units", Run: func(context.Context) doctor.Result {
			if renderErr != nil {
				return doctor.Result{Status: doctor.Fail, Message: renderErr.Error(), Hint: fix}
			}
			var drift []string
			for _, u := range units {
				have, err := installed(u.Name)
				if err != nil {
					drift = append(drift, u.Name+" missing")
				} else if have != u.Content {
					drift = append(drift, u.Name+" differs from what this banger renders")
				}
			}
			if len(drift) > 0 {
				return doctor.Result{Status: doctor.Warn, Message: strings.Join(drift, "; "), Hint: fix}
			}
			return doctor.Result{Status: doctor.Pass, Message: fmt.Sprintf("%s and %s current (owner %s)", HelperUnit, DaemonUnit, rec.Owner.User)}
		}},
		{Name: "unit kill mode", Run: func(context.Context) doctor.Result {
			var bad []string
			for _, name := range []string{HelperUnit, DaemonUnit} {
				have, err := installed(name)
				if err != nil {
					bad = append(bad, name+" missing")
					continue
				}
				d := unitDirectives(have)
				if d["KillMode"] != "process" {
					bad = append(bad, fmt.Sprintf("%s has KillMode=%s (a restart kills the VMs)", name, orNone(d["KillMode"])))
				}
				if name == HelperUnit && d["SendSIGKILL"] != "no" {
					bad = append(bad, fmt.Sprintf("%s has SendSIGKILL=%s", name, orNone(d["SendSIGKILL"])))
				}
			}
			if len(bad) > 0 {
				return doctor.Result{Status: doctor.Fail, Message: strings.Join(bad, "; "), Hint: fix}
			}
			return doctor.Result{Status: doctor.Pass, Message: "KillMode=process in both units, helper SendSIGKILL=no: restarts keep VMs running"}
		}},
		{Name: "versions", Run: func(ctx context.Context) doctor.Result {
			parts := []string{"cli " + p.CLI.Version, "installed " + rec.Build.Version}
			same := p.CLI.Same(rec.Build)
			if d, err := p.Daemon(ctx); err == nil {
				parts = append(parts, "daemon "+d.Build.Version)
				same = same && d.Build.Same(rec.Build)
			} else {
				parts = append(parts, "daemon not answering")
				same = false
			}
			if h, err := p.Helper(ctx); err == nil {
				parts = append(parts, "helper "+h.Version)
				same = same && h.Same(rec.Build)
			} else {
				parts = append(parts, "helper not answering")
				same = false
			}
			if !same {
				return doctor.Result{Status: doctor.Warn, Message: strings.Join(parts, ", "),
					Hint: "install one build everywhere: `sudo banger system install` from the banger you want, then `sudo banger system restart`"}
			}
			return doctor.Result{Status: doctor.Pass, Message: "cli, daemon, helper and installed binaries are " + rec.Build.Version}
		}},
		{Name: "daemon user", Run: func(ctx context.Context) doctor.Result {
			d, err := p.Daemon(ctx)
			if err != nil {
				return doctor.Result{Status: doctor.Fail, Message: "the system daemon does not answer: " + err.Error(), Hint: "`sudo banger system restart`; see `journalctl -u bangerd`"}
			}
			uid, err := p.ProcUID(d.PID)
			if err != nil {
				return doctor.Result{Status: doctor.Warn, Message: fmt.Sprintf("cannot read the daemon's (pid %d) uid: %v", d.PID, err)}
			}
			if uid == 0 {
				return doctor.Result{Status: doctor.Fail, Message: fmt.Sprintf("the owner daemon (pid %d) runs as root", d.PID), Hint: fix}
			}
			if uid != rec.Owner.UID {
				return doctor.Result{Status: doctor.Fail, Message: fmt.Sprintf("the owner daemon (pid %d) runs as uid %d, the install's owner is %s (uid %d)", d.PID, uid, rec.Owner.User, rec.Owner.UID), Hint: fix}
			}
			return doctor.Result{Status: doctor.Pass, Message: fmt.Sprintf("pid %d runs as %s (uid %d), not root", d.PID, rec.Owner.User, uid)}
		}},
		{Name: "helper socket", Run: func(context.Context) doctor.Result {
			return checkHelperSocket(at(p.Root, HelperSocket), rec.Owner.UID)
		}},
		{Name: "tun device", Run: func(context.Context) doctor.Result {
			return checkTun(at(p.Root, "/dev/net/tun"), rec.Owner)
		}},
	}
}

// checkTun wants /dev/net/tun usable by the owner: the VMMs run as the
// owner and open it for their taps (Debian ships it 0666).
func checkTun(path string, o Owner) doctor.Result {
	fi, err := os.Stat(path)
	if err != nil {
		return doctor.Result{Status: doctor.Fail, Message: path + ": " + err.Error(), Hint: "load the tun module (`modprobe tun`)"}
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	perm := fi.Mode().Perm()
	usable := perm&0o006 == 0o006 ||
		(ok && int(st.Uid) == o.UID && perm&0o600 == 0o600) ||
		(ok && int(st.Gid) == o.GID && perm&0o060 == 0o060)
	if fi.Mode()&os.ModeCharDevice == 0 || !usable {
		return doctor.Result{Status: doctor.Fail, Message: fmt.Sprintf("%s (mode %v) cannot be opened by the owner %s: VMs cannot get a network", path, fi.Mode(), o.User),
			Hint: "chmod 0666 " + path + " (the default on Debian)"}
	}
	return doctor.Result{Status: doctor.Pass, Message: fmt.Sprintf("%s usable by %s", path, o.User)}
}

func orNone(s string) string {
	if s == "" {
		return "(unset)"
	}
	return s
}

// checkHelperSocket wants a socket owned by the owner with no group or
// other permissions, in a root-owned directory nobody else can write.
func checkHelperSocket(path string, owner int) doctor.Result {
	hint := "`sudo banger system restart` recreates it"
	dir, err := os.Lstat(filepath.Dir(path))
	if err != nil {
		return doctor.Result{Status: doctor.Fail, Message: "helper directory: " + err.Error(), Hint: hint}
	}
	if ds, ok := dir.Sys().(*syscall.Stat_t); !ok || ds.Uid != 0 || dir.Mode().Perm()&0o022 != 0 || !dir.IsDir() {
		return doctor.Result{Status: doctor.Fail, Message: fmt.Sprintf("%s must be a root-owned directory only root can write (mode %v)", filepath.Dir(path), dir.Mode()), Hint: hint}
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return doctor.Result{Status: doctor.Fail, Message: "helper socket: " + err.Error(), Hint: hint}
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case fi.Mode()&os.ModeSocket == 0:
		return doctor.Result{Status: doctor.Fail, Message: path + " is not a socket", Hint: hint}
	case !ok || int(st.Uid) != owner:
		return doctor.Result{Status: doctor.Fail, Message: fmt.Sprintf("%s is owned by uid %d, not the owner (uid %d)", path, st.Uid, owner), Hint: hint}
	case fi.Mode().Perm()&0o077 != 0:
		return doctor.Result{Status: doctor.Fail, Message: fmt.Sprintf("%s has mode %v: other users could ask the helper for privileged operations", path, fi.Mode().Perm()), Hint: hint}
	}
	return doctor.Result{Status: doctor.Pass, Message: fmt.Sprintf("%s owned by uid %d, mode %v", path, owner, fi.Mode().Perm())}
}

// unitDirectives returns the last value of each Key= line of a unit.
func unitDirectives(content string) map[string]string {
	res := map[string]string{}
	for _, line := range strings.Split(content, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || line[0] == ';' || line[0] == '[' {
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok {
			res[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return res
}

func procUID(pid int) (int, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "Uid:"); ok {
			if f := strings.Fields(v); len(f) > 0 {
				return strconv.Atoi(f[0])
			}
		}
	}
	return 0, fmt.Errorf("no Uid in /proc/%d/status", pid)
}
