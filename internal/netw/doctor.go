package netw

import (
	"context"
	"errors"
	"fmt"
	"github.com/bangerdev/banger/internal/doctor"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"

	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/privops"
)

func pass(format string, a ...any) doctor.Result {
	return doctor.Result{Status: doctor.Pass, Message: fmt.Sprintf(format, a...)}
}

// CheckBridge reports whether the configured bridge exists, is a bridge, is
// up and carries the configured address (in the current network namespace).
func CheckBridge(cfg Config) doctor.Result {
	cfg = cfg.WithDefaults()
	spec := cfg.BridgeSpec()
	restart := "restart the daemon (it creates the bridge at start), or check bangerd's log"
	link, err := netlink.LinkByName(cfg.Bridge)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return doctor.Result{Status: doctor.Fail, Message: fmt.Sprintf("bridge %s does not exist", cfg.Bridge), Hint: restart}
		}
		return doctor.Result{Status: doctor.Fail, Message: fmt.Sprintf("look up bridge %s: %v", cfg.Bridge, err), Hint: restart}
	}
	if link.Type() != "bridge" {
		return doctor.Result{Status: doctor.Fail, Message: fmt.Sprintf("%s is a %s, not a bridge", cfg.Bridge, link.Type()),
			Hint: "set another bridge name under [network] in config.toml, or remove the interface"}
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return doctor.Result{Status: doctor.Fail, Message: fmt.Sprintf("list addresses of %s: %v", cfg.Bridge, err), Hint: restart}
	}
	var have, extra []string
	for _, a := range addrs {
		s := a.IPNet.String()
		have = append(have, s)
		if s != spec.CIDR {
			extra = append(extra, s)
		}
	}
	if !slices.Contains(have, spec.CIDR) {
		return doctor.Result{Status: doctor.Fail, Message: fmt.Sprintf("bridge %s lacks address %s (has %s)", cfg.Bridge, spec.CIDR, strings.Join(have, ", ")),
			Hint: fmt.Sprintf("restart the daemon, or: sudo ip addr add %s dev %s", spec.CIDR, cfg.Bridge)}
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		return doctor.Result{Status: doctor.Fail, Message: fmt.Sprintf("bridge %s is down", cfg.Bridge), Hint: "sudo ip link set " + cfg.Bridge + " up"}
	}
	if len(extra) > 0 {
		return doctor.Result{Status: doctor.Warn, Message: fmt.Sprintf("bridge %s has extra addresses %s besides %s", cfg.Bridge, strings.Join(extra, ", "), spec.CIDR),
			Hint: fmt.Sprintf("remove stale ones, e.g. sudo ip addr del %s dev %s", extra[0], cfg.Bridge)}
	}
	return pass("bridge %s is up with %s", cfg.Bridge, spec.CIDR)
}

// IPForwardPath is where the kernel exposes IPv4 forwarding.
const IPForwardPath = "/proc/sys/net/ipv4/ip_forward"

// CheckIPForward reports whether IPv4 forwarding is on when it is needed
// (anyNAT: some VM has NAT). path is normally IPForwardPath.
func CheckIPForward(path string, anyNAT bool) doctor.Result {
	b, err := os.ReadFile(path)
	if err != nil {
		return doctor.Result{Status: doctor.Warn, Message: fmt.Sprintf("cannot read %s: %v", path, err)}
	}
	on := strings.TrimSpace(string(b)) == "1"
	switch {
	case on:
		return pass("IPv4 forwarding is on: this host routes between all its interfaces (banger turns it on for --nat VMs when it is off; its nft tables confine what crosses its bridge)")
	case anyNAT:
		return doctor.Result{Status: doctor.Fail, Message: "IPv4 forwarding is off but VMs with --nat are running: they cannot reach the network",
			Hint: "sudo sysctl -w net.ipv4.ip_forward=1 (banger sets it when a NAT VM starts; something turned it off)"}
	default:
		return pass("IPv4 forwarding is off (no VM uses NAT; banger turns it on, and says so in its log, when a --nat VM starts)")
	}
}

