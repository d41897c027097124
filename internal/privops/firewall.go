package privops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/bangerdev/banger/internal/hostexec"
)

// Firewall: guest isolation, egress policy, NAT and anti-spoofing.
//
// banger keeps every rule it needs in two nftables tables of its own, both
// named "banger" (FirewallTable), so it never edits anybody else's rules.
// BR is the bridge, OUT is `oifname != BR` (or `oifname UPLINK` when an
// uplink is configured), GW is any address of the host on BR (`fib daddr .
// iif type local`), TAPS is `"bgtap*"`:
//
//	table bridge banger {                      # layer 2: what a tap may send
//	  set bind     { type ifname . ether_addr . ipv4_addr; }  # tap . MAC . IP of every VM
//	  set lan_taps { type ifname; }                           # taps of --allow-lan VMs
//	  chain prerouting { hook prerouting priority filter; policy accept;
//	    iifname != TAPS accept
//	    ether type arp iifname . ether saddr . arp saddr ip @bind
//	                   iifname . arp saddr ether . arp saddr ip @bind accept
//	    ether type ip iifname . ether saddr . ip saddr @bind accept
//	    drop                                   # "banger:antispoof": spoofed, IPv6, VLAN...
//	  }
//	  chain forward { hook forward priority filter; policy accept;
//	    iifname TAPS oifname TAPS iifname @lan_taps oifname @lan_taps accept
//	    iifname TAPS oifname TAPS drop          # "banger:vm-to-vm"
//	  }
//	}
//	table ip banger {                          # layer 3: where a VM's packets may go
//	  set nat_vms      { type ipv4_addr; }     # VMs created with --nat
//	  set lan_vms      { type ipv4_addr; }     # ... and --allow-lan
//	  set dns_upstream { type ipv4_addr; }     # resolvers written into guests
//	  set private      { type ipv4_addr; flags interval; }  # RFC1918, CGNAT, link-local, loopback, 0/8, 224/3
//	  chain input { hook input priority filter; policy accept;          # the host itself
//	    iifname BR ct state established,related accept    # replies to the daemon's ssh
//	    iifname BR GW tcp/udp dport {53, DNS ports} accept # DNS on the gateway
//	    iifname BR GW icmp type echo-request accept
//	    iifname BR drop                                  # "banger:isolate-host"
//	  }
//	  chain forward { hook forward priority filter; policy accept;
//	    oifname BR ct state established,related accept   # replies
//	    iifname BR oifname BR ip saddr @lan_vms ip daddr @lan_vms accept
//	    iifname BR oifname BR drop                       # VM to VM through the gateway
//	    iifname BR ip saddr != @nat_vms drop             # no --nat: stays on the bridge
//	    iifname BR OUT ip saddr @lan_vms accept
//	    iifname BR OUT ip daddr @dns_upstream tcp/udp dport 53 accept
//	    iifname BR ip daddr @private drop                # "banger:no-lan"
//	    iifname BR OUT accept                            # the internet
//	    iifname BR drop
//	    oifname BR drop                                  # nothing new comes in
//	  }
//	  chain postrouting { hook postrouting priority srcnat; ip saddr @nat_vms OUT masquerade }
//	}
//
// Why two layers: VMs on one bridge talk at layer 2, which the ip family
// never sees (unless br_netfilter is loaded), so VM↔VM isolation and
// anti-spoofing live in the bridge family, keyed on the tap a frame came
// in on. With the source address of every frame bound to its tap, the ip
// family can trust `ip saddr`. The host's other addresses are local
// destinations: the input chain keeps guests away from every host service
// but DNS on the gateway (the daemon reaches guests over ssh from the host
// side, so only replies come back in).
//
// The per-VM state is one element in each of bind (+ nat_vms, lan_vms and
// lan_taps as the VM's flags say), so EnsureVMNet and ClearVMNet change
// exactly one VM and nothing else. EnsureBridge rewrites the chains with
// `flush chain` + `add rule` inside one `nft -f -` transaction per table,
// which makes it atomic, idempotent and safe against concurrent callers;
// it never flushes the per-VM sets.
//
// The rules need nftables: the former iptables fallback could not filter
// bridged traffic (anti-spoofing, VM↔VM), so on a host without nft
// EnsureBridge refuses with ErrNotSupported and the doctor says to install
// nftables. Leftover iptables chains of older versions are removed by
// DeleteBridge.
//
// IPv4 forwarding. NAT needs net.ipv4.ip_forward=1, which makes the host
// route between all its interfaces. EnsureVMNet for a --nat VM turns it on
// only when it is off, logs a warning saying so and records that it did
// (an empty chain, ForwardingMark, in banger's table). DeleteBridge turns it
// off again only when that mark is present: banger restores nothing it did
// not change. The doctor shows the state.
//
// Note that an accept in banger's tables does not override a drop in
// another table (e.g. a Docker host's FORWARD policy DROP).

