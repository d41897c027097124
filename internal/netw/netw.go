// Package netw is banger's host networking: the bridge every VM's tap is
// attached to, the taps themselves (with a warm pool), address planning for
// IP leases, MAC addresses, per-VM NAT and resolver routing. All privileged
// work goes through privops.Ops; this package only decides what to ask for.
//
// Leases themselves live in the store (store.AllocateLease with the range
// from Plan); netw never hands out addresses.
//
// # Tap names and the warm pool
//
// Every tap name starts with Config.TapPrefix (default "bgtap", which
// privops requires as a prefix) and fits the kernel's 15-byte limit:
//
//   - prefix + hex(sha256(vmID)) truncated: the name a VM gets when the pool
//     is empty or disabled (deterministic, see TapName);
//   - prefix + "p" + random hex: pool taps, created ahead of time by a
//     background goroutine so a VM create does not wait on tap setup.
//
// A pool tap is handed to a VM as it is (no rename: the kernel cannot rename
// a tap while a VMM holds it, and privops has no rename operation). The VM
// records the name in its runtime state (model.Runtime.Tap), so its teardown
// never depends on the name's shape. Released taps are deleted, never
// recycled, so no state (owner, queued frames, a dying VMM's fd) leaks
// between VMs. Idle pool taps are deleted by Manager.Close; taps left over by
// a crashed daemon are removed by Manager.Reclaim after reconcile.
package netw

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/bangerdev/banger/internal/config"
	"net/netip"
	"strings"

	"github.com/bangerdev/banger/internal/privops"
)

// Defaults.
const (
	DefaultBridge    = config.DefaultBridge // one home: config's defaults
	DefaultCIDR      = config.DefaultCIDR
	DefaultTapPrefix = privops.TapNamePrefix
	DefaultPoolSize  = 2
	maxTapPrefixLen  = 8
)

// ErrInvalidConfig wraps configuration errors.
var ErrInvalidConfig = errors.New("invalid network configuration")

// Config is the host network configuration (config.toml [network]).
type Config struct {
	// Bridge is the bridge every tap is attached to (default br-banger).
	Bridge string
	// CIDR is the bridge's address with prefix, e.g. 172.30.0.1/24. A network
	// address (172.30.0.0/24) means its first host address.
	CIDR string
	// TapPoolSize is the number of idle taps kept ready; 0 disables the pool.
	TapPoolSize int
	// TapPrefix starts every tap name; it must start with "bgtap" and be at
	// most 8 bytes (default "bgtap").
	TapPrefix string
	// TapOwner and TapGroup may open the taps without privileges: the uid/gid
	// the VMM runs as (the owner user). -1 = none.
	TapOwner, TapGroup int
	// MTU of the bridge; 0 keeps the kernel default.
	MTU int
	// Uplink, when set, restricts NAT to traffic leaving through this
	// interface; by default any interface but the bridge.
	Uplink string
}

// WithDefaults fills unset fields (Bridge, CIDR, TapPrefix).
func (c Config) WithDefaults() Config {
	if c.Bridge == "" {
		c.Bridge = DefaultBridge
	}
	if c.CIDR == "" {
		c.CIDR = DefaultCIDR
	}
	if c.TapPrefix == "" {
		c.TapPrefix = DefaultTapPrefix
	}
	return c
}

// Validate checks the configuration (after WithDefaults).
func (c Config) Validate() error {
	if err := privops.ValidateIfName(c.Bridge); err != nil {
		return fmt.Errorf("%w: bridge: %v", ErrInvalidConfig, err)
	}
	if _, _, _, _, err := Plan(c.CIDR); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	if !strings.HasPrefix(c.TapPrefix, privops.TapNamePrefix) || len(c.TapPrefix) > maxTapPrefixLen {
		return fmt.Errorf("%w: tap prefix %q must start with %q and be at most %d bytes", ErrInvalidConfig, c.TapPrefix, privops.TapNamePrefix, maxTapPrefixLen)
	}
	if err := privops.ValidateIfName(c.TapPrefix); err != nil {
		return fmt.Errorf("%w: tap prefix: %v", ErrInvalidConfig, err)
	}
	if c.TapPoolSize < 0 || c.TapPoolSize > 64 {
		return fmt.Errorf("%w: tap_pool_size %d must be 0-64", ErrInvalidConfig, c.TapPoolSize)
	}
	if c.Uplink != "" {
		if err := privops.ValidateIfName(c.Uplink); err != nil {
			return fmt.Errorf("%w: uplink: %v", ErrInvalidConfig, err)
		}
	}
	if err := privops.ValidateBridgeSpec(c.BridgeSpec()); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	return nil
}

