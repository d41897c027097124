package privops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/bangerdev/banger/internal/hostexec"
)

// Host networking (bridge, taps, NAT, resolver routing).
//
// Firewall design. banger keeps every rule it needs in its own nftables
// table, `ip banger` (NATTable), so it never edits anybody else's rules:
//
//	table ip banger {
//	  set nat_vms { type ipv4_addr; }              # VMs created with --nat
//	  chain postrouting { type nat hook postrouting priority srcnat; policy accept;
//	    ip saddr @nat_vms oifname != "BRIDGE" masquerade }
//	  chain forward { type filter hook forward priority filter; policy accept;
//	    oifname "BRIDGE" ct state established,related accept      # replies
//	    iifname "BRIDGE" oifname != "BRIDGE" ip saddr @nat_vms accept
//	    iifname "BRIDGE" oifname != "BRIDGE" drop                 # no --nat: stays on the bridge
//	    oifname "BRIDGE" iifname != "BRIDGE" drop }               # nothing new comes in
//	}
//
// The per-VM state is one element of the nat_vms set, so EnsureNAT and
// ClearNAT add or remove exactly that VM's NAT and nothing else; the chains
// are rewritten with `flush chain` + `add rule` inside one `nft -f -`
// transaction, which makes every call atomic, idempotent and safe against
// concurrent callers (two daemons, or two VMs starting at once). Forward rules
// are keyed on the bridge and the VM's address, not on its tap: a tap is a
// bridge port, so routed packets enter the IP layer on the bridge.
//
// The isolation rules are installed by EnsureBridge already, so a VM without
// NAT cannot reach beyond the bridge even on hosts where something else turned
// ip_forward on. Note that an accept in banger's table does not override a
// drop in another table (e.g. a Docker host's FORWARD policy DROP); the
// iptables fallback, which jumps to its own chain from the top of FORWARD,
// does.
//
// Where nft is missing, the same rules are written with iptables into banger's
// own chains (IPTForwardChain in filter, IPTNATChain in nat) with one rule
// per VM carrying the comment "banger:<ip>".

// TapNamePrefix is the prefix every tap banger creates or deletes must carry.
const TapNamePrefix = "bgtap"

// NATTable is the name of banger's nftables table (family ip).
const NATTable = "banger"

// NATSet is the nftables set holding the addresses of VMs with NAT.
const NATSet = "nat_vms"

// iptables fallback chains.
const (
	IPTForwardChain = "BANGER-FWD"
	IPTNATChain     = "BANGER-POST"
)

// ValidateIfName checks a Linux interface name conservatively: 1-15 bytes of
// [A-Za-z0-9_.-], not "." or "..".
func ValidateIfName(name string) error {
	if name == "" || len(name) > 15 {
		return fmt.Errorf("%w: interface name %q must be 1-15 bytes", ErrInvalidArgument, name)
	}
	if name == "." || name == ".." {
		return fmt.Errorf("%w: interface name %q", ErrInvalidArgument, name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("%w: interface name %q has %q (allowed: letters, digits, '-', '_', '.')", ErrInvalidArgument, name, rune(c))
		}
	}
	return nil
}

// ValidateTapName checks an interface name and banger's tap prefix.
func ValidateTapName(name string) error {
	if err := ValidateIfName(name); err != nil {
		return err
	}
	if !strings.HasPrefix(name, TapNamePrefix) || len(name) == len(TapNamePrefix) {
		return fmt.Errorf("%w: tap %q must start with %q", ErrInvalidArgument, name, TapNamePrefix)
	}
	return nil
}

// ValidateBridgeSpec checks a BridgeSpec: a valid interface name, an IPv4
// gateway address with a prefix of 8-30 bits, an MTU of 0 (default) or
// 576-65535.
func ValidateBridgeSpec(spec BridgeSpec) error {
	if err := ValidateIfName(spec.Name); err != nil {
		return fmt.Errorf("bridge: %w", err)
	}
	if strings.HasPrefix(spec.Name, TapNamePrefix) {
		return fmt.Errorf("%w: bridge %q must not use the tap prefix %q", ErrInvalidArgument, spec.Name, TapNamePrefix)
	}
	p, err := netip.ParsePrefix(spec.CIDR)
	if err != nil || !p.Addr().Is4() {
		return fmt.Errorf("%w: bridge address %q must be an IPv4 address with prefix, e.g. 172.30.0.1/24", ErrInvalidArgument, spec.CIDR)
	}
	if p.Bits() < 8 || p.Bits() > 30 {
		return fmt.Errorf("%w: bridge prefix /%d must be between /8 and /30", ErrInvalidArgument, p.Bits())
	}
	if p.Addr() == p.Masked().Addr() {
		return fmt.Errorf("%w: bridge address %q is the network address; use a host address such as the first one", ErrInvalidArgument, spec.CIDR)
	}
	if spec.MTU != 0 && (spec.MTU < 576 || spec.MTU > 65535) {
		return fmt.Errorf("%w: bridge MTU %d out of range 576-65535", ErrInvalidArgument, spec.MTU)
	}
	return nil
}

