package privops

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/hostexec"
)

func procSys(t *testing.T, forward string) (dir, path string) {
	t.Helper()
	dir = t.TempDir()
	path = filepath.Join(dir, "net/ipv4/ip_forward")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(forward+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, path
}

func TestFirewallScriptsPinTheRules(t *testing.T) {
	ip := ipFirewallScript("br-banger", "", FirewallConfig{DNSPorts: []uint16{5354, 53, 5354}, Resolvers: []netip.Addr{netip.MustParseAddr("192.168.1.1"), netip.MustParseAddr("::1")}})
	for _, want := range []string{
		`add rule ip banger input iifname "br-banger" fib daddr . iif type local meta l4proto { tcp, udp } th dport { 53, 5354 } accept comment "banger:dns"`,
		`add rule ip banger input iifname "br-banger" drop comment "banger:isolate-host"`,
		`add rule ip banger forward iifname "br-banger" oifname "br-banger" drop comment "banger:vm-to-vm"`,
		`add rule ip banger forward iifname "br-banger" ip saddr != @nat_vms drop comment "banger:isolate-out"`,
		`add rule ip banger forward iifname "br-banger" ip daddr @private drop comment "banger:no-lan"`,
		`add element ip banger dns_upstream { 192.168.1.1 }`,
		`add element ip banger private { 0.0.0.0/8, 10.0.0.0/8, 100.64.0.0/10, 127.0.0.0/8, 169.254.0.0/16, 172.16.0.0/12, 192.168.0.0/16, 224.0.0.0/3 }`,
		`add rule ip banger postrouting ip saddr @nat_vms oifname != "br-banger" masquerade comment "banger:nat"`,
	} {
		if !strings.Contains(ip, want+"\n") {
			t.Errorf("ip script lacks %q:\n%s", want, ip)
		}
	}
	// Per-VM sets are never flushed by the bridge's script (a daemon
	// restart must keep running VMs' policies).
	for _, set := range []string{NATSet, "lan_vms"} {
		if strings.Contains(ip, "flush set ip banger "+set+"\n") {
			t.Errorf("ip script flushes %s", set)
		}
	}
	// The input, forward and postrouting rules follow the order the
	// inspector expects.
	var got []string
	for _, line := range strings.Split(ip, "\n") {
		if i := strings.Index(line, `comment "`); i > 0 && strings.Contains(line, " forward ") {
			got = append(got, strings.Trim(line[i+len("comment "):], `"`))
		}
	}
	if !reflect.DeepEqual(got, wantFirewallRules["ip/forward"]) {
		t.Errorf("forward rules %v, want %v", got, wantFirewallRules["ip/forward"])
	}
	up := ipFirewallScript("br0", "eth0", FirewallConfig{})
	if !strings.Contains(up, `add rule ip banger forward iifname "br0" oifname "eth0" accept comment "banger:nat"`) || strings.Contains(up, "add element ip banger dns_upstream") {
		t.Errorf("uplink script:\n%s", up)
	}
	br := bridgeFirewallScript("bgtap")
	for _, want := range []string{
		`add rule bridge banger prerouting iifname != "bgtap*" accept comment "banger:not-a-vm"`,
		`add rule bridge banger prerouting ether type ip iifname . ether saddr . ip saddr @bind accept comment "banger:ip"`,
		`add rule bridge banger prerouting drop comment "banger:antispoof"`,
		`add rule bridge banger forward iifname "bgtap*" oifname "bgtap*" drop comment "banger:vm-to-vm"`,
	} {
		if !strings.Contains(br, want+"\n") {
			t.Errorf("bridge script lacks %q:\n%s", want, br)
		}
	}
	if strings.Contains(br, "flush set") {
		t.Errorf("bridge script flushes a per-VM set:\n%s", br)
	}
}

func TestEnsureVMNetScriptsAndForwarding(t *testing.T) {
	dir, fwd := procSys(t, "0")
	rec := &hostexec.Recorder{}
	l := NewLocal(rec, nil)
	l.ProcSysDir = dir
	spec := VMNetSpec{VMIP: "172.30.0.5", MAC: "02:ba:ac:1e:00:05", Tap: "bgtap1", Bridge: "br-banger", NAT: true}
	if err := l.EnsureVMNet(context.Background(), spec); err != nil {
		t.Fatal(err)
	}
	calls := rec.Calls()
	if got := rec.Lines(); !reflect.DeepEqual(got, []string{"nft -f -", "nft -f -"}) {
		t.Fatalf("commands %q", got)
	}
	want := `add element bridge banger bind { "bgtap1" . 02:ba:ac:1e:00:05 . 172.30.0.5 }
add element bridge banger lan_taps { "bgtap1" }
delete element bridge banger lan_taps { "bgtap1" }
add element ip banger nat_vms { 172.30.0.5 }
add element ip banger lan_vms { 172.30.0.5 }
delete element ip banger lan_vms { 172.30.0.5 }
`
	if got := stdinOf(t, calls[0]); got != want {
		t.Fatalf("script:\n%s\nwant:\n%s", got, want)
	}
	if got := stdinOf(t, calls[1]); got != "add chain ip banger "+ForwardingMark+"\n" {
		t.Fatalf("forwarding mark script %q", got)
	}
	if b, _ := os.ReadFile(fwd); string(b) != "1\n" {
		t.Fatalf("ip_forward = %q, want banger to turn it on", b)
	}

	// Already on: nothing recorded, nothing written.
	rec2 := &hostexec.Recorder{}
	l2 := NewLocal(rec2, nil)
	l2.ProcSysDir, _ = procSys(t, "1")
	if err := l2.EnsureVMNet(context.Background(), spec); err != nil {
		t.Fatal(err)
	}
	if got := rec2.Lines(); len(got) != 1 {
		t.Fatalf("commands with forwarding on: %q", got)
	}

	// Without NAT forwarding is not touched at all.
	dir3, fwd3 := procSys(t, "0")
	l3 := NewLocal(&hostexec.Recorder{}, nil)
	l3.ProcSysDir = dir3
	plain := spec
	plain.NAT = false
	if err := l3.EnsureVMNet(context.Background(), plain); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(fwd3); string(b) != "0\n" {
		t.Fatalf("ip_forward = %q after a VM without NAT", b)
	}
}

func TestEnsureVMNetBeforeBridgeAndWithoutNFT(t *testing.T) {
	spec := VMNetSpec{VMIP: "172.30.0.5", MAC: "02:ba:ac:1e:00:05", Tap: "bgtap1", Bridge: "br-banger"}
	missing := &hostexec.Recorder{Respond: func(c hostexec.Cmd) (hostexec.Result, error) {
		return exit1(c, "Error: No such file or directory; did you mean set 'bind'?")
	}}
	if err := NewLocal(missing, nil).EnsureVMNet(context.Background(), spec); err == nil || !strings.Contains(err.Error(), "ensure the bridge first") {
		t.Fatalf("without tables: %v", err)
	}
	none := &hostexec.Recorder{Respond: notFound}
	if err := NewLocal(none, nil).EnsureVMNet(context.Background(), spec); !errors.Is(err, ErrNotSupported) || !strings.Contains(err.Error(), "apt-get install nftables") {
		t.Fatalf("without nft: %v", err)
	}
	if err := NewLocal(none, nil).ClearVMNet(context.Background(), spec); err != nil {
		t.Fatalf("clear without nft: %v", err)
	}
	if err := NewLocal(missing, nil).ClearVMNet(context.Background(), spec); err != nil {
		t.Fatalf("clear without tables: %v", err)
	}
	other := &hostexec.Recorder{Respond: func(c hostexec.Cmd) (hostexec.Result, error) { return exit1(c, "Error: Could not process rule") }}
	if err := NewLocal(other, nil).ClearVMNet(context.Background(), spec); err == nil {
		t.Fatal("clear hid an nft failure")
	}
}

func TestClearVMNetRemovesEveryElement(t *testing.T) {
	rec := &hostexec.Recorder{}
	spec := VMNetSpec{VMIP: "172.30.0.5", MAC: "02:ba:ac:1e:00:05", Tap: "bgtap1", Bridge: "br-banger", NAT: true, AllowLAN: true}
	if err := NewLocal(rec, nil).ClearVMNet(context.Background(), spec); err != nil {
		t.Fatal(err)
	}
	var all string
	for _, c := range rec.Calls() {
		all += stdinOf(t, c)
	}
	for _, set := range []string{"ip banger nat_vms { 172.30.0.5 }", "ip banger lan_vms { 172.30.0.5 }", `bridge banger bind { "bgtap1" . 02:ba:ac:1e:00:05 . 172.30.0.5 }`, `bridge banger lan_taps { "bgtap1" }`} {
		if !strings.Contains(all, "delete element "+set+"\n") {
			t.Errorf("clear does not delete %s:\n%s", set, all)
		}
	}
}

func TestEnsureBridgeRefusesWithoutNFT(t *testing.T) {
	l := NewLocal(&hostexec.Recorder{Respond: notFound}, nil)
	if err := l.ensureFirewall(context.Background(), "br-banger", ""); !errors.Is(err, ErrNotSupported) {
		t.Fatalf("ensureFirewall without nft: %v", err)
	}
	kernel := &hostexec.Recorder{Respond: func(c hostexec.Cmd) (hostexec.Result, error) {
		return exit1(c, "Error: Could not process rule: Protocol not supported")
	}}
	if err := NewLocal(kernel, nil).ensureFirewall(context.Background(), "br-banger", ""); !errors.Is(err, ErrNotSupported) {
		t.Fatalf("ensureFirewall without nf_tables: %v", err)
	}
}

func TestClearFirewallRestoresOnlyWhatBangerChanged(t *testing.T) {
	for _, marked := range []bool{true, false} {
		dir, fwd := procSys(t, "1")
		rec := &hostexec.Recorder{Respond: func(c hostexec.Cmd) (hostexec.Result, error) {
			if c.Name == "nft" && len(c.Args) > 0 && c.Args[0] == "list" && !marked {
				return exit1(c, "Error: No such file or directory")
			}
			return hostexec.Result{}, nil
		}}
		l := NewLocal(rec, nil)
		l.ProcSysDir = dir
		if err := l.clearFirewall(context.Background()); err != nil {
			t.Fatal(err)
		}
		want := "1\n"
		if marked {
			want = "0\n"
		}
		if b, _ := os.ReadFile(fwd); string(b) != want {
			t.Errorf("marked=%v: ip_forward %q, want %q", marked, b, want)
		}
		lines := strings.Join(rec.Lines(), "\n")
		if !strings.Contains(lines, "iptables -w -t filter -D FORWARD -j BANGER-FWD") {
			t.Errorf("legacy iptables chains not cleared:\n%s", lines)
		}
	}
}

func TestInspectNAT(t *testing.T) {
	ipDoc, brDoc := sampleNFT()
	rec := &hostexec.Recorder{Respond: func(c hostexec.Cmd) (hostexec.Result, error) {
		if c.Args[3] == "ip" {
			return hostexec.Result{Stdout: []byte(ipDoc)}, nil
		}
		return hostexec.Result{Stdout: []byte(brDoc)}, nil
	}}
	st, err := InspectNAT(context.Background(), rec, "br-x")
	if err != nil {
		t.Fatal(err)
	}
	if !st.Intact() || !reflect.DeepEqual(st.VMs, []string{"172.30.0.2"}) || !st.ForwardingByBanger {
		t.Fatalf("state %+v", st)
	}
	if st, _ := InspectNAT(context.Background(), rec, "br-other"); st.Intact() {
		t.Fatalf("rules for another bridge counted as intact: %+v", st)
	}
	noBridge := &hostexec.Recorder{Respond: func(c hostexec.Cmd) (hostexec.Result, error) {
		if c.Args[3] == "ip" {
			return hostexec.Result{Stdout: []byte(ipDoc)}, nil
		}
		return exit1(c, "Error: No such file or directory")
	}}
	if st, _ := InspectNAT(context.Background(), noBridge, "br-x"); st.Intact() || !strings.Contains(strings.Join(st.Problems, ";"), "table bridge banger missing") {
		t.Fatalf("missing bridge table: %+v", st)
	}
	none := &hostexec.Recorder{Respond: notFound}
	if _, err := InspectNAT(context.Background(), none, "br-x"); !errors.Is(err, ErrNotSupported) {
		t.Fatalf("without nft: %v", err)
	}
}

// sampleNFT renders the JSON nft prints for intact tables on bridge br-x.
func sampleNFT() (ip, br string) {
	rule := func(family, chain, comment string) string {
		return fmt.Sprintf(`{"rule":{"family":%q,"table":"banger","chain":%q,"comment":%q,"expr":[{"match":{"right":"br-x"}}]}}`, family, chain, comment)
	}
	var items []string
	items = append(items, `{"table":{"family":"ip","name":"banger"}}`,
		`{"set":{"family":"ip","name":"nat_vms","type":"ipv4_addr","elem":["172.30.0.2"]}}`,
		`{"set":{"family":"ip","name":"lan_vms","type":"ipv4_addr"}}`,
		`{"set":{"family":"ip","name":"private","type":"ipv4_addr","flags":["interval"],"elem":[{"prefix":{"addr":"10.0.0.0","len":8}}]}}`,
		`{"chain":{"family":"ip","name":"`+ForwardingMark+`"}}`)
	for _, c := range []string{"input", "forward", "postrouting"} {
		items = append(items, fmt.Sprintf(`{"chain":{"family":"ip","name":%q,"hook":%q}}`, c, c))
		for _, r := range wantFirewallRules["ip/"+c] {
			items = append(items, rule("ip", c, r))
		}
	}
	ip = `{"nftables":[{"metainfo":{}},` + strings.Join(items, ",") + `]}`
	items = []string{`{"table":{"family":"bridge","name":"banger"}}`,
		`{"set":{"family":"bridge","name":"bind","type":["ifname","ether_addr","ipv4_addr"]}}`,
		`{"set":{"family":"bridge","name":"lan_taps","type":"ifname"}}`}
	for _, c := range []string{"prerouting", "forward"} {
		items = append(items, fmt.Sprintf(`{"chain":{"family":"bridge","name":%q,"hook":%q}}`, c, c))
		for _, r := range wantFirewallRules["bridge/"+c] {
			items = append(items, rule("bridge", c, r))
		}
	}
	br = `{"nftables":[` + strings.Join(items, ",") + `]}`
	return ip, br
}

func FuzzParseNFTState(f *testing.F) {
	ip, br := sampleNFT()
	f.Add([]byte(ip + br))
	f.Add([]byte(`{"nftables":[{"set":{"family":"ip","name":"nat_vms","elem":[{"elem":{"val":"1.2.3.4"}}]}}]}`))
	f.Add([]byte(`{"nftables":[{"chain":{"type":[1,2]}}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := parseNFTState(data, "br-x")
		if err == nil && !st.Present && (len(st.Problems) > 0 || st.Intact()) {
			t.Fatalf("absent tables with problems or intact: %+v", st)
		}
	})
}