// BridgeSpec is the privops description of the configured bridge.
func (c Config) BridgeSpec() privops.BridgeSpec {
	gw, _, _, bits, err := Plan(c.CIDR)
	cidr := c.CIDR
	if err == nil {
		cidr = netip.PrefixFrom(gw, bits).String()
	}
	return privops.BridgeSpec{Name: c.Bridge, CIDR: cidr, MTU: c.MTU, Uplink: c.Uplink}
}

// Plan splits the bridge CIDR into the gateway (the bridge's own address),
// the range of addresses leases are taken from (first usable after the
// gateway .. last before the broadcast address) and the prefix length.
// "172.30.0.1/24" and "172.30.0.0/24" both give gateway 172.30.0.1, range
// 172.30.0.2-172.30.0.254, prefix 24. IPv4 only, prefix /8-/30.
func Plan(cidr string) (gateway, first, last netip.Addr, prefix int, err error) {
	p, perr := netip.ParsePrefix(strings.TrimSpace(cidr))
	if perr != nil || !p.Addr().Is4() {
		return gateway, first, last, 0, fmt.Errorf("bridge CIDR %q must be IPv4 with a prefix, e.g. 172.30.0.1/24", cidr)
	}
	bits := p.Bits()
	if bits < 8 || bits > 30 {
		return gateway, first, last, 0, fmt.Errorf("bridge CIDR %q: prefix /%d must be between /8 and /30", cidr, bits)
	}
	network := p.Masked().Addr()
	n4 := network.As4()
	base := binary.BigEndian.Uint32(n4[:])
	broadcast := base | (1<<(32-bits) - 1)
	gw := p.Addr()
	if gw == network {
		gw = network.Next()
	}
	g4 := gw.As4()
	g := binary.BigEndian.Uint32(g4[:])
	if g == broadcast {
		return gateway, first, last, 0, fmt.Errorf("bridge CIDR %q: the gateway cannot be the broadcast address", cidr)
	}
	if g+1 > broadcast-1 {
		return gateway, first, last, 0, fmt.Errorf("bridge CIDR %q leaves no address for VMs after the gateway %s; use the first host address as the gateway", cidr, gw)
	}
	return gw, addrFrom(g + 1), addrFrom(broadcast - 1), bits, nil
}

func addrFrom(v uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// MACFor derives a VM's MAC address from its IPv4 lease: locally
// administered, unicast, "02:ba:" followed by the four address bytes (so it
// is unique on the bridge and stable across stop/start).
func MACFor(ip netip.Addr) string {
	a := ip.Unmap().As4()
	return fmt.Sprintf("02:ba:%02x:%02x:%02x:%02x", a[0], a[1], a[2], a[3])
}

// TapName is the deterministic tap name of a VM with the default prefix.
func TapName(vmID string) string { return tapName(DefaultTapPrefix, vmID) }

// TapName is the deterministic tap name of a VM: the prefix followed by the
// hex SHA-256 of the id, cut to 15 bytes.
func (c Config) TapName(vmID string) string {
	return tapName(c.WithDefaults().TapPrefix, vmID)
}

func tapName(prefix, vmID string) string {
	sum := sha256.Sum256([]byte(vmID))
	name := prefix + hex.EncodeToString(sum[:])
	return name[:15]
}

// poolMarker follows the prefix in pool tap names. It is not a hex digit, so
// pool names never collide with TapName results.
const poolMarker = "p"

// IsPoolTap reports whether name is a pool tap name for prefix.
func IsPoolTap(prefix, name string) bool {
	return strings.HasPrefix(name, prefix+poolMarker)
}