// ValidateTapSpec checks a TapSpec.
func ValidateTapSpec(spec TapSpec) error {
	if err := ValidateTapName(spec.Name); err != nil {
		return err
	}
	if err := ValidateIfName(spec.Bridge); err != nil {
		return fmt.Errorf("bridge: %w", err)
	}
	if spec.Owner < -1 || spec.Group < -1 {
		return fmt.Errorf("%w: tap owner/group %d/%d (use -1 for none)", ErrInvalidArgument, spec.Owner, spec.Group)
	}
	return nil
}

// ValidateNATSpec checks a NATSpec. The tap is optional (it is not used in
// rules, see the package notes) but must carry the tap prefix when given.
func ValidateNATSpec(spec NATSpec) error {
	ip, err := netip.ParseAddr(spec.VMIP)
	if err != nil || !ip.Is4() || ip.IsUnspecified() || ip.IsMulticast() || ip.IsLoopback() {
		return fmt.Errorf("%w: VM address %q must be a unicast IPv4 address", ErrInvalidArgument, spec.VMIP)
	}
	if spec.Tap != "" {
		if err := ValidateTapName(spec.Tap); err != nil {
			return err
		}
	}
	if err := ValidateIfName(spec.Bridge); err != nil {
		return fmt.Errorf("bridge: %w", err)
	}
	if spec.Uplink != "" {
		if err := ValidateIfName(spec.Uplink); err != nil {
			return fmt.Errorf("uplink: %w", err)
		}
		if spec.Uplink == spec.Bridge {
			return fmt.Errorf("%w: uplink must differ from the bridge", ErrInvalidArgument)
		}
	}
	return nil
}

// ValidateResolverSpec checks a ResolverSpec.
func ValidateResolverSpec(spec ResolverSpec) error {
	if err := ValidateIfName(spec.Bridge); err != nil {
		return fmt.Errorf("bridge: %w", err)
	}
	if !spec.Enable {
		return nil
	}
	if _, err := netip.ParseAddrPort(spec.Server); err != nil {
		return fmt.Errorf("%w: DNS server %q must be ip:port", ErrInvalidArgument, spec.Server)
	}
	d := strings.TrimSuffix(strings.TrimPrefix(spec.Domain, "~"), ".")
	if d == "" || len(d) > 253 {
		return fmt.Errorf("%w: DNS domain %q", ErrInvalidArgument, spec.Domain)
	}
	for _, label := range strings.Split(d, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("%w: DNS domain %q", ErrInvalidArgument, spec.Domain)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("%w: DNS domain %q", ErrInvalidArgument, spec.Domain)
			}
		}
	}
	return nil
}

func isLinkNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}

// EnsureBridge creates the bridge if missing, adds its address if missing,
// brings it up and installs banger's isolation rules (see the firewall notes
// above). Calling it again is a no-op. Other addresses already on the bridge
// are left alone (the doctor reports them). Concurrent calls are safe: in
// one process they are serialised, and a bridge or address that another
// process created in the meantime ("file exists") counts as present once the
// link is re-read and verified to be a bridge.
func (l *Local) EnsureBridge(ctx context.Context, spec BridgeSpec) error {
	if err := ValidateBridgeSpec(spec); err != nil {
		return err
	}
	addr, err := netlink.ParseAddr(spec.CIDR)
	if err != nil {
		return fmt.Errorf("bridge address %q: %w", spec.CIDR, err)
	}
	l.bridgeMu.Lock()
	defer l.bridgeMu.Unlock()
	link, err := netlink.LinkByName(spec.Name)
	switch {
	case isLinkNotFound(err):
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: spec.Name, MTU: spec.MTU}}
		err := netlink.LinkAdd(br)
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("create bridge %s: %w", spec.Name, err)
		}
		if link, err = netlink.LinkByName(spec.Name); err != nil {
			return fmt.Errorf("find new bridge %s: %w", spec.Name, err)
		}
		if link.Type() != "bridge" {
			return fmt.Errorf("%w: %s exists but is a %s, not a bridge; pick another bridge name in config.toml", ErrInvalidArgument, spec.Name, link.Type())
		}
		l.Logger.InfoContext(ctx, "bridge created", "bridge", spec.Name)
	case err != nil:
		return fmt.Errorf("look up bridge %s: %w", spec.Name, err)
	case link.Type() != "bridge":
		return fmt.Errorf("%w: %s exists but is a %s, not a bridge; pick another bridge name in config.toml", ErrInvalidArgument, spec.Name, link.Type())
	}
	if spec.MTU != 0 && link.Attrs().MTU != spec.MTU {
		if err := netlink.LinkSetMTU(link, spec.MTU); err != nil {
			return fmt.Errorf("set MTU of %s: %w", spec.Name, err)
		}
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", spec.Name, err)
	}
	have := false
	for _, a := range addrs {
		if a.IPNet.String() == addr.IPNet.String() {
			have = true
		}
	}
	if !have {
		if err := netlink.AddrAdd(link, addr); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add %s to %s: %w", spec.CIDR, spec.Name, err)
		}
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(link); err != nil {
			return fmt.Errorf("bring up %s: %w", spec.Name, err)
		}
	}
	if err := l.ensureFirewall(ctx, spec.Name, "", ""); err != nil {
		if errors.Is(err, hostexec.ErrNotFound) {
			l.Logger.WarnContext(ctx, "neither nft nor iptables found: VMs are not isolated from the host's other networks and NAT is unavailable; install nftables", "bridge", spec.Name)
			return nil
		}
		return fmt.Errorf("install isolation rules for bridge %s: %w", spec.Name, err)
	}
	return nil
}