// FirewallTable is the name of banger's nftables tables (families ip and
// bridge).
const FirewallTable = "banger"

// NATTable is the former name of FirewallTable.
const NATTable = FirewallTable

// NATSet is the nftables set holding the addresses of VMs with NAT.
const NATSet = "nat_vms"

// ForwardingMark is the empty chain in banger's ip table recording that
// banger turned IPv4 forwarding on.
const ForwardingMark = "ipfwd_by_banger"

// Legacy iptables chains (removed by DeleteBridge).
const (
	IPTForwardChain = "BANGER-FWD"
	IPTNATChain     = "BANGER-POST"
)

// PrivateRanges are the destinations a --nat VM may not reach unless it
// has --allow-lan: the host's LANs (RFC 1918), CGNAT (RFC 6598),
// link-local (cloud metadata services), loopback, "this network" and
// multicast/reserved.
var PrivateRanges = []string{
	"0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
	"172.16.0.0/12", "192.168.0.0/16", "224.0.0.0/3",
}

// FirewallConfig is root's own view of what guests may reach: it comes
// from the configuration of whoever runs the Local (the root helper's or
// the root daemon's config.toml, /etc/resolv.conf), never from a request.
type FirewallConfig struct {
	// DNSPorts are ports on the gateway guests may query besides 53:
	// banger's DNS server when it listens on the bridge address or on all
	// addresses.
	DNSPorts []uint16
	// Resolvers are the upstream resolvers written into guests; --nat VMs
	// may reach them on port 53 even when they are in a private range.
	Resolvers []netip.Addr
}

func (l *Local) procSys() string {
	if l.ProcSysDir != "" {
		return l.ProcSysDir
	}
	return "/proc/sys"
}

// ipFirewallScript renders the atomic script that (re)writes banger's ip
// table for bridge (see the firewall notes).
func ipFirewallScript(bridge, uplink string, fw FirewallConfig) string {
	out := fmt.Sprintf("oifname != %q", bridge)
	if uplink != "" {
		out = fmt.Sprintf("oifname %q", uplink)
	}
	br := fmt.Sprintf("%q", bridge)
	ports := []string{"53"}
	for _, p := range fw.DNSPorts {
		if s := strconv.Itoa(int(p)); p != 0 && !slices.Contains(ports, s) {
			ports = append(ports, s)
		}
	}
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	t := FirewallTable
	w("add table ip %s", t)
	w("add set ip %s %s { type ipv4_addr; }", t, NATSet)
	w("add set ip %s lan_vms { type ipv4_addr; }", t)
	w("add set ip %s dns_upstream { type ipv4_addr; }", t)
	w("add set ip %s private { type ipv4_addr; flags interval; }", t)
	w("add chain ip %s input { type filter hook input priority filter; policy accept; }", t)
	w("add chain ip %s forward { type filter hook forward priority filter; policy accept; }", t)
	w("add chain ip %s postrouting { type nat hook postrouting priority srcnat; policy accept; }", t)
	w("flush set ip %s dns_upstream", t)
	w("flush set ip %s private", t)
	w("flush chain ip %s input", t)
	w("flush chain ip %s forward", t)
	w("flush chain ip %s postrouting", t)
	w("add element ip %s private { %s }", t, strings.Join(PrivateRanges, ", "))
	var res []string
	for _, r := range fw.Resolvers {
		if r.Is4() {
			res = append(res, r.String())
		}
	}
	if len(res) > 0 {
		w("add element ip %s dns_upstream { %s }", t, strings.Join(res, ", "))
	}
	w(`add rule ip %s input iifname %s ct state established,related accept comment "banger:host-replies"`, t, br)
	w(`add rule ip %s input iifname %s fib daddr . iif type local meta l4proto { tcp, udp } th dport { %s } accept comment "banger:dns"`, t, br, strings.Join(ports, ", "))
	w(`add rule ip %s input iifname %s fib daddr . iif type local icmp type echo-request accept comment "banger:ping"`, t, br)
	w(`add rule ip %s input iifname %s drop comment "banger:isolate-host"`, t, br)
	w(`add rule ip %s forward oifname %s ct state established,related accept comment "banger:replies"`, t, br)
	w(`add rule ip %s forward iifname %s oifname %s ip saddr @lan_vms ip daddr @lan_vms accept comment "banger:lan-vms"`, t, br, br)
	w(`add rule ip %s forward iifname %s oifname %s drop comment "banger:vm-to-vm"`, t, br, br)
	w(`add rule ip %s forward iifname %s ip saddr != @%s drop comment "banger:isolate-out"`, t, br, NATSet)
	w(`add rule ip %s forward iifname %s %s ip saddr @lan_vms accept comment "banger:lan"`, t, br, out)
	w(`add rule ip %s forward iifname %s %s ip daddr @dns_upstream meta l4proto { tcp, udp } th dport 53 accept comment "banger:dns-upstream"`, t, br, out)
	w(`add rule ip %s forward iifname %s ip daddr @private drop comment "banger:no-lan"`, t, br)
	w(`add rule ip %s forward iifname %s %s accept comment "banger:nat"`, t, br, out)
	w(`add rule ip %s forward iifname %s drop comment "banger:no-uplink"`, t, br)
	w(`add rule ip %s forward oifname %s drop comment "banger:isolate-in"`, t, br)
	w(`add rule ip %s postrouting ip saddr @%s %s masquerade comment "banger:nat"`, t, NATSet, out)
	return b.String()
}

