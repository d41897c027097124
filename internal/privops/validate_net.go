package privops

import (
	"fmt"
	"github.com/bangerdev/banger/internal/model"
	"net"
	"net/netip"
	"strings"
)

// DefaultDNSDomain is the resolver routing domain when Policy.DNSDomain is
// unset.
const DefaultDNSDomain = model.DNSDomain

func (p *Policy) dnsDomain() string {
	if p.DNSDomain == "" {
		return DefaultDNSDomain
	}
	return p.DNSDomain
}

// checkDNS validates the pinned resolver routing of the policy: a domain of
// DNS labels (never the root) and, when set, a DNS server on loopback or
// the bridge's gateway address.
func (p *Policy) checkDNS() error {
	if err := checkDNSDomain("dns domain", p.dnsDomain()); err != nil {
		return err
	}
	if p.DNSServer == "" {
		return nil
	}
	ap, err := netip.ParseAddrPort(p.DNSServer)
	if err != nil || ap.Port() == 0 {
		return fmt.Errorf("dns server %q must be ip:port", p.DNSServer)
	}
	gw, err := p.bridgePrefix()
	if err == nil && !ap.Addr().IsLoopback() && ap.Addr() != gw.Addr() {
		return fmt.Errorf("dns server %s must be on loopback or the bridge address %s", ap, gw.Addr())
	}
	return nil
}

// checkDNSDomain accepts 1-253 bytes of lowercase DNS labels, no "~", no
// trailing dot.
func checkDNSDomain(field, d string) error {
	if d == "" || len(d) > 253 {
		return invalid(field, "%q must be a DNS domain such as \"vm\" (not the root)", clip(d))
	}
	for _, label := range strings.Split(d, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return invalid(field, "%q has an invalid label %q", clip(d), clip(label))
		}
		for i := 0; i < len(label); i++ {
			if c := label[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return invalid(field, "%q may only contain [a-z0-9-] labels", clip(d))
			}
		}
	}
	return nil
}

// ValidateResolver checks SetResolverRouting's spec against the pinned
// routing: banger's bridge and, when enabling, exactly the policy's DNS
// server and domain ("~vm" and "vm." name the same domain). Anything else
// is refused: the owner may not route another domain (say "com") or send
// the host's lookups to a listener of its own.
func (p *Policy) ValidateResolver(spec ResolverSpec) error {
	if err := ValidateResolverSpec(spec); err != nil {
		return err
	}
	if spec.Bridge != p.BridgeName {
		return invalid("resolver.bridge", "%q is not banger's bridge %q", clip(spec.Bridge), p.BridgeName)
	}
	if !spec.Enable {
		return nil
	}
	if p.DNSServer == "" {
		return invalid("resolver.server", "the root helper has no DNS server configured (network.dns_listen in its config.toml)")
	}
	want, _ := netip.ParseAddrPort(p.DNSServer)
	got, err := netip.ParseAddrPort(spec.Server)
	if err != nil || got != want {
		return invalid("resolver.server", "%q is not banger's DNS server %s (pinned by the root helper's config)", clip(spec.Server), want)
	}
	d := strings.TrimSuffix(strings.TrimPrefix(spec.Domain, "~"), ".")
	if d != p.dnsDomain() {
		return invalid("resolver.domain", "%q is not banger's DNS domain %q (pinned by the root helper)", clip(spec.Domain), p.dnsDomain())
	}
	return nil
}

// ValidateVMNet checks EnsureVMNet/ClearVMNet's spec: a host address inside
// the bridge network (not its network, broadcast or gateway address), a
// locally administered unicast MAC, a banger tap and banger's bridge.
func (p *Policy) ValidateVMNet(spec VMNetSpec) error {
	if err := ValidateVMNetSpec(spec); err != nil {
		return err
	}
	pfx, err := p.bridgePrefix()
	if err != nil {
		return invalid("vmnet", "%v", err)
	}
	ip, err := netip.ParseAddr(spec.VMIP)
	if err != nil || !ip.Is4() {
		return invalid("vmnet.vm_ip", "%q is not an IPv4 address", clip(spec.VMIP))
	}
	if !pfx.Masked().Contains(ip) {
		return invalid("vmnet.vm_ip", "%s is outside banger's network %s", ip, pfx.Masked())
	}
	if ip == pfx.Masked().Addr() || ip == pfx.Addr() || ip == lastAddr(pfx.Masked()) {
		return invalid("vmnet.vm_ip", "%s is the network, gateway or broadcast address of %s", ip, pfx.Masked())
	}
	if err := checkVMMAC("vmnet.mac", spec.MAC); err != nil {
		return err
	}
	if err := p.ValidateTapName("vmnet.tap", spec.Tap); err != nil {
		return err
	}
	if spec.Bridge != p.BridgeName {
		return invalid("vmnet.bridge", "%q is not banger's bridge %q", clip(spec.Bridge), p.BridgeName)
	}
	if spec.AllowLAN && !spec.NAT {
		return invalid("vmnet.allow_lan", "allow_lan needs nat (a VM without NAT never leaves the bridge)")
	}
	return nil
}

// checkVMMAC accepts a locally administered unicast MAC written as six
// colon-separated lowercase hex bytes (the form banger derives, and the
// form nft prints back).
func checkVMMAC(field, mac string) error {
	hw, err := net.ParseMAC(mac)
	if err != nil || len(hw) != 6 || hw.String() != mac {
		return invalid(field, "%q must be a MAC address like 02:ba:ac:1e:00:02", clip(mac))
	}
	if hw[0]&1 != 0 || hw[0]&2 == 0 {
		return invalid(field, "%s must be a locally administered unicast address", mac)
	}
	return nil
}