// CheckNATTable inspects banger's firewall table (or iptables chains) and
// compares the addresses with NAT against natIPs, the running VMs created
// with --nat. Inspecting needs CAP_NET_ADMIN; without it the check warns.
func CheckNATTable(ctx context.Context, runner hostexec.Runner, cfg Config, natIPs []netip.Addr) doctor.Result {
	cfg = cfg.WithDefaults()
	st, err := privops.InspectNAT(ctx, runner, cfg.Bridge)
	if err != nil {
		if strings.Contains(err.Error(), "Operation not permitted") || strings.Contains(err.Error(), "Permission denied") {
			return doctor.Result{Status: doctor.Warn, Message: "cannot inspect the firewall without root", Hint: "run `sudo banger doctor` to check banger's nft table"}
		}
		if errors.Is(err, privops.ErrNotSupported) {
			return doctor.Result{Status: doctor.Fail, Message: "nftables is not usable: banger cannot isolate VMs, so it refuses to start them",
				Hint: "sudo apt-get install nftables (and a kernel with nf_tables), then restart the daemon; iptables alone cannot filter bridged traffic"}
		}
		return doctor.Result{Status: doctor.Fail, Message: fmt.Sprintf("inspect firewall: %v", err), Hint: "check that nft works: sudo nft list ruleset"}
	}
	where := fmt.Sprintf("nft tables ip/bridge %s", privops.FirewallTable)
	restart := "restart the daemon (it reinstalls the rules at start) and restart VMs with NAT"
	if !st.Present {
		return doctor.Result{Status: doctor.Fail, Message: where + " is missing (something flushed the firewall?)", Hint: restart}
	}
	if len(st.Problems) > 0 {
		return doctor.Result{Status: doctor.Fail, Message: where + " is damaged: " + strings.Join(st.Problems, "; "), Hint: restart}
	}
	var missing, stale []string
	for _, ip := range natIPs {
		if !slices.Contains(st.VMs, ip.String()) {
			missing = append(missing, ip.String())
		}
	}
	for _, s := range st.VMs {
		if !slices.ContainsFunc(natIPs, func(ip netip.Addr) bool { return ip.String() == s }) {
			stale = append(stale, s)
		}
	}
	if len(missing) > 0 {
		return doctor.Result{Status: doctor.Fail, Message: fmt.Sprintf("%s lacks NAT for running VMs %s", where, strings.Join(missing, ", ")), Hint: "restart those VMs (banger vm restart NAME)"}
	}
	if len(stale) > 0 {
		fix := fmt.Sprintf("sudo nft delete element ip %s %s { %s }", privops.FirewallTable, privops.NATSet, strings.Join(stale, ", "))
		return doctor.Result{Status: doctor.Warn, Message: fmt.Sprintf("%s has NAT for addresses of no running NAT VM: %s", where, strings.Join(stale, ", ")), Hint: fix}
	}
	fwd := ""
	if st.ForwardingByBanger {
		fwd = "; IPv4 forwarding was turned on by banger and is turned off again when its bridge is deleted"
	}
	return pass("%s intact (%d VM(s) with NAT)%s", where, len(st.VMs), fwd)
}

// CheckDNS asks the DNS server at addr for the SOA of domain and expects an
// authoritative answer.
func CheckDNS(ctx context.Context, addr, domain string) doctor.Result {
	fix := fmt.Sprintf("is bangerd running? check the dns address in config.toml; test with: dig @%s %s SOA", digAddr(addr), strings.TrimSuffix(domain, "."))
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(domain), dns.TypeSOA)
	c := &dns.Client{Timeout: 2 * time.Second}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	r, _, err := c.ExchangeContext(ctx, q, addr)
	if err != nil {
		return doctor.Result{Status: doctor.Fail, Message: fmt.Sprintf("DNS server %s does not answer: %v", addr, err), Hint: fix}
	}
	if r.Rcode != dns.RcodeSuccess || !r.Authoritative || len(r.Answer) == 0 {
		return doctor.Result{Status: doctor.Fail, Message: fmt.Sprintf("DNS server %s answered %s (authoritative=%v) for %s SOA", addr, dns.RcodeToString[r.Rcode], r.Authoritative, domain), Hint: fix}
	}
	return pass("DNS server %s answers for .%s", addr, strings.TrimSuffix(domain, "."))
}

func digAddr(addr string) string {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return addr
	}
	return fmt.Sprintf("%s -p %d", ap.Addr(), ap.Port())
}