// DeleteBridge removes banger's firewall table/chains and the bridge. A
// missing bridge is not an error. It refuses to delete an interface that is
// not a bridge, or a bridge with ports that are not banger taps.
func (l *Local) DeleteBridge(ctx context.Context, name string) error {
	if err := ValidateIfName(name); err != nil {
		return err
	}
	l.bridgeMu.Lock()
	defer l.bridgeMu.Unlock()
	link, err := netlink.LinkByName(name)
	if isLinkNotFound(err) {
		return l.clearFirewall(ctx)
	}
	if err != nil {
		return fmt.Errorf("look up bridge %s: %w", name, err)
	}
	if link.Type() != "bridge" {
		return fmt.Errorf("%w: %s is a %s, not a bridge; refusing to delete it", ErrInvalidArgument, name, link.Type())
	}
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	for _, ln := range links {
		if ln.Attrs().MasterIndex == link.Attrs().Index && !strings.HasPrefix(ln.Attrs().Name, TapNamePrefix) {
			return fmt.Errorf("%w: bridge %s has port %s, which banger did not create; refusing to delete it", ErrInvalidArgument, name, ln.Attrs().Name)
		}
	}
	if err := l.clearFirewall(ctx); err != nil {
		return err
	}
	if err := netlink.LinkDel(link); err != nil && !isLinkNotFound(err) {
		return fmt.Errorf("delete bridge %s: %w", name, err)
	}
	return nil
}

// CreateTap creates a persistent tap that spec.Owner/spec.Group may open
// without privileges (-1 = no owner/group: CAP_NET_ADMIN needed), attaches it
// to the bridge and brings it up. If the tap already exists it is re-attached and brought up
// (and re-owned when its owner differs and no process holds it).
func (l *Local) CreateTap(ctx context.Context, spec TapSpec) error {
	if err := ValidateTapSpec(spec); err != nil {
		return err
	}
	br, err := netlink.LinkByName(spec.Bridge)
	if err != nil {
		if isLinkNotFound(err) {
			return fmt.Errorf("bridge %s does not exist: ensure the bridge first: %w", spec.Bridge, err)
		}
		return fmt.Errorf("look up bridge %s: %w", spec.Bridge, err)
	}
	if br.Type() != "bridge" {
		return fmt.Errorf("%w: %s is not a bridge", ErrInvalidArgument, spec.Bridge)
	}
	link, err := netlink.LinkByName(spec.Name)
	switch {
	case isLinkNotFound(err):
		link = nil
	case err != nil:
		return fmt.Errorf("look up tap %s: %w", spec.Name, err)
	case link.Type() != "tuntap":
		return fmt.Errorf("%w: %s exists but is a %s, not a tap", ErrInvalidArgument, spec.Name, link.Type())
	}
	// The kernel reports no owner as 0; root may open any tap anyway.
	norm := func(id int) uint32 { return uint32(max(id, 0)) }
	if tt, ok := link.(*netlink.Tuntap); link == nil || ok && (tt.Owner != norm(spec.Owner) || tt.Group != norm(spec.Group)) {
		if err := makeTap(spec.Name, spec.Owner, spec.Group); err != nil {
			return fmt.Errorf("create tap %s: %w", spec.Name, err)
		}
		if link, err = netlink.LinkByName(spec.Name); err != nil {
			return fmt.Errorf("find new tap %s: %w", spec.Name, err)
		}
	}
	if link.Attrs().MasterIndex != br.Attrs().Index {
		if err := netlink.LinkSetMaster(link, br); err != nil {
			return fmt.Errorf("attach tap %s to %s: %w", spec.Name, spec.Bridge, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring up tap %s: %w", spec.Name, err)
	}
	return nil
}

// makeTap creates (or re-opens) a persistent tap in the calling thread's
// network namespace: TUNSETIFF (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR), owner and
// group unless -1, TUNSETPERSIST. netlink.LinkAdd cannot leave the owner
// unset, hence the ioctls.
func makeTap(name string, owner, group int) error {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open /dev/net/tun: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("TUNSETIFF: %w (a VMM still holds the tap)", err)
		}
		return fmt.Errorf("TUNSETIFF: %w", err)
	}
	if owner >= 0 {
		if err := unix.IoctlSetInt(fd, unix.TUNSETOWNER, owner); err != nil {
			return fmt.Errorf("TUNSETOWNER %d: %w", owner, err)
		}
	}
	if group >= 0 {
		if err := unix.IoctlSetInt(fd, unix.TUNSETGROUP, group); err != nil {
			return fmt.Errorf("TUNSETGROUP %d: %w", group, err)
		}
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
		return fmt.Errorf("TUNSETPERSIST: %w", err)
	}
	return nil
}

