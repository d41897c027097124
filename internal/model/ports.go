package model

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// ErrBadPortSpec wraps every port forward spec error.
var ErrBadPortSpec = errors.New("bad port forward")

// DefaultForwardAddr is the host address a forward listens on when the
// spec names none: loopback only, so nothing outside the host reaches the
// guest unless the user asks.
const DefaultForwardAddr = "127.0.0.1"

// PortForward forwards HostAddr:HostPort on the host to GuestPort on the
// VM's address (TCP). It is part of the VM record: forwards are served
// while the VM runs, removed when it stops, restored when it starts and
// after daemon restarts.
type PortForward struct {
	HostAddr  string `json:"host_addr"`
	HostPort  int    `json:"host_port"`
	GuestPort int    `json:"guest_port"`
	Proto     string `json:"proto"` // "tcp"
}

// String is the spec form: HOSTADDR:HOSTPORT:GUESTPORT/PROTO ([::1] for
// IPv6 addresses).
func (p PortForward) String() string {
	return fmt.Sprintf("%s:%d/%s", netip.AddrPortFrom(netip.MustParseAddr(p.HostAddr), uint16(p.HostPort)), p.GuestPort, p.Proto)
}

// HostAddrPort is the listening address, e.g. "127.0.0.1:18080".
func (p PortForward) HostAddrPort() string {
	return netip.AddrPortFrom(netip.MustParseAddr(p.HostAddr), uint16(p.HostPort)).String()
}

// ParsePortForward parses [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp]. HOSTADDR
// is an IP address (IPv6 in brackets), default 127.0.0.1; ports are
// 1-65535; only tcp is supported.
func ParsePortForward(spec string) (PortForward, error) {
	bad := func(format string, a ...any) (PortForward, error) {
		return PortForward{}, fmt.Errorf("%w %q: %s (want [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp], e.g. 8080:80 or 0.0.0.0:8443:443/tcp)",
			ErrBadPortSpec, clipSpec(spec), fmt.Sprintf(format, a...))
	}
	s := strings.TrimSpace(spec)
	proto := "tcp"
	if i := strings.LastIndexByte(s, '/'); i >= 0 {
		proto = strings.ToLower(s[i+1:])
		s = s[:i]
		if proto != "tcp" {
			return bad("protocol %q is not supported (only tcp)", clipSpec(proto))
		}
	}
	addr := DefaultForwardAddr
	if strings.HasPrefix(s, "[") {
		end := strings.Index(s, "]:")
		if end < 0 {
			return bad("IPv6 address without a closing bracket and port")
		}
		addr, s = s[1:end], s[end+2:]
		if a, err := netip.ParseAddr(addr); err != nil || !a.Is6() || a.Is4In6() || a.Zone() != "" {
			return bad("%q is not an IPv6 address", clipSpec(addr))
		}
	}
	parts := strings.Split(s, ":")
	switch len(parts) {
	case 2:
	case 3:
		if strings.HasPrefix(spec, "[") {
			return bad("too many ':'")
		}
		addr, parts = parts[0], parts[1:]
		a, err := netip.ParseAddr(addr)
		if err != nil || !a.Is4() {
			return bad("%q is not an IPv4 address (put IPv6 addresses in brackets)", clipSpec(addr))
		}
	default:
		return bad("want two or three ':'-separated fields")
	}
	a := netip.MustParseAddr(addr)
	if a.IsMulticast() {
		return bad("%s is a multicast address", a)
	}
	host, err := parsePort(parts[0])
	if err != nil {
		return bad("host port: %v", err)
	}
	guest, err := parsePort(parts[1])
	if err != nil {
		return bad("guest port: %v", err)
	}
	return PortForward{HostAddr: a.String(), HostPort: host, GuestPort: guest, Proto: proto}, nil
}

func parsePort(s string) (int, error) {
	if s == "" || len(s) > 5 || strings.TrimLeft(s, "0123456789") != "" {
		return 0, fmt.Errorf("%q is not a port number", clipSpec(s))
	}
	n, _ := strconv.Atoi(s)
	if n < 1 || n > 65535 {
		return 0, fmt.Errorf("%d is out of range 1-65535", n)
	}
	return n, nil
}

func clipSpec(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// ValidatePortForwards checks a VM's forwards: each well formed and in
// canonical form, and no two listening on overlapping host addresses and
// the same port (0.0.0.0 and :: overlap every address of their family).
func ValidatePortForwards(fwds []PortForward) error {
	for i, f := range fwds {
		p, err := ParsePortForward(fmt.Sprintf("%s:%d:%d/%s", bracket(f.HostAddr), f.HostPort, f.GuestPort, f.Proto))
		if err != nil {
			return err
		}
		if p != f {
			return fmt.Errorf("%w: %+v is not in canonical form", ErrBadPortSpec, f)
		}
		a := netip.MustParseAddr(f.HostAddr)
		for _, g := range fwds[:i] {
			b := netip.MustParseAddr(g.HostAddr)
			if g.HostPort == f.HostPort && a.Is4() == b.Is4() && (a == b || a.IsUnspecified() || b.IsUnspecified()) {
				return fmt.Errorf("%w: host port %d is forwarded twice (%s and %s)", ErrBadPortSpec, f.HostPort, g.HostAddrPort(), f.HostAddrPort())
			}
		}
	}
	return nil
}

func bracket(addr string) string {
	if strings.Contains(addr, ":") {
		return "[" + addr + "]"
	}
	return addr
}
