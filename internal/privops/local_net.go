package privops

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/bangerdev/banger/internal/hostexec"
)

// Host networking (bridge, taps, resolver routing). The firewall (guest
// isolation, egress policy, NAT, anti-spoofing) is in firewall.go.

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
	if err := l.ensureFirewall(ctx, spec.Name, spec.Uplink); err != nil {
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
