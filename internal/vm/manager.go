// Package vm is banger's VM lifecycle manager: it turns a VM record into a
// running guest and back (start, stop, restart, kill, destroy, set, stats)
// and reconciles the recorded state with the host after a daemon restart.
//
// # Steps and undo
//
// Every lifecycle operation is a named list of steps (see the Step*
// constants). Each step reports a progress stage, and each step that makes a
// resource pushes an undo; when a step fails (or the caller's context ends)
// the undos run in reverse order, on a context that is not cancelled, and
// their errors are joined to the step's error.
//
// # Teardown identity
//
// What is needed to release a resource (lease, disk handle, tap name, NAT,
// runtime dir, VMM pid + evidence) is written to the VM record
// (model.VM.Runtime) before the resource is used, so a daemon that crashes at
// any point can still clean up: Reconcile, run at daemon start, re-attaches
// VMs whose VMM is verifiably alive and releases the rest. Taps made by a
// crashed daemon before their name was recorded are reclaimed by the network
// manager; VMMs launched but not yet recorded are found through their pidfile
// in the VM's runtime dir (vmm.Driver.Find).
//
// # Locking
//
// The Manager takes no per-VM lock itself: the caller (the daemon) holds the
// VM's lock ("vm:<id>", see internal/daemon/locks.go) around every call that
// names a VM, and calls Reconcile before serving. Calls for different VMs run
// fully in parallel. The only lock inside is Manager.mu, a leaf mutex guarding
// the cache of ssh connections; nothing is called while holding it.
package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bangerdev/banger/internal/disk"
	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/netw"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/privops"
	"github.com/bangerdev/banger/internal/template"
	"github.com/bangerdev/banger/internal/vmm"
)

// ErrBadState is wrapped when an operation is not allowed in the VM's
// current state (e.g. set on a running VM). The message says what to do.
var ErrBadState = errors.New("not allowed in this state")

// Store is the part of the state store the manager uses. Contract: GetVM
// wraps model.ErrNotFound for unknown ids; UpdateVM writes every field;
// AllocateLease is idempotent per VM id and never hands one address to two
// VMs; ReleaseLease of a VM without a lease is not an error.
type Store interface {
	GetVM(ctx context.Context, id string) (*model.VM, error)
	UpdateVM(ctx context.Context, vm *model.VM) error
	ListVMs(ctx context.Context) ([]*model.VM, error)
	AllocateLease(ctx context.Context, vmID string, first, last netip.Addr) (netip.Addr, error)
	ReleaseLease(ctx context.Context, vmID string) error
}

// Artifacts provides the image and kernel a VM boots, pulling or building
// them when missing (under their own locks). Errors say what to do.
type Artifacts interface {
	EnsureImage(ctx context.Context, name string) (*model.Image, error)
	EnsureKernel(ctx context.Context, name string) (*model.Kernel, error)
}

// Network is the part of *netw.Manager the manager uses (see that type for
// the contract of each method).
type Network interface {
	Config() netw.Config
	EnsureBridge(ctx context.Context) error
	AcquireTap(ctx context.Context, vmID string) (string, error)
	ReleaseTap(ctx context.Context, name string) error
	ApplyVMNet(ctx context.Context, v netw.VMNet) error
	ClearVMNet(ctx context.Context, v netw.VMNet) error
	Reclaim(ctx context.Context, inUse func(tap string) bool) ([]string, error)
}

// Forwards serves the port forwards of running VMs (*portfwd.Manager).
// Set replaces the VM's forwards with fwds to guestIP (none: removes them)
// and returns an error naming each forward it could not serve; Remove
// stops them all.
type Forwards interface {
	Set(ctx context.Context, vmID string, guestIP netip.Addr, fwds []model.PortForward) error
	Remove(vmID string)
}

// DNS holds the <name>.vm records of running VMs (*vmdns.Server).
type DNS interface {
	Set(name string, ip netip.Addr)
	Remove(name string)
}

// GuestConn is one ssh connection to a guest (*guest.Client). Run returns
// the remote exit status, or an error when there is none; Done is closed
// when the connection ends.
type GuestConn interface {
	Run(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error)
	Done() <-chan struct{}
	Close() error
}

