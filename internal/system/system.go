// Package system installs and runs banger as a pair of systemd services
// ("system mode"):
//
//   - bangerd-root.service runs the root helper (`bangerd root-helper`), the
//     only root process, with a capability bounding set limited to what its
//     operations need;
//   - bangerd.service runs the owner daemon (`bangerd`) as the owner user,
//     with no capabilities: it asks the helper for every privileged step.
//
// Both units use KillMode=process and RuntimeDirectoryPreserve=yes, and the
// helper SendSIGKILL=no, so restarting either (or both) never kills a VMM:
// the VMMs the helper launched stay in its cgroup and are adopted again by
// the daemon's reconcile.
//
// Everything is written below an install root ("/" on a host; any directory
// for packagers, image builders and tests, which then starts nothing):
//
//	<root>/usr/local/bin/banger                 the CLI
//	<root>/usr/local/lib/banger/bangerd         daemon and root helper
//	<root>/etc/banger/install.toml              the install record (Record)
//	<root>/etc/systemd/system/bangerd.service
//	<root>/etc/systemd/system/bangerd-root.service
//	<root>/var/lib/banger, <root>/var/cache/banger   owned by the owner
//
// The Manager interface is what the CLI (`banger system ...`) and `banger
// update` use; Host is its implementation.
package system

import (
	"context"
	"errors"
	"time"

	"github.com/bangerdev/banger/internal/buildinfo"
)

// Fixed locations of a system install, relative to the install root.
const (
	BinDir       = "/usr/local/bin"
	LibDir       = "/usr/local/lib/banger"
	UnitDir      = "/etc/systemd/system"
	ConfigDir    = "/etc/banger"
	RecordPath   = "/etc/banger/install.toml"
	StateDir     = "/var/lib/banger"
	CacheDir     = "/var/cache/banger"
	HelperCache  = "/var/cache/banger-root" // the root helper's cache (paths.HelperCacheDir)
	JailDir      = "/var/lib/banger-jail"   // the jailer's chroot base (paths.SystemJailerChrootBase)
	RuntimeDir   = "/run/banger"
	DaemonUnit   = "bangerd.service"
	HelperUnit   = "bangerd-root.service"
	CLIBinary    = "banger"
	DaemonBinary = "bangerd"
	AgentBinary  = "banger-agent"
)

// DaemonPath is the installed bangerd (daemon and root helper).
const DaemonPath = LibDir + "/" + DaemonBinary

// AgentPath is the installed guest agent the daemon writes into every VM
// (beside bangerd, where the daemon looks for it).
const AgentPath = LibDir + "/" + AgentBinary

// CLIPath is the installed banger CLI.
const CLIPath = BinDir + "/" + CLIBinary

// Errors callers branch on.
var (
	// ErrNeedsRoot: the operation changes the host and this process is
	// not root. The message says to use sudo.
	ErrNeedsRoot = errors.New("needs root: run it with sudo")
	// ErrUnknownOwner: the owner user does not exist on this host.
	ErrUnknownOwner = errors.New("unknown owner")
	// ErrNotInstalled: there is no install record.
	ErrNotInstalled = errors.New("banger is not installed as a system service")
	// ErrVMsRunning: uninstall refused because VMs run (see VMsRunningError).
	ErrVMsRunning = errors.New("VMs are running")
)

// Owner is the user the owner daemon runs as.
type Owner struct {
	User string `toml:"user" json:"user"`
	UID  int    `toml:"uid" json:"uid"`
	GID  int    `toml:"gid" json:"gid"`
	Home string `toml:"home" json:"home"`
}

// Record is /etc/banger/install.toml: who owns the install and what was
// installed. Units are always rendered from a Record, so re-rendering from
// the installed record reproduces the installed units (doctor compares
// them to detect drift).
type Record struct {
	Owner       Owner          `toml:"owner" json:"owner"`
	Build       buildinfo.Info `toml:"build" json:"build"`
	InstalledAt time.Time      `toml:"installed_at" json:"installed_at"`
}