// DeleteTap deletes a tap. A missing tap is not an error; an interface that
// is not a tap is refused.
func (l *Local) DeleteTap(ctx context.Context, name string) error {
	if err := ValidateTapName(name); err != nil {
		return err
	}
	link, err := netlink.LinkByName(name)
	if isLinkNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up tap %s: %w", name, err)
	}
	if link.Type() != "tuntap" {
		return fmt.Errorf("%w: %s is a %s, not a tap; refusing to delete it", ErrInvalidArgument, name, link.Type())
	}
	if err := netlink.LinkDel(link); err != nil && !isLinkNotFound(err) {
		return fmt.Errorf("delete tap %s: %w", name, err)
	}
	return nil
}

// EnsureNAT turns on IPv4 forwarding and masquerades spec.VMIP's traffic
// leaving through any interface but the bridge (or only spec.Uplink when
// set). Idempotent.
func (l *Local) EnsureNAT(ctx context.Context, spec NATSpec) error {
	if err := ValidateNATSpec(spec); err != nil {
		return err
	}
	if _, err := l.Runner.Run(ctx, hostexec.Cmd{Name: "sysctl", Args: []string{"-q", "-w", "net.ipv4.ip_forward=1"}}); err != nil {
		return fmt.Errorf("enable IPv4 forwarding: %w", err)
	}
	if err := l.ensureFirewall(ctx, spec.Bridge, spec.Uplink, spec.VMIP); err != nil {
		if errors.Is(err, hostexec.ErrNotFound) {
			return fmt.Errorf("NAT for %s: %w: neither nft nor iptables is installed (apt-get install nftables)", spec.VMIP, ErrNotSupported)
		}
		return fmt.Errorf("NAT for %s: %w", spec.VMIP, err)
	}
	return nil
}

// ClearNAT removes spec.VMIP's NAT and nothing else. Clearing a VM without
// NAT (or when banger's table does not exist) is not an error. IPv4
// forwarding is left on: other VMs or other software may rely on it.
func (l *Local) ClearNAT(ctx context.Context, spec NATSpec) error {
	if err := ValidateNATSpec(spec); err != nil {
		return err
	}
	_, err := l.Runner.Run(ctx, hostexec.Cmd{Name: "nft", Args: []string{"list", "set", "ip", NATTable, NATSet}})
	switch {
	case err == nil:
		// Adding then deleting the element in one transaction succeeds
		// whether or not it was present.
		script := fmt.Sprintf("add element ip %[1]s %[2]s { %[3]s }\ndelete element ip %[1]s %[2]s { %[3]s }\n", NATTable, NATSet, spec.VMIP)
		if err := l.nftApply(ctx, script); err != nil {
			if nftNoSuchObject(err) {
				return nil // table deleted concurrently
			}
			return fmt.Errorf("clear NAT for %s: %w", spec.VMIP, err)
		}
		return nil
	case nftUnavailable(err):
		return l.iptClearVM(ctx, spec.VMIP)
	case nftNoSuchObject(err):
		return nil
	default:
		return fmt.Errorf("clear NAT for %s: inspect nft table: %w", spec.VMIP, err)
	}
}

// SetResolverRouting routes spec.Domain to spec.Server on the bridge through
// systemd-resolved (resolvectl dns/domain/default-route), or reverts the
// bridge's resolver settings when spec.Enable is false. Without resolvectl it
// returns an error wrapping ErrNotSupported that explains the alternatives
// (disabling is then a no-op). The settings live as long as the bridge does.
func (l *Local) SetResolverRouting(ctx context.Context, spec ResolverSpec) error {
	if err := ValidateResolverSpec(spec); err != nil {
		return err
	}
	_, err := netlink.LinkByName(spec.Bridge)
	if isLinkNotFound(err) {
		if !spec.Enable {
			return nil
		}
		return fmt.Errorf("route DNS to %s: bridge %s does not exist: ensure the bridge first", spec.Server, spec.Bridge)
	}
	if err != nil {
		return fmt.Errorf("look up bridge %s: %w", spec.Bridge, err)
	}
	return l.resolvectl(ctx, spec)
}

