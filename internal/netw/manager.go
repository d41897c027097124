package netw

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/bangerdev/banger/internal/privops"
)

// Manager owns the bridge, the taps and the warm tap pool of one daemon.
// Its methods are safe for concurrent use.
type Manager struct {
	ops privops.Ops
	cfg Config
	log *slog.Logger

	// listTaps lists the names of existing tap devices carrying the prefix.
	// Reading links needs no privilege; tests replace it to look inside a
	// network namespace.
	listTaps func(prefix string) ([]string, error)

	mu      sync.Mutex
	idle    []string // pool taps ready to hand out
	closed  bool
	started bool
	kick    chan struct{}
	stop    context.CancelFunc
	done    chan struct{}
}

// ErrClosed is returned by a Manager after Close.
var ErrClosed = errors.New("network manager closed")

// NewManager validates cfg (defaults applied) and returns a Manager. Nothing
// is created until EnsureBridge.
func NewManager(ops privops.Ops, cfg Config, logger *slog.Logger) (*Manager, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Manager{ops: ops, cfg: cfg, log: logger, listTaps: ListTaps, kick: make(chan struct{}, 1)}, nil
}

// Config returns the effective configuration.
func (m *Manager) Config() Config { return m.cfg }

// EnsureBridge creates or repairs the bridge (address, up, isolation rules)
// and starts filling the tap pool in the background. Call it at daemon start
// and before creating taps; calling it again is cheap.
func (m *Manager) EnsureBridge(ctx context.Context) error {
	m.mu.Lock()
	closed := m.closed
	m.mu.Unlock()
	if closed {
		return ErrClosed
	}
	if err := m.ops.EnsureBridge(ctx, m.cfg.BridgeSpec()); err != nil {
		return fmt.Errorf("ensure bridge %s: %w", m.cfg.Bridge, err)
	}
	m.startPool()
	return nil
}

// DeleteBridge deletes idle pool taps, then the bridge and banger's firewall
// table (for `system uninstall`). It fails if VM taps are still attached.
func (m *Manager) DeleteBridge(ctx context.Context) error {
	m.mu.Lock()
	idle := m.idle
	m.idle = nil
	m.mu.Unlock()
	var errs []error
	for _, name := range idle {
		errs = append(errs, m.ops.DeleteTap(ctx, name))
	}
	errs = append(errs, m.ops.DeleteBridge(ctx, m.cfg.Bridge))
	return errors.Join(errs...)
}

func (m *Manager) tapSpec(name string) privops.TapSpec {
	return privops.TapSpec{Name: name, Bridge: m.cfg.Bridge, Owner: m.cfg.TapOwner, Group: m.cfg.TapGroup}
}

// AcquireTap returns a tap for the VM, attached to the bridge and up: an idle
// pool tap when there is one (re-checked before it is handed out), else the
// VM's deterministic TapName, created now. The caller records the name
// (model.Runtime.Tap) before using it and gives it back with ReleaseTap.
func (m *Manager) AcquireTap(ctx context.Context, vmID string) (string, error) {
	for {
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			return "", ErrClosed
		}
		var name string
		if len(m.idle) > 0 {
			name, m.idle = m.idle[0], m.idle[1:]
		}
		m.mu.Unlock()
		if name == "" {
			break
		}
		m.refill()
		// CreateTap ensures: re-attaches the tap if the bridge was recreated.
		if err := m.ops.CreateTap(ctx, m.tapSpec(name)); err != nil {
			m.log.WarnContext(ctx, "pool tap unusable, dropping it", "tap", name, "err", err)
			if derr := m.ops.DeleteTap(ctx, name); derr != nil {
				m.log.WarnContext(ctx, "delete unusable pool tap", "tap", name, "err", derr)
			}
			if ctx.Err() != nil {
				return "", ctx.Err()
			}
			continue
		}
		m.log.DebugContext(ctx, "tap from pool", "tap", name, "vm", vmID)
		return name, nil
	}
	name := m.cfg.TapName(vmID)
	if err := m.ops.CreateTap(ctx, m.tapSpec(name)); err != nil {
		return "", fmt.Errorf("create tap %s for VM %s: %w", name, vmID, err)
	}
	m.refill()
	return name, nil
}

// ReleaseTap deletes a VM's tap. Deleting a missing tap is not an error.
func (m *Manager) ReleaseTap(ctx context.Context, name string) error {
	if name == "" {
		return nil
	}
	m.mu.Lock()
	for i, n := range m.idle {
		if n == name {
			m.idle = append(m.idle[:i:i], m.idle[i+1:]...)
			break
		}
	}
	m.mu.Unlock()
	if err := m.ops.DeleteTap(ctx, name); err != nil {
		return fmt.Errorf("delete tap %s: %w", name, err)
	}
	return nil
}

// IdleTaps returns the names of the idle pool taps.
func (m *Manager) IdleTaps() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.idle...)
}