// Unit is one rendered systemd unit file.
type Unit struct {
	Name    string // e.g. bangerd.service
	Content string
}

// InstallOptions configure Install.
type InstallOptions struct {
	// Owner is the owner user's name ("" = $SUDO_USER).
	Owner string
	// Root is the install root ("" or "/" = this host). Any other root
	// only writes files: nothing is started and systemctl is not run.
	Root string
	// NoStart writes and enables the units without starting them.
	NoStart bool
	// SourceDir holds the banger and bangerd binaries to install
	// ("" = the directory of the running executable).
	SourceDir string
}

// UninstallOptions configure Uninstall.
type UninstallOptions struct {
	// Root is the install root ("" or "/" = this host, which needs root
	// and runs systemctl; any other root only removes files).
	Root string
	// Purge also removes /var/lib/banger, /var/cache/banger and the
	// helper's /var/cache/banger-root (all VMs, images and kernels).
	// /etc/banger/config.toml (the admin's), the owner's ~/.ssh/config
	// include and known_hosts stay.
	Purge bool
	// Force uninstalls even though VMs are running: it asks the daemon
	// to kill them first (and goes on if the daemon does not answer).
	Force bool
}

// UnitStatus is what systemd says about one unit.
type UnitStatus struct {
	Name        string `json:"name"`
	LoadState   string `json:"load_state"`
	ActiveState string `json:"active_state"`
	SubState    string `json:"sub_state"`
	MainPID     int    `json:"main_pid"`
	KillMode    string `json:"kill_mode"`
	// Drift is true when the installed unit file differs from the one
	// this binary renders from the install record.
	Drift bool `json:"drift"`
}

// Status is `banger system status`.
type Status struct {
	Installed       bool            `json:"installed"`
	Record          *Record         `json:"record,omitempty"`
	Units           []UnitStatus    `json:"units"`
	CLI             buildinfo.Info  `json:"cli"`
	Daemon          *buildinfo.Info `json:"daemon,omitempty"`           // nil when it does not answer
	DaemonError     string          `json:"daemon_error,omitempty"`     // why it does not answer
	Helper          *buildinfo.Info `json:"helper,omitempty"`           // nil when it does not answer
	HelperError     string          `json:"helper_error,omitempty"`     // why it does not answer
	InstalledBinary string          `json:"installed_binary,omitempty"` // `bangerd --version` of the installed binary
	DaemonSocket    string          `json:"daemon_socket"`
	HelperSocket    string          `json:"helper_socket"`
}

// Manager installs, inspects, restarts and removes banger's system
// services. Host is the implementation; tests use fakes.
//
// Contract:
//   - Render has no side effects: it returns the two units (helper first)
//     for rec exactly as Install would write them.
//   - Install is idempotent: it (re)writes the binaries, install.toml and
//     both units, runs `systemctl daemon-reload` and enables them; unless
//     NoStart or a non-host Root, it then restarts the helper, then the
//     daemon, and returns only when both answer on their sockets. Running
//     VMs survive it (KillMode=process). Changed unit templates are
//     refreshed by running Install again from the new binary (what
//     `banger update` does with the new build).
//   - Restart restarts the helper, then the daemon, and returns when both
//     answer (not merely when systemd says "active"). VMs survive it.
//   - Status never changes anything and works without root.
//   - Uninstall refuses (ErrVMsRunning, naming them) while VMs run unless
//     Force; it stops and removes the units, binaries and install record,
//     and with Purge the state and cache directories.
//   - Operations that change the host return an error wrapping
//     ErrNeedsRoot when not run as root (with a non-host Root, Install
//     and Uninstall only need write access to that directory).
type Manager interface {
	Render(rec *Record) ([]Unit, error)
	Install(ctx context.Context, o InstallOptions) (*Record, error)
	Restart(ctx context.Context) error
	Status(ctx context.Context) (*Status, error)
	Uninstall(ctx context.Context, o UninstallOptions) error
}