func (l *Local) resolvectl(ctx context.Context, spec ResolverSpec) error {
	domain := strings.TrimSuffix(strings.TrimPrefix(spec.Domain, "~"), ".")
	var cmds [][]string
	if spec.Enable {
		cmds = [][]string{
			{"dns", spec.Bridge, spec.Server},
			{"domain", spec.Bridge, "~" + domain},
			{"default-route", spec.Bridge, "false"},
		}
	} else {
		cmds = [][]string{{"revert", spec.Bridge}}
	}
	for _, args := range cmds {
		_, err := l.Runner.Run(ctx, hostexec.Cmd{Name: "resolvectl", Args: args})
		if errors.Is(err, hostexec.ErrNotFound) {
			if !spec.Enable {
				return nil
			}
			return fmt.Errorf("route .%s to %s: %w: systemd-resolved is not available (resolvectl not found); "+
				"point your resolver at it instead, e.g. dnsmasq: server=/%s/%s, or query directly: dig @%s %s", domain, spec.Server, ErrNotSupported,
				domain, dnsmasqServer(spec.Server), digServer(spec.Server), "NAME."+domain)
		}
		if err != nil {
			return fmt.Errorf("resolvectl %s: %w (is systemd-resolved running? systemctl status systemd-resolved)", strings.Join(args, " "), err)
		}
	}
	return nil
}

func dnsmasqServer(server string) string {
	ap, err := netip.ParseAddrPort(server)
	if err != nil {
		return server
	}
	return fmt.Sprintf("%s#%d", ap.Addr(), ap.Port())
}

func digServer(server string) string {
	ap, err := netip.ParseAddrPort(server)
	if err != nil {
		return server
	}
	return fmt.Sprintf("%s -p %d", ap.Addr(), ap.Port())
}

// nftBaseScript renders the atomic script that (re)writes banger's table for
// bridge (see the firewall notes). uplink restricts masquerading to one
// interface; vmIP, when set, is added to the NAT set in the same transaction.
func nftBaseScript(bridge, uplink, vmIP string) string {
	out := fmt.Sprintf("oifname != %q", bridge)
	if uplink != "" {
		out = fmt.Sprintf("oifname %q", uplink)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "add table ip %s\n", NATTable)
	fmt.Fprintf(&b, "add set ip %s %s { type ipv4_addr; }\n", NATTable, NATSet)
	fmt.Fprintf(&b, "add chain ip %s postrouting { type nat hook postrouting priority srcnat; policy accept; }\n", NATTable)
	fmt.Fprintf(&b, "add chain ip %s forward { type filter hook forward priority filter; policy accept; }\n", NATTable)
	fmt.Fprintf(&b, "flush chain ip %s postrouting\n", NATTable)
	fmt.Fprintf(&b, "flush chain ip %s forward\n", NATTable)
	fmt.Fprintf(&b, "add rule ip %s postrouting ip saddr @%s %s masquerade comment \"banger:nat\"\n", NATTable, NATSet, out)
	fmt.Fprintf(&b, "add rule ip %s forward oifname %q ct state established,related accept comment \"banger:replies\"\n", NATTable, bridge)
	fmt.Fprintf(&b, "add rule ip %s forward iifname %q %s ip saddr @%s accept comment \"banger:nat\"\n", NATTable, bridge, out, NATSet)
	fmt.Fprintf(&b, "add rule ip %s forward iifname %q oifname != %q drop comment \"banger:isolate-out\"\n", NATTable, bridge, bridge)
	fmt.Fprintf(&b, "add rule ip %s forward oifname %q iifname != %q drop comment \"banger:isolate-in\"\n", NATTable, bridge, bridge)
	if vmIP != "" {
		fmt.Fprintf(&b, "add element ip %s %s { %s }\n", NATTable, NATSet, vmIP)
	}
	return b.String()
}

// ensureFirewall writes banger's rules with nft, or with iptables when nft is
// missing. It returns an error wrapping hostexec.ErrNotFound when neither
// exists.
func (l *Local) ensureFirewall(ctx context.Context, bridge, uplink, vmIP string) error {
	err := l.nftApply(ctx, nftBaseScript(bridge, uplink, vmIP))
	if err == nil || !nftUnavailable(err) {
		return err
	}
	l.Logger.DebugContext(ctx, "nft unavailable, using iptables", "err", err)
	return l.iptEnsure(ctx, bridge, uplink, vmIP)
}

func (l *Local) nftApply(ctx context.Context, script string) error {
	_, err := l.Runner.Run(ctx, hostexec.Cmd{Name: "nft", Args: []string{"-f", "-"}, Stdin: strings.NewReader(script)})
	return err
}

// clearFirewall removes banger's table (nft) or chains (iptables).
func (l *Local) clearFirewall(ctx context.Context) error {
	err := l.nftApply(ctx, fmt.Sprintf("add table ip %[1]s\ndelete table ip %[1]s\n", NATTable))
	if nftUnavailable(err) {
		return l.iptClear(ctx)
	}
	if err != nil {
		return fmt.Errorf("delete nft table ip %s: %w", NATTable, err)
	}
	return nil
}

// nftUnavailable reports that nft cannot be used on this host: not
// installed, or the kernel lacks nf_tables. iptables is then the fallback.
func nftUnavailable(err error) bool {
	if errors.Is(err, hostexec.ErrNotFound) {
		return true
	}
	var ee *hostexec.ExitError
	return errors.As(err, &ee) && (strings.Contains(ee.Stderr, "Protocol not supported") || strings.Contains(ee.Stderr, "Operation not supported"))
}