// bridgeFirewallScript renders the atomic script that (re)writes banger's
// bridge table (anti-spoofing and VM↔VM isolation).
func bridgeFirewallScript(tapPrefix string) string {
	taps := fmt.Sprintf("%q", tapPrefix+"*")
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	t := FirewallTable
	w("add table bridge %s", t)
	w("add set bridge %s bind { type ifname . ether_addr . ipv4_addr; }", t)
	w("add set bridge %s lan_taps { type ifname; }", t)
	w("add chain bridge %s prerouting { type filter hook prerouting priority filter; policy accept; }", t)
	w("add chain bridge %s forward { type filter hook forward priority filter; policy accept; }", t)
	w("flush chain bridge %s prerouting", t)
	w("flush chain bridge %s forward", t)
	w(`add rule bridge %s prerouting iifname != %s accept comment "banger:not-a-vm"`, t, taps)
	w(`add rule bridge %s prerouting ether type arp iifname . ether saddr . arp saddr ip @bind iifname . arp saddr ether . arp saddr ip @bind accept comment "banger:arp"`, t)
	w(`add rule bridge %s prerouting ether type ip iifname . ether saddr . ip saddr @bind accept comment "banger:ip"`, t)
	w(`add rule bridge %s prerouting drop comment "banger:antispoof"`, t)
	w(`add rule bridge %s forward iifname %s oifname %s iifname @lan_taps oifname @lan_taps accept comment "banger:lan-vms"`, t, taps, taps)
	w(`add rule bridge %s forward iifname %s oifname %s drop comment "banger:vm-to-vm"`, t, taps, taps)
	return b.String()
}

// wantFirewallRules lists the rule comments the scripts write, by
// "family/chain".
var wantFirewallRules = map[string][]string{
	"ip/input":          {"banger:host-replies", "banger:dns", "banger:ping", "banger:isolate-host"},
	"ip/forward":        {"banger:replies", "banger:lan-vms", "banger:vm-to-vm", "banger:isolate-out", "banger:lan", "banger:dns-upstream", "banger:no-lan", "banger:nat", "banger:no-uplink", "banger:isolate-in"},
	"ip/postrouting":    {"banger:nat"},
	"bridge/prerouting": {"banger:not-a-vm", "banger:arp", "banger:ip", "banger:antispoof"},
	"bridge/forward":    {"banger:lan-vms", "banger:vm-to-vm"},
}

// errNoNFT explains what to do on a host without nftables.
func errNoNFT(err error) error {
	return fmt.Errorf("%w: banger isolates VMs with nftables, which is not usable here (%v): install it (apt-get install nftables) and make sure the kernel has nf_tables; `banger doctor` checks it", ErrNotSupported, err)
}

