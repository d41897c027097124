package privops

import (
	"log/slog"
	"sync"

	"github.com/bangerdev/banger/internal/hostexec"
)

// Local performs privileged operations in-process. It is used by the owner
// daemon when it runs as root, and behind the root helper's server. Its
// methods live in files by area: local_net.go (bridge, tap, NAT, resolver),
// local_disk.go (loop, device-mapper), local_process.go (VMM launch/signal,
// chown). A Local is safe for concurrent use; use it through a pointer.
type Local struct {
	Runner hostexec.Runner
	Logger *slog.Logger
	// Firewall is what guests may reach on the host (firewall.go), from
	// root's own configuration.
	Firewall FirewallConfig
	// ProcSysDir is where sysctls are read and written (default
	// /proc/sys; tests point it elsewhere).
	ProcSysDir string
	// Roots are the managed roots every path argument is resolved below,
	// on descriptors and without symlinks (beneath.go). The root helper
	// sets them from its policy; empty = resolve from "/" (a daemon that
	// runs as root itself).
	Roots []string
	// SignalOwnerUID and VMMPaths, when set (the root helper), restrict
	// SignalVMM to processes running as that uid and executing one of
	// these binaries. SignalOwnerUID -1 = no restriction.
	SignalOwnerUID int
	VMMPaths       []string
	// JailerChrootBase is where PrepareJail builds Firecracker jails
	// (jail.go): root's own directory from root's configuration; "" =
	// jailer mode unavailable.
	JailerChrootBase string

	// bridgeMu serialises EnsureBridge and DeleteBridge in this process, so
	// concurrent first starts do not interleave the bridge's steps (the
	// iptables fallback's check-then-add is not atomic). Other processes are
	// handled by tolerating "already exists" (see EnsureBridge).
	bridgeMu sync.Mutex

	// children are the VMM processes this Local launched and has not
	// reaped yet (see LaunchVMM). A jailer runs as root until it drops to
	// the owner: SignalVMM may signal such a root process only while it
	// is one of these.
	childMu  sync.Mutex
	children map[int]bool
}

// NewLocal returns a Local using runner for host tools.
func NewLocal(runner hostexec.Runner, logger *slog.Logger) *Local {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Local{Runner: runner, Logger: logger, SignalOwnerUID: -1}
}