func nftNoSuchObject(err error) bool {
	var ee *hostexec.ExitError
	return errors.As(err, &ee) && strings.Contains(ee.Stderr, "No such file or directory")
}

// iptables fallback.

func (l *Local) ipt(ctx context.Context, args ...string) error {
	_, err := l.Runner.Run(ctx, hostexec.Cmd{Name: "iptables", Args: append([]string{"-w"}, args...)})
	return err
}

// iptFailed reports a plain non-zero exit (rule or chain absent / present),
// as opposed to a missing program or a cancelled context.
func iptFailed(err error) bool {
	var ee *hostexec.ExitError
	return errors.As(err, &ee)
}

// iptEnsureRule appends (or, with insert, inserts at the top) a rule unless an
// identical one exists.
func (l *Local) iptEnsureRule(ctx context.Context, table, chain string, insert bool, rule ...string) error {
	check := append([]string{"-t", table, "-C", chain}, rule...)
	err := l.ipt(ctx, check...)
	if err == nil {
		return nil
	}
	if !iptFailed(err) {
		return err
	}
	op := []string{"-t", table, "-A", chain}
	if insert {
		op = []string{"-t", table, "-I", chain, "1"}
	}
	return l.ipt(ctx, append(op, rule...)...)
}

func (l *Local) iptEnsureChain(ctx context.Context, table, chain string) error {
	err := l.ipt(ctx, "-t", table, "-N", chain)
	if err != nil && iptFailed(err) {
		return nil // already exists
	}
	return err
}

func iptVMRules(bridge, uplink, vmIP string) (fwd, nat []string) {
	out := []string{"!", "-o", bridge}
	if uplink != "" {
		out = []string{"-o", uplink}
	}
	tag := []string{"-m", "comment", "--comment", "banger:" + vmIP}
	fwd = append(append(append([]string{"-i", bridge, "-s", vmIP + "/32"}, out...), tag...), "-j", "ACCEPT")
	nat = append(append(append([]string{"-s", vmIP + "/32"}, out...), tag...), "-j", "MASQUERADE")
	return fwd, nat
}

func (l *Local) iptEnsure(ctx context.Context, bridge, uplink, vmIP string) error {
	steps := []func() error{
		func() error { return l.iptEnsureChain(ctx, "filter", IPTForwardChain) },
		func() error { return l.iptEnsureChain(ctx, "nat", IPTNATChain) },
		func() error { return l.iptEnsureRule(ctx, "filter", "FORWARD", true, "-j", IPTForwardChain) },
		func() error { return l.iptEnsureRule(ctx, "nat", "POSTROUTING", false, "-j", IPTNATChain) },
		func() error {
			return l.iptEnsureRule(ctx, "filter", IPTForwardChain, false, "-o", bridge, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED",
				"-m", "comment", "--comment", "banger:replies", "-j", "ACCEPT")
		},
		func() error {
			return l.iptEnsureRule(ctx, "filter", IPTForwardChain, false, "-i", bridge, "!", "-o", bridge,
				"-m", "comment", "--comment", "banger:isolate-out", "-j", "DROP")
		},
		func() error {
			return l.iptEnsureRule(ctx, "filter", IPTForwardChain, false, "-o", bridge, "!", "-i", bridge,
				"-m", "comment", "--comment", "banger:isolate-in", "-j", "DROP")
		},
	}
	if vmIP != "" {
		fwd, nat := iptVMRules(bridge, uplink, vmIP)
		steps = append(steps,
			func() error { return l.iptEnsureRule(ctx, "filter", IPTForwardChain, true, fwd...) },
			func() error { return l.iptEnsureRule(ctx, "nat", IPTNATChain, false, nat...) },
		)
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return fmt.Errorf("iptables: %w", err)
		}
	}
	return nil
}

// iptDeleteAll deletes every copy of a rule (duplicates included).
func (l *Local) iptDeleteAll(ctx context.Context, table, chain string, rule ...string) error {
	for range 64 {
		err := l.ipt(ctx, append([]string{"-t", table, "-D", chain}, rule...)...)
		if err != nil {
			if iptFailed(err) {
				return nil // no (more) such rule, or no such chain
			}
			return err
		}
	}
	return fmt.Errorf("iptables: too many copies of a rule in %s", chain)
}

func (l *Local) iptClearVM(ctx context.Context, vmIP string) error {
	if err := l.iptClearVMTagged(ctx, vmIP); err != nil {
		return fmt.Errorf("clear NAT for %s (iptables): %w", vmIP, err)
	}
	return nil
}

// iptClearVMTagged removes every rule carrying the VM's comment, whatever
// its shape (with or without an uplink), by listing banger's chains.
func (l *Local) iptClearVMTagged(ctx context.Context, vmIP string) error {
	for _, tc := range [][2]string{{"filter", IPTForwardChain}, {"nat", IPTNATChain}} {
		res, err := l.Runner.Run(ctx, hostexec.Cmd{Name: "iptables", Args: []string{"-w", "-t", tc[0], "-S", tc[1]}})
		if err != nil {
			if iptFailed(err) {
				continue // chain missing
			}
			return err
		}
		// One -D per listed line: duplicates are listed once each.
		for _, rule := range parseIPTRules(string(res.Stdout), tc[1], "banger:"+vmIP) {
			if err := l.ipt(ctx, append([]string{"-t", tc[0], "-D", tc[1]}, rule...)...); err != nil {
				return err
			}
		}
	}
	return nil
}