// ensureFirewall writes banger's two tables.
func (l *Local) ensureFirewall(ctx context.Context, bridge, uplink string) error {
	err := l.nftApply(ctx, ipFirewallScript(bridge, uplink, l.Firewall)+bridgeFirewallScript(TapNamePrefix))
	if nftUnavailable(err) {
		return errNoNFT(err)
	}
	return err
}

func (l *Local) nftApply(ctx context.Context, script string) error {
	_, err := l.Runner.Run(ctx, hostexec.Cmd{Name: "nft", Args: []string{"-f", "-"}, Stdin: strings.NewReader(script)})
	return err
}

// setElem renders an "add" (present) or "add + delete" (absent) of one
// element: both succeed whether or not the element was there.
func setElem(b *strings.Builder, family, set, elem string, present bool) {
	fmt.Fprintf(b, "add element %s %s %s { %s }\n", family, FirewallTable, set, elem)
	if !present {
		fmt.Fprintf(b, "delete element %s %s %s { %s }\n", family, FirewallTable, set, elem)
	}
}

func vmNetScripts(spec VMNetSpec, present bool) (ip, bridge string) {
	var i, b strings.Builder
	setElem(&b, "bridge", "bind", fmt.Sprintf("%q . %s . %s", spec.Tap, spec.MAC, spec.VMIP), present)
	setElem(&b, "bridge", "lan_taps", fmt.Sprintf("%q", spec.Tap), present && spec.AllowLAN)
	setElem(&i, "ip", NATSet, spec.VMIP, present && spec.NAT)
	setElem(&i, "ip", "lan_vms", spec.VMIP, present && spec.AllowLAN)
	return i.String(), b.String()
}

// EnsureVMNet binds the VM's tap to its address and MAC and sets its NAT
// and LAN flags (adding or removing its elements in banger's sets). The
// bridge must have been ensured (the sets exist). For a --nat VM it turns
// IPv4 forwarding on when it is off, and says so (see the notes above).
func (l *Local) EnsureVMNet(ctx context.Context, spec VMNetSpec) error {
	if err := ValidateVMNetSpec(spec); err != nil {
		return err
	}
	ipScript, brScript := vmNetScripts(spec, true)
	if err := l.nftApply(ctx, brScript+ipScript); err != nil {
		switch {
		case nftUnavailable(err):
			return fmt.Errorf("network policy for %s: %w", spec.VMIP, errNoNFT(err))
		case nftNoSuchObject(err):
			return fmt.Errorf("network policy for %s: banger's firewall tables are missing: ensure the bridge first: %w", spec.VMIP, err)
		}
		return fmt.Errorf("network policy for %s: %w", spec.VMIP, err)
	}
	if spec.NAT {
		if err := l.ensureForwarding(ctx); err != nil {
			return fmt.Errorf("NAT for %s: %w", spec.VMIP, err)
		}
	}
	return nil
}

// ClearVMNet removes the VM's elements from banger's sets and nothing else.
// Missing tables or elements are not an error. IPv4 forwarding is left as
// it is: other VMs may need it (DeleteBridge restores it).
func (l *Local) ClearVMNet(ctx context.Context, spec VMNetSpec) error {
	if err := ValidateVMNetSpec(spec); err != nil {
		return err
	}
	ipScript, brScript := vmNetScripts(spec, false)
	var errs []error
	for _, s := range []string{ipScript, brScript} {
		err := l.nftApply(ctx, s)
		switch {
		case err == nil, nftNoSuchObject(err):
		case nftUnavailable(err):
			return nil // no nftables: nothing was ever installed
		default:
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("clear network policy for %s: %w", spec.VMIP, err)
	}
	return nil
}

func (l *Local) ipForwardPath() string { return filepath.Join(l.procSys(), "net/ipv4/ip_forward") }

// ensureForwarding turns IPv4 forwarding on when it is off, recording that
// banger did (ForwardingMark) before it does, and logs a warning.
func (l *Local) ensureForwarding(ctx context.Context) error {
	path := l.ipForwardPath()
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read IPv4 forwarding: %w", err)
	}
	if strings.TrimSpace(string(b)) == "1" {
		return nil
	}
	if err := l.nftApply(ctx, fmt.Sprintf("add chain ip %s %s\n", FirewallTable, ForwardingMark)); err != nil {
		return fmt.Errorf("record that banger turns on IPv4 forwarding: %w", err)
	}
	if err := os.WriteFile(path, []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("turn on IPv4 forwarding (net.ipv4.ip_forward=1): %w", err)
	}
	l.Logger.WarnContext(ctx, "turned on IPv4 forwarding for the whole host (net.ipv4.ip_forward=1) so --nat VMs reach the internet; "+
		"banger's nftables tables limit what is forwarded to and from its bridge, other interfaces are now routed too; "+
		"banger turns it off again when its bridge is deleted", "sysctl", path)
	return nil
}