// Reclaim deletes taps carrying banger's prefix that are neither idle in the
// pool nor reported in use by inUse (the taps recorded in the runtime state of
// running VMs). Call it after reconcile, to remove what a crashed daemon left
// behind. It returns the deleted names.
func (m *Manager) Reclaim(ctx context.Context, inUse func(tap string) bool) ([]string, error) {
	names, err := m.listTaps(m.cfg.TapPrefix)
	if err != nil {
		return nil, fmt.Errorf("list taps: %w", err)
	}
	m.mu.Lock()
	idle := map[string]bool{}
	for _, n := range m.idle {
		idle[n] = true
	}
	m.mu.Unlock()
	var deleted []string
	var errs []error
	for _, name := range names {
		if idle[name] || inUse(name) {
			continue
		}
		if err := m.ops.DeleteTap(ctx, name); err != nil {
			errs = append(errs, fmt.Errorf("delete stale tap %s: %w", name, err))
			continue
		}
		deleted = append(deleted, name)
	}
	if len(deleted) > 0 {
		m.log.InfoContext(ctx, "deleted stale taps", "taps", deleted)
	}
	return deleted, errors.Join(errs...)
}

// ListTaps lists the tap devices of the current network namespace whose
// name starts with prefix. It needs no privilege.
func ListTaps(prefix string) ([]string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, l := range links {
		if l.Type() == "tuntap" && strings.HasPrefix(l.Attrs().Name, prefix) {
			names = append(names, l.Attrs().Name)
		}
	}
	return names, nil
}

// VMNet is one VM's network policy (see privops.VMNetSpec): every VM's
// tap is bound to its address and MAC; NAT lets it reach the internet;
// AllowLAN (with NAT) also lets it reach private ranges and other AllowLAN
// VMs.
type VMNet struct {
	IP       netip.Addr
	MAC      string
	Tap      string
	NAT      bool
	AllowLAN bool
}

// ApplyVMNet installs or updates a VM's network policy (idempotent). The
// bridge must have been ensured.
func (m *Manager) ApplyVMNet(ctx context.Context, v VMNet) error {
	return m.ops.EnsureVMNet(ctx, m.vmNetSpec(v))
}

// ClearVMNet removes a VM's network policy (idempotent).
func (m *Manager) ClearVMNet(ctx context.Context, v VMNet) error {
	return m.ops.ClearVMNet(ctx, m.vmNetSpec(v))
}

func (m *Manager) vmNetSpec(v VMNet) privops.VMNetSpec {
	return privops.VMNetSpec{VMIP: v.IP.String(), MAC: v.MAC, Tap: v.Tap, Bridge: m.cfg.Bridge, NAT: v.NAT, AllowLAN: v.AllowLAN}
}

// RouteDNS asks systemd-resolved to send queries for domain to server
// (ip:port) over the bridge, or reverts that when enable is false. The error
// wraps privops.ErrNotSupported where systemd-resolved is absent.
func (m *Manager) RouteDNS(ctx context.Context, server, domain string, enable bool) error {
	return m.ops.SetResolverRouting(ctx, privops.ResolverSpec{Bridge: m.cfg.Bridge, Server: server, Domain: domain, Enable: enable})
}

// Close stops the pool filler and deletes the idle pool taps. Taps handed
// out to VMs are untouched.
func (m *Manager) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	stop, done := m.stop, m.done
	m.mu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
	m.mu.Lock()
	idle := m.idle
	m.idle = nil
	m.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	for _, name := range idle {
		if err := m.ops.DeleteTap(ctx, name); err != nil {
			errs = append(errs, fmt.Errorf("delete pool tap %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

func (m *Manager) startPool() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.started || m.closed || m.cfg.TapPoolSize == 0 {
		return
	}
	m.started = true
	ctx, cancel := context.WithCancel(context.Background())
	m.stop, m.done = cancel, make(chan struct{})
	go m.fill(ctx)
	m.refill()
}

// refill wakes the pool filler (non-blocking).
func (m *Manager) refill() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

func (m *Manager) poolName() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	name := m.cfg.TapPrefix + poolMarker + hex.EncodeToString(b[:])
	return name[:15]
}

// fill keeps len(idle) at TapPoolSize until ctx ends, backing off on errors.
func (m *Manager) fill(ctx context.Context) {
	defer close(m.done)
	backoff := 250 * time.Millisecond
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.kick:
		}
		for {
			m.mu.Lock()
			need := !m.closed && len(m.idle) < m.cfg.TapPoolSize
			m.mu.Unlock()
			if !need || ctx.Err() != nil {
				break
			}
			name := m.poolName()
			if err := m.ops.CreateTap(ctx, m.tapSpec(name)); err != nil {
				m.log.Warn("tap pool: create tap failed; retrying", "tap", name, "err", err, "retry_in", backoff)
				// A half-created tap must not leak.
				_ = m.ops.DeleteTap(context.Background(), name)
				select {
				case <-ctx.Done():
					return
				case <-time.After(backoff):
				}
				backoff = min(backoff*2, 30*time.Second)
				continue
			}
			backoff = 250 * time.Millisecond
			m.mu.Lock()
			if m.closed {
				m.mu.Unlock()
				_ = m.ops.DeleteTap(context.Background(), name)
				return
			}
			m.idle = append(m.idle, name)
			m.mu.Unlock()
		}
	}
}