// parseIPTRules returns the rule specs (without "-A CHAIN", quotes
// removed) of `iptables -S CHAIN` lines whose comment equals tag.
func parseIPTRules(out, chain, tag string) [][]string {
	var rules [][]string
	for _, line := range strings.Split(out, "\n") {
		f := splitIPTLine(line)
		if len(f) < 3 || f[0] != "-A" || f[1] != chain {
			continue
		}
		spec := f[2:]
		for i := 0; i+1 < len(spec); i++ {
			if spec[i] == "--comment" && spec[i+1] == tag {
				rules = append(rules, spec)
				break
			}
		}
	}
	return rules
}

// splitIPTLine splits an `iptables -S` line into arguments the way a shell
// would: iptables double-quotes arguments with spaces or quotes (escaping
// inner quotes with a backslash).
func splitIPTLine(line string) []string {
	var args []string
	var cur strings.Builder
	inArg, quoted := false, false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quoted && c == '\\' && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case c == '"':
			quoted = !quoted
			inArg = true
		case !quoted && (c == ' ' || c == '\t' || c == '\r'):
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteByte(c)
			inArg = true
		}
	}
	if inArg {
		args = append(args, cur.String())
	}
	return args
}

func (l *Local) iptClear(ctx context.Context) error {
	var errs []error
	for _, step := range [][]string{
		{"-t", "filter", "-D", "FORWARD", "-j", IPTForwardChain},
		{"-t", "nat", "-D", "POSTROUTING", "-j", IPTNATChain},
	} {
		if err := l.iptDeleteAll(ctx, step[1], step[3], step[4:]...); err != nil {
			errs = append(errs, err)
		}
	}
	for _, tc := range [][2]string{{"filter", IPTForwardChain}, {"nat", IPTNATChain}} {
		for _, op := range []string{"-F", "-X"} {
			if err := l.ipt(ctx, "-t", tc[0], op, tc[1]); err != nil && !iptFailed(err) {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		if errors.Is(err, hostexec.ErrNotFound) {
			return nil // neither nft nor iptables: nothing was ever installed
		}
		return fmt.Errorf("remove banger's iptables chains: %w", err)
	}
	return nil
}

// NATState is what InspectNAT found in the host's firewall.
type NATState struct {
	Backend  string   // "nft", "iptables", or "" when neither is installed
	Present  bool     // banger's table (nft) or chains (iptables) exist
	Problems []string // missing or damaged pieces; empty when intact
	VMs      []string // addresses with NAT installed
}

// Intact reports whether banger's firewall pieces exist and are complete.
func (s NATState) Intact() bool { return s.Present && len(s.Problems) == 0 }

// InspectNAT reads banger's firewall state for bridge without changing it
// (`nft -j list table ip banger`, or `iptables -S` of banger's chains). It
// needs CAP_NET_ADMIN; without it the error says so. The doctor uses it.
func InspectNAT(ctx context.Context, runner hostexec.Runner, bridge string) (NATState, error) {
	res, err := runner.Run(ctx, hostexec.Cmd{Name: "nft", Args: []string{"-j", "list", "table", "ip", NATTable}})
	switch {
	case err == nil:
		st, perr := parseNFTState(res.Stdout, bridge)
		if perr != nil {
			return NATState{Backend: "nft"}, fmt.Errorf("inspect nft table ip %s: %w", NATTable, perr)
		}
		return st, nil
	case nftNoSuchObject(err):
		return NATState{Backend: "nft"}, nil
	case nftUnavailable(err):
		return inspectIPT(ctx, runner, bridge)
	default:
		return NATState{Backend: "nft"}, fmt.Errorf("inspect nft table ip %s: %w", NATTable, err)
	}
}

type nftJSON struct {
	Nftables []map[string]json.RawMessage `json:"nftables"`
}

type nftObj struct {
	Name    string            `json:"name"`
	Chain   string            `json:"chain"`
	Hook    string            `json:"hook"`
	Type    string            `json:"type"`
	Comment string            `json:"comment"`
	Elem    []json.RawMessage `json:"elem"`
	Expr    json.RawMessage   `json:"expr"`
}

// wantNFTRules lists the comments of the rules nftBaseScript writes in chain.
func wantNFTRules(chain string) []string {
	switch chain {
	case "postrouting":
		return []string{"banger:nat"}
	case "forward":
		return []string{"banger:replies", "banger:nat", "banger:isolate-out", "banger:isolate-in"}
	}
	return nil
}

func parseNFTState(out []byte, bridge string) (NATState, error) {
	st := NATState{Backend: "nft"}
	var doc nftJSON
	if err := json.Unmarshal(out, &doc); err != nil {
		return st, fmt.Errorf("parse nft JSON: %w", err)
	}
	chains := map[string]nftObj{}
	rules := map[string][]nftObj{}
	haveSet := false
	for _, item := range doc.Nftables {
		for kind, raw := range item {
			var o nftObj
			if kind == "metainfo" {
				continue
			}
			if err := json.Unmarshal(raw, &o); err != nil {
				return st, fmt.Errorf("parse nft %s: %w", kind, err)
			}
			switch kind {
			case "table":
				st.Present = true
			case "chain":
				chains[o.Name] = o
			case "rule":
				rules[o.Chain] = append(rules[o.Chain], o)
			case "set":
				if o.Name != NATSet {
					continue
				}
				haveSet = true
				for _, e := range o.Elem {
					if ip := nftElemAddr(e); ip != "" {
						st.VMs = append(st.VMs, ip)
					}
				}
			}
		}
	}
	if !st.Present {
		return st, nil
	}
	if !haveSet {
		st.Problems = append(st.Problems, "set "+NATSet+" missing")
	}
	for _, name := range []string{"postrouting", "forward"} {
		c, ok := chains[name]
		if !ok {
			st.Problems = append(st.Problems, "chain "+name+" missing")
			continue
		}
		if c.Hook != name {
			st.Problems = append(st.Problems, fmt.Sprintf("chain %s hooked at %q", name, c.Hook))
		}
		var got []string
		for _, r := range rules[name] {
			got = append(got, r.Comment)
			if bridge != "" && !strings.Contains(string(r.Expr), strconv.Quote(bridge)) {
				st.Problems = append(st.Problems, fmt.Sprintf("rule %q in %s is not for bridge %s", r.Comment, name, bridge))
			}
		}
		if strings.Join(got, ",") != strings.Join(wantNFTRules(name), ",") {
			st.Problems = append(st.Problems, fmt.Sprintf("chain %s has rules [%s], want [%s]", name, strings.Join(got, ", "), strings.Join(wantNFTRules(name), ", ")))
		}
	}
	return st, nil
}

func nftElemAddr(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var obj struct {
		Elem struct {
			Val string `json:"val"`
		} `json:"elem"`
	}
	if json.Unmarshal(raw, &obj) == nil {
		return obj.Elem.Val
	}
	return ""
}

func inspectIPT(ctx context.Context, runner hostexec.Runner, bridge string) (NATState, error) {
	st := NATState{Backend: "iptables"}
	list := func(table, chain string) (string, bool, error) {
		res, err := runner.Run(ctx, hostexec.Cmd{Name: "iptables", Args: []string{"-w", "-t", table, "-S", chain}})
		if err != nil {
			if errors.Is(err, hostexec.ErrNotFound) {
				return "", false, err
			}
			if iptFailed(err) {
				return "", false, nil
			}
			return "", false, err
		}
		return string(res.Stdout), true, nil
	}
	fwd, okF, err := list("filter", IPTForwardChain)
	if errors.Is(err, hostexec.ErrNotFound) {
		return NATState{}, nil
	}
	if err != nil {
		return st, fmt.Errorf("inspect iptables: %w", err)
	}
	nat, okN, err := list("nat", IPTNATChain)
	if err != nil {
		return st, fmt.Errorf("inspect iptables: %w", err)
	}
	st.Present = okF || okN
	if !st.Present {
		return st, nil
	}
	if !okF {
		st.Problems = append(st.Problems, "chain "+IPTForwardChain+" missing")
	}
	if !okN {
		st.Problems = append(st.Problems, "chain "+IPTNATChain+" (nat) missing")
	}
	for _, tag := range []string{"banger:replies", "banger:isolate-out", "banger:isolate-in"} {
		if len(parseIPTRules(fwd, IPTForwardChain, tag)) == 0 {
			st.Problems = append(st.Problems, "rule "+tag+" missing from "+IPTForwardChain)
		}
	}
	if bridge != "" && okF && !strings.Contains(fwd, " "+bridge+" ") {
		st.Problems = append(st.Problems, IPTForwardChain+" has no rule for bridge "+bridge)
	}
	for _, jump := range [][3]string{{"filter", "FORWARD", IPTForwardChain}, {"nat", "POSTROUTING", IPTNATChain}} {
		out, ok, err := list(jump[0], jump[1])
		if err != nil {
			return st, fmt.Errorf("inspect iptables: %w", err)
		}
		if !ok || !strings.Contains(out, "-j "+jump[2]) {
			st.Problems = append(st.Problems, fmt.Sprintf("%s does not jump to %s", jump[1], jump[2]))
		}
	}
	seen := map[string]bool{}
	for _, line := range strings.Split(nat, "\n") {
		f := splitIPTLine(line)
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "--comment" {
				tag := f[i+1]
				if ip, ok := strings.CutPrefix(tag, "banger:"); ok {
					if _, err := netip.ParseAddr(ip); err == nil && !seen[ip] {
						seen[ip] = true
						st.VMs = append(st.VMs, ip)
					}
				}
			}
		}
	}
	return st, nil
}