// CheckResolverRouting reports whether systemd-resolved sends queries for
// domain to dnsAddr over the bridge. Where systemd-resolved is absent it
// warns and explains the alternatives.
func CheckResolverRouting(ctx context.Context, runner hostexec.Runner, cfg Config, dnsAddr, domain string) doctor.Result {
	cfg = cfg.WithDefaults()
	domain = strings.TrimSuffix(strings.TrimPrefix(domain, "~"), ".")
	ap, _ := netip.ParseAddrPort(dnsAddr)
	alternatives := fmt.Sprintf("without systemd-resolved, add to dnsmasq: server=/%s/%s#%d; or use `banger ssh-config --install` (no DNS needed for ssh) and `dig @%s -p %d NAME.%s`",
		domain, ap.Addr(), ap.Port(), ap.Addr(), ap.Port(), domain)
	res, err := runner.Run(ctx, hostexec.Cmd{Name: "resolvectl", Args: []string{"dns", cfg.Bridge}})
	if errors.Is(err, hostexec.ErrNotFound) {
		return doctor.Result{Status: doctor.Warn, Message: fmt.Sprintf("systemd-resolved is not installed: NAME.%s does not resolve system-wide", domain), Hint: alternatives}
	}
	if err != nil {
		return doctor.Result{Status: doctor.Warn, Message: fmt.Sprintf("systemd-resolved does not answer for %s: %v", cfg.Bridge, err),
			Hint: "systemctl status systemd-resolved; then restart bangerd; " + alternatives}
	}
	servers := linkValue(string(res.Stdout))
	res, err = runner.Run(ctx, hostexec.Cmd{Name: "resolvectl", Args: []string{"domain", cfg.Bridge}})
	if err != nil {
		return doctor.Result{Status: doctor.Warn, Message: fmt.Sprintf("resolvectl domain %s: %v", cfg.Bridge, err), Hint: "restart bangerd"}
	}
	domains := linkValue(string(res.Stdout))
	okServer := slices.Contains(servers, dnsAddr) || ap.Port() == 53 && slices.Contains(servers, ap.Addr().String())
	okDomain := slices.Contains(domains, "~"+domain)
	if !okServer || !okDomain {
		return doctor.Result{Status: doctor.Fail,
			Message: fmt.Sprintf("systemd-resolved routes [%s] on %s to [%s], want ~%s to %s", strings.Join(domains, " "), cfg.Bridge, strings.Join(servers, " "), domain, dnsAddr),
			Hint:    fmt.Sprintf("restart bangerd, or: sudo resolvectl dns %s %s && sudo resolvectl domain %s ~%s", cfg.Bridge, dnsAddr, cfg.Bridge, domain)}
	}
	return pass("systemd-resolved sends .%s queries to %s via %s", domain, dnsAddr, cfg.Bridge)
}

// linkValue parses `resolvectl dns|domain LINK` output ("Link 5 (br0): a b").
func linkValue(out string) []string {
	for _, line := range strings.Split(out, "\n") {
		if _, rest, ok := strings.Cut(line, "):"); ok && strings.HasPrefix(strings.TrimSpace(line), "Link ") {
			return strings.Fields(rest)
		}
	}
	return nil
}

// TunDevicePath is the tun/tap clone device.
const TunDevicePath = "/dev/net/tun"

// CheckTunDevice reports whether VMMs running as the owner user can open
// taps through path (normally TunDevicePath): it must be a character device,
// and readable and writable by everyone (the Debian default, mode 0666; the
// kernel then checks each tap's owner). The Firecracker jailer makes its own
// node inside the jail, so a restrictive mode only matters for VMMs started
// without it.
func CheckTunDevice(path string) doctor.Result {
	fi, err := os.Stat(path)
	if err != nil {
		return doctor.Result{Status: doctor.Fail, Message: fmt.Sprintf("%s: %v: the kernel has no tun/tap support loaded", path, err),
			Hint: "sudo modprobe tun (and add tun to /etc/modules-load.d/)"}
	}
	if fi.Mode()&os.ModeCharDevice == 0 {
		return doctor.Result{Status: doctor.Fail, Message: path + " is not a character device", Hint: "sudo rm " + path + " && sudo mknod -m 0666 " + path + " c 10 200"}
	}
	if fi.Mode().Perm()&0o006 != 0o006 {
		return doctor.Result{Status: doctor.Warn, Message: fmt.Sprintf("%s has mode %04o: VMMs running as the owner cannot open their taps", path, fi.Mode().Perm()),
			Hint: "sudo chmod 0666 " + path + " (the usual default; each tap still admits only its owner)"}
	}
	return pass("%s is usable by the VMMs", path)
}