// restoreForwarding turns IPv4 forwarding off when banger turned it on.
func (l *Local) restoreForwarding(ctx context.Context) error {
	_, err := l.Runner.Run(ctx, hostexec.Cmd{Name: "nft", Args: []string{"list", "chain", "ip", FirewallTable, ForwardingMark}})
	if err != nil {
		if nftNoSuchObject(err) || nftUnavailable(err) {
			return nil
		}
		return fmt.Errorf("check whether banger turned on IPv4 forwarding: %w", err)
	}
	if err := os.WriteFile(l.ipForwardPath(), []byte("0\n"), 0o644); err != nil {
		return fmt.Errorf("turn IPv4 forwarding back off: %w", err)
	}
	l.Logger.InfoContext(ctx, "turned IPv4 forwarding back off (banger had turned it on)")
	return nil
}

// clearFirewall removes banger's tables (turning forwarding back off when
// banger turned it on) and the chains of the former iptables fallback.
func (l *Local) clearFirewall(ctx context.Context) error {
	var errs []error
	if err := l.restoreForwarding(ctx); err != nil {
		errs = append(errs, err)
	}
	for _, family := range []string{"ip", "bridge"} {
		err := l.nftApply(ctx, fmt.Sprintf("add table %[1]s %[2]s\ndelete table %[1]s %[2]s\n", family, FirewallTable))
		if err != nil && !nftUnavailable(err) {
			errs = append(errs, fmt.Errorf("delete nft table %s %s: %w", family, FirewallTable, err))
		}
	}
	if err := l.iptClear(ctx); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// nftUnavailable reports that nft cannot be used on this host: not
// installed, or the kernel lacks nf_tables.
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

// iptClear removes the former iptables fallback's chains, if any.
func (l *Local) iptClear(ctx context.Context) error {
	ipt := func(args ...string) error {
		_, err := l.Runner.Run(ctx, hostexec.Cmd{Name: "iptables", Args: append([]string{"-w"}, args...)})
		return err
	}
	failed := func(err error) bool {
		var ee *hostexec.ExitError
		return errors.As(err, &ee)
	}
	var errs []error
	for _, jump := range [][3]string{{"filter", "FORWARD", IPTForwardChain}, {"nat", "POSTROUTING", IPTNATChain}} {
		for range 64 {
			err := ipt("-t", jump[0], "-D", jump[1], "-j", jump[2])
			if err != nil {
				if !failed(err) {
					errs = append(errs, err)
				}
				break
			}
		}
		for _, op := range []string{"-F", "-X"} {
			if err := ipt("-t", jump[0], op, jump[2]); err != nil && !failed(err) {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		if errors.Is(err, hostexec.ErrNotFound) {
			return nil
		}
		return fmt.Errorf("remove banger's former iptables chains: %w", err)
	}
	return nil
}

// NATState is what InspectNAT found in the host's firewall.
type NATState struct {
	Backend  string   // "nft", or "" when nft is not usable
	Present  bool     // banger's tables exist
	Problems []string // missing or damaged pieces; empty when intact
	VMs      []string // addresses with NAT installed
	// ForwardingByBanger: banger turned IPv4 forwarding on (ForwardingMark).
	ForwardingByBanger bool
}

// Intact reports whether banger's firewall pieces exist and are complete.
func (s NATState) Intact() bool { return s.Present && len(s.Problems) == 0 }

// InspectNAT reads banger's firewall tables for bridge without changing
// them (`nft -j list table ip|bridge banger`). It needs CAP_NET_ADMIN;
// without it the error says so. The doctor uses it. Without nft it returns
// a state with no backend and an error wrapping ErrNotSupported.
func InspectNAT(ctx context.Context, runner hostexec.Runner, bridge string) (NATState, error) {
	st := NATState{Backend: "nft"}
	var docs [][]byte
	for _, family := range []string{"ip", "bridge"} {
		res, err := runner.Run(ctx, hostexec.Cmd{Name: "nft", Args: []string{"-j", "list", "table", family, FirewallTable}})
		switch {
		case err == nil:
			docs = append(docs, res.Stdout)
		case nftNoSuchObject(err):
			docs = append(docs, nil)
		case nftUnavailable(err):
			return NATState{}, errNoNFT(err)
		default:
			return st, fmt.Errorf("inspect nft table %s %s: %w", family, FirewallTable, err)
		}
	}
	if docs[0] == nil && docs[1] == nil {
		return st, nil
	}
	st, err := parseNFTState(append(docs[0], docs[1]...), bridge)
	if err != nil {
		return NATState{Backend: "nft"}, fmt.Errorf("inspect nft tables %s: %w", FirewallTable, err)
	}
	if docs[0] == nil {
		st.Problems = append([]string{"table ip " + FirewallTable + " missing"}, st.Problems...)
	}
	if docs[1] == nil {
		st.Problems = append([]string{"table bridge " + FirewallTable + " missing"}, st.Problems...)
	}
	return st, nil
}

type nftJSON struct {
	Nftables []map[string]json.RawMessage `json:"nftables"`
}

type nftObj struct {
	Family  string            `json:"family"`
	Name    string            `json:"name"`
	Chain   string            `json:"chain"`
	Hook    string            `json:"hook"`
	Type    json.RawMessage   `json:"type"`
	Comment string            `json:"comment"`
	Elem    []json.RawMessage `json:"elem"`
	Expr    json.RawMessage   `json:"expr"`
}

// parseNFTState parses the concatenated JSON documents of `nft -j list
// table` for banger's tables.
func parseNFTState(out []byte, bridge string) (NATState, error) {
	st := NATState{Backend: "nft"}
	chains := map[string]nftObj{}
	rules := map[string][]nftObj{}
	sets := map[string]bool{}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var doc nftJSON
		if err := dec.Decode(&doc); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return st, fmt.Errorf("parse nft JSON: %w", err)
		}
		for _, item := range doc.Nftables {
			for kind, raw := range item {
				if kind == "metainfo" {
					continue
				}
				var o nftObj
				if err := json.Unmarshal(raw, &o); err != nil {
					return st, fmt.Errorf("parse nft %s: %w", kind, err)
				}
				key := o.Family + "/" + o.Name
				switch kind {
				case "table":
					st.Present = true
				case "chain":
					chains[key] = o
					if key == "ip/"+ForwardingMark {
						st.ForwardingByBanger = true
					}
				case "rule":
					k := o.Family + "/" + o.Chain
					rules[k] = append(rules[k], o)
				case "set":
					sets[key] = true
					if key != "ip/"+NATSet {
						continue
					}
					for _, e := range o.Elem {
						if ip := nftElemAddr(e); ip != "" {
							st.VMs = append(st.VMs, ip)
						}
					}
				}
			}
		}
	}
	if !st.Present {
		return st, nil
	}
	for _, s := range []string{"ip/" + NATSet, "ip/lan_vms", "ip/private", "bridge/bind", "bridge/lan_taps"} {
		if !sets[s] {
			st.Problems = append(st.Problems, "set "+s+" missing")
		}
	}
	keys := make([]string, 0, len(wantFirewallRules))
	for k := range wantFirewallRules {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, key := range keys {
		want := wantFirewallRules[key]
		c, ok := chains[key]
		if !ok {
			st.Problems = append(st.Problems, "chain "+key+" missing")
			continue
		}
		hook := key[strings.Index(key, "/")+1:]
		if c.Hook != hook {
			st.Problems = append(st.Problems, fmt.Sprintf("chain %s hooked at %q", key, c.Hook))
		}
		var got []string
		for _, r := range rules[key] {
			got = append(got, r.Comment)
			if bridge != "" && strings.HasPrefix(key, "ip/") && key != "ip/postrouting" && !strings.Contains(string(r.Expr), strconv.Quote(bridge)) {
				st.Problems = append(st.Problems, fmt.Sprintf("rule %q in %s is not for bridge %s", r.Comment, key, bridge))
			}
		}
		if strings.Join(got, ",") != strings.Join(want, ",") {
			st.Problems = append(st.Problems, fmt.Sprintf("chain %s has rules [%s], want [%s]", key, strings.Join(got, ", "), strings.Join(want, ", ")))
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