// Guests is the daemon's ssh channel to its guests: the managed key, banger's
// known_hosts and connections. SSHGuests implements it with internal/guest.
type Guests interface {
	// AuthorizedKey is the authorized_keys line of the managed key.
	AuthorizedKey() string
	// PinHostKey records key as the only key of hosts (address and
	// aliases) in banger's known_hosts.
	PinHostKey(hosts []string, key ssh.PublicKey) error
	// Forget removes every known_hosts entry of hosts.
	Forget(hosts ...string) error
	// WaitReady dials addr until the guest's sshd accepts the managed key,
	// timeout passes or ctx ends; the error carries the tail of serialLog.
	WaitReady(ctx context.Context, addr string, aliases []string, serialLog string, timeout time.Duration) (GuestConn, error)
	// WaitOpen waits until addr accepts TCP connections (no ssh
	// handshake), timeout passes or ctx ends; the error carries the tail
	// of serialLog. A restored guest's agent has already seen sshd serve
	// the VM's key, so this only proves the host's path to it.
	WaitOpen(ctx context.Context, addr string, serialLog string, timeout time.Duration) error
	// Dial makes one connection attempt bounded by timeout.
	Dial(ctx context.Context, addr string, aliases []string, timeout time.Duration) (GuestConn, error)
}

// Options are the Manager's dependencies. Store, Artifacts, Drivers,
// DefaultDriver, Network, CoW, Guests and Layout are required.
type Options struct {
	Store     Store
	Artifacts Artifacts
	// Drivers by name ("qemu", "firecracker"); DefaultDriver is used for
	// VMs whose driver is "" or "auto" (it is then recorded in the VM).
	Drivers       map[string]vmm.Driver
	DefaultDriver string
	Network       Network
	// Ops is used to release device-mapper root disks on stop when CoW has
	// no Detach of its own (may be nil when CoW is not dm).
	Ops    privops.Ops
	CoW    disk.CoW
	Runner hostexec.Runner // host tools: mkfs.ext4, debugfs, e2fsck, resize2fs, git
	DNS    DNS             // nil = no DNS records
	// Forwards serves port forwards (nil = VMs with ports cannot start).
	Forwards Forwards
	Guests   Guests
	Layout   paths.Layout
	Logger   *slog.Logger
	Now      func() time.Time

	// Domain is the DNS zone of VM names (default "vm").
	Domain string
	// DNSServers are the resolvers written into guests (default: the bridge
	// address).
	DNSServers []string
	// KernelArgs are appended to every guest's kernel command line.
	KernelArgs string
	// VMMUID and VMMGID are the user the VMM runs as (-1 = the launcher's;
	// the daemon sets them explicitly).
	VMMUID, VMMGID int
	// SSHTimeout bounds the wait for a new guest's sshd (default 3 min).
	SSHTimeout time.Duration
	// StopGrace is how long stop waits for the guest to power itself off
	// before killing the VMM (default 30s).
	StopGrace time.Duration
	// KillWait is how long kill and teardown wait for a signalled VMM to
	// exit (default 10s).
	KillWait time.Duration
	// GitIdentity returns the host user's git name and email for new work
	// disks ("" = none). Default: `git config --global` through Runner.
	GitIdentity func(ctx context.Context) (name, email string)
	// StepHook, when set, is called before each step of every operation
	// with the VM id and step name (tests use it to inject failures or to
	// crash the daemon at a precise point). A non-nil error fails the step.
	StepHook func(ctx context.Context, vmID, op, step string) error
	// AgentBinary is the host path of banger-agent, written into every VM
	// with its token (see internal/image/agent.go). "" = VMs get only the
	// token and Agent returns ErrNoAgent.
	AgentBinary string
	// Templates stores VM templates (nil = every VM cold-boots). A
	// create restores the template of its key, making it on first need.
	Templates *template.Store
	// TemplateDiskMiB is the /root disk size templates are made with
	// (VMs with a larger disk grow it after restore; smaller ones
	// cold-boot). 0 = the first VM's own size.
	TemplateDiskMiB int64
}

// Manager runs VM lifecycles. It is safe for concurrent use on different
// VMs; calls for one VM must be serialised by the caller (see the package
// doc).
type Manager struct {
	o Options

	mu    sync.Mutex
	conns map[string]GuestConn // by VM id: the connection made when ssh came up

	agents agentClients // by VM id: guest agent clients

	tmpl *template.Manager // nil = templates disabled
}

// New returns a Manager. It checks the required dependencies.
func New(o Options) (*Manager, error) {
	var missing []string
	for name, ok := range map[string]bool{
		"Store": o.Store != nil, "Artifacts": o.Artifacts != nil, "Drivers": len(o.Drivers) > 0,
		"Network": o.Network != nil, "CoW": o.CoW != nil, "Guests": o.Guests != nil,
		"Layout": o.Layout.StateDir != "" && o.Layout.RuntimeDir != "",
	} {
		if !ok {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("vm manager: missing dependencies %v", missing)
	}
	if _, ok := o.Drivers[o.DefaultDriver]; !ok {
		return nil, fmt.Errorf("vm manager: default driver %q is not among the drivers", o.DefaultDriver)
	}
	if o.Runner == nil {
		o.Runner = hostexec.Real{}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Domain == "" {
		o.Domain = "vm"
	}
	if o.SSHTimeout <= 0 {
		o.SSHTimeout = 3 * time.Minute
	}
	if o.StopGrace <= 0 {
		o.StopGrace = 30 * time.Second
	}
	if o.KillWait <= 0 {
		o.KillWait = 10 * time.Second
	}
	if o.GitIdentity == nil {
		r := o.Runner
		o.GitIdentity = func(ctx context.Context) (string, string) { return gitIdentity(ctx, r) }
	}
	m := &Manager{o: o, conns: map[string]GuestConn{}}
	if o.Templates != nil {
		m.tmpl = template.NewManager(o.Templates, template.MakerFunc(m.makeTemplate))
	}
	return m, nil
}

// DefaultDriver is the driver used for VMs created with driver "auto".
func (m *Manager) DefaultDriver() string { return m.o.DefaultDriver }

// Close closes the cached guest connections. Running VMs keep running.
func (m *Manager) Close() error {
	m.mu.Lock()
	conns := m.conns
	m.conns = map[string]GuestConn{}
	m.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
	m.agents.closeAll()
	return nil
}

// Conn returns an ssh connection to a running VM: the one kept since its
// start when still open, else a new one (kept for later calls). The caller
// must not close it; it is closed when the VM stops.
func (m *Manager) Conn(ctx context.Context, vm *model.VM) (GuestConn, error) {
	if vm.State != model.StateRunning || vm.IP == "" {
		return nil, fmt.Errorf("VM %s is %s: %w (start it with `banger vm start %s`)", vm.Name, vm.State, model.ErrNotRunning, vm.Name)
	}
	if c := m.cachedConn(vm.ID); c != nil {
		return c, nil
	}
	c, err := m.o.Guests.Dial(ctx, sshAddr(vm), m.aliases(vm), 30*time.Second)
	if err != nil {
		return nil, fmt.Errorf("ssh to %s: %w", vm.Name, err)
	}
	m.keepConn(vm.ID, c)
	return c, nil
}

func (m *Manager) cachedConn(id string) GuestConn {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.conns[id]
	if c == nil {
		return nil
	}
	select {
	case <-c.Done():
		delete(m.conns, id)
		return nil
	default:
		return c
	}
}

func (m *Manager) keepConn(id string, c GuestConn) {
	m.mu.Lock()
	old := m.conns[id]
	m.conns[id] = c
	m.mu.Unlock()
	if old != nil && old != c {
		_ = old.Close()
	}
}

func (m *Manager) dropConn(id string) {
	m.agents.drop(id)
	m.mu.Lock()
	c := m.conns[id]
	delete(m.conns, id)
	m.mu.Unlock()
	if c != nil {
		_ = c.Close()
	}
}

func sshAddr(vm *model.VM) string { return netip.AddrPortFrom(netip.MustParseAddr(vm.IP), 22).String() }

// aliases are the names a VM's host key is pinned under besides its address.
func (m *Manager) aliases(vm *model.VM) []string { return []string{vm.Name + "." + m.o.Domain} }

// driver returns the VM's driver.
func (m *Manager) driver(vm *model.VM) (vmm.Driver, error) {
	name := vm.Driver
	if name == "" || name == "auto" {
		name = m.o.DefaultDriver
	}
	d, ok := m.o.Drivers[name]
	if !ok {
		return nil, fmt.Errorf("VM %s uses vmm driver %q, which this daemon does not have (known: %v)", vm.Name, name, m.driverNames())
	}
	return d, nil
}

func (m *Manager) driverNames() []string {
	var out []string
	for n := range m.o.Drivers {
		out = append(out, n)
	}
	return out
}

// save writes vm to the store on a context that survives cancellation: the
// record must follow reality even when the client went away.
func (m *Manager) save(ctx context.Context, vm *model.VM) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := m.o.Store.UpdateVM(ctx, vm); err != nil {
		return fmt.Errorf("record VM %s: %w", vm.Name, err)
	}
	return nil
}
