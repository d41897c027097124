package privops

import (
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/hostexec"
)

func stdinOf(t *testing.T, c hostexec.Cmd) string {
	t.Helper()
	if c.Stdin == nil {
		return ""
	}
	b, err := io.ReadAll(c.Stdin)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

const wantBase = `add table ip banger
add set ip banger nat_vms { type ipv4_addr; }
add chain ip banger postrouting { type nat hook postrouting priority srcnat; policy accept; }
add chain ip banger forward { type filter hook forward priority filter; policy accept; }
flush chain ip banger postrouting
flush chain ip banger forward
add rule ip banger postrouting ip saddr @nat_vms oifname != "br-banger" masquerade comment "banger:nat"
add rule ip banger forward oifname "br-banger" ct state established,related accept comment "banger:replies"
add rule ip banger forward iifname "br-banger" oifname != "br-banger" ip saddr @nat_vms accept comment "banger:nat"
add rule ip banger forward iifname "br-banger" oifname != "br-banger" drop comment "banger:isolate-out"
add rule ip banger forward oifname "br-banger" iifname != "br-banger" drop comment "banger:isolate-in"
`

func TestEnsureNATScript(t *testing.T) {
	rec := &hostexec.Recorder{}
	l := NewLocal(rec, nil)
	spec := NATSpec{VMIP: "172.30.0.5", Tap: "bgtap1", Bridge: "br-banger"}
	if err := l.EnsureNAT(context.Background(), spec); err != nil {
		t.Fatal(err)
	}
	calls := rec.Calls()
	if got := rec.Lines(); !reflect.DeepEqual(got, []string{"sysctl -q -w net.ipv4.ip_forward=1", "nft -f -"}) {
		t.Fatalf("commands = %q", got)
	}
	want := wantBase + "add element ip banger nat_vms { 172.30.0.5 }\n"
	if got := stdinOf(t, calls[1]); got != want {
		t.Fatalf("nft script:\n%s\nwant:\n%s", got, want)
	}
}

func TestEnsureNATUplinkScript(t *testing.T) {
	rec := &hostexec.Recorder{}
	l := NewLocal(rec, nil)
	if err := l.EnsureNAT(context.Background(), NATSpec{VMIP: "10.9.0.2", Bridge: "br0", Uplink: "eth0"}); err != nil {
		t.Fatal(err)
	}
	script := stdinOf(t, rec.Calls()[1])
	for _, want := range []string{
		`add rule ip banger postrouting ip saddr @nat_vms oifname "eth0" masquerade comment "banger:nat"` + "\n",
		`add rule ip banger forward iifname "br0" oifname "eth0" ip saddr @nat_vms accept comment "banger:nat"` + "\n",
		`add rule ip banger forward iifname "br0" oifname != "br0" drop comment "banger:isolate-out"` + "\n",
		"add element ip banger nat_vms { 10.9.0.2 }\n",
	} {
		if !strings.Contains(script, want) {
			t.Errorf("script lacks %q:\n%s", want, script)
		}
	}
}

func TestEnsureNATSysctlFailure(t *testing.T) {
	rec := &hostexec.Recorder{Respond: func(c hostexec.Cmd) (hostexec.Result, error) {
		if c.Name == "sysctl" {
			return hostexec.Result{ExitCode: 255}, &hostexec.ExitError{Cmd: c.String(), ExitCode: 255, Stderr: "permission denied"}
		}
		return hostexec.Result{}, nil
	}}
	err := NewLocal(rec, nil).EnsureNAT(context.Background(), NATSpec{VMIP: "172.30.0.5", Bridge: "br-banger"})
	if err == nil || !strings.Contains(err.Error(), "forwarding") {
		t.Fatalf("err = %v", err)
	}
	if n := len(rec.Calls()); n != 1 {
		t.Fatalf("%d commands after a failed sysctl, want 1", n)
	}
}

func notFound(c hostexec.Cmd) (hostexec.Result, error) {
	return hostexec.Result{ExitCode: -1}, fmt.Errorf("%s: %w", c.Name, hostexec.ErrNotFound)
}

func exit1(c hostexec.Cmd, stderr string) (hostexec.Result, error) {
	return hostexec.Result{ExitCode: 1}, &hostexec.ExitError{Cmd: c.String(), ExitCode: 1, Stderr: stderr}
}

func TestEnsureNATIptablesFallback(t *testing.T) {
	rec := &hostexec.Recorder{Respond: func(c hostexec.Cmd) (hostexec.Result, error) {
		switch {
		case c.Name == "nft":
			return notFound(c)
		case c.Name == "iptables" && (c.Args[3] == "-C" || c.Args[3] == "-N"):
			if c.Args[3] == "-N" {
				return hostexec.Result{}, nil
			}
			return exit1(c, "iptables: Bad rule (does a matching rule exist in that chain?).")
		}
		return hostexec.Result{}, nil
	}}
	if err := NewLocal(rec, nil).EnsureNAT(context.Background(), NATSpec{VMIP: "172.30.0.5", Bridge: "br-banger"}); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"sysctl -q -w net.ipv4.ip_forward=1",
		"nft -f -",
		"iptables -w -t filter -N BANGER-FWD",
		"iptables -w -t nat -N BANGER-POST",
		"iptables -w -t filter -C FORWARD -j BANGER-FWD",
		"iptables -w -t filter -I FORWARD 1 -j BANGER-FWD",
		"iptables -w -t nat -C POSTROUTING -j BANGER-POST",
		"iptables -w -t nat -A POSTROUTING -j BANGER-POST",
		"iptables -w -t filter -C BANGER-FWD -o br-banger -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment banger:replies -j ACCEPT",
		"iptables -w -t filter -A BANGER-FWD -o br-banger -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment banger:replies -j ACCEPT",
		"iptables -w -t filter -C BANGER-FWD -i br-banger '!' -o br-banger -m comment --comment banger:isolate-out -j DROP",
		"iptables -w -t filter -A BANGER-FWD -i br-banger '!' -o br-banger -m comment --comment banger:isolate-out -j DROP",
		"iptables -w -t filter -C BANGER-FWD -o br-banger '!' -i br-banger -m comment --comment banger:isolate-in -j DROP",
		"iptables -w -t filter -A BANGER-FWD -o br-banger '!' -i br-banger -m comment --comment banger:isolate-in -j DROP",
		"iptables -w -t filter -C BANGER-FWD -i br-banger -s 172.30.0.5/32 '!' -o br-banger -m comment --comment banger:172.30.0.5 -j ACCEPT",
		"iptables -w -t filter -I BANGER-FWD 1 -i br-banger -s 172.30.0.5/32 '!' -o br-banger -m comment --comment banger:172.30.0.5 -j ACCEPT",
		"iptables -w -t nat -C BANGER-POST -s 172.30.0.5/32 '!' -o br-banger -m comment --comment banger:172.30.0.5 -j MASQUERADE",
		"iptables -w -t nat -A BANGER-POST -s 172.30.0.5/32 '!' -o br-banger -m comment --comment banger:172.30.0.5 -j MASQUERADE",
	}
	if got := rec.Lines(); !reflect.DeepEqual(got, want) {
		t.Fatalf("commands:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestEnsureNATIptablesIdempotent(t *testing.T) {
	// Everything already present: only checks, no insertions.
	rec := &hostexec.Recorder{Respond: func(c hostexec.Cmd) (hostexec.Result, error) {
		switch {
		case c.Name == "nft":
			return notFound(c)
		case c.Name == "iptables" && c.Args[3] == "-N":
			return exit1(c, "iptables: Chain already exists.")
		}
		return hostexec.Result{}, nil
	}}
	if err := NewLocal(rec, nil).EnsureNAT(context.Background(), NATSpec{VMIP: "172.30.0.5", Bridge: "br-banger"}); err != nil {
		t.Fatal(err)
	}
	for _, line := range rec.Lines() {
		if strings.Contains(line, " -A ") || strings.Contains(line, " -I ") {
			t.Errorf("modified an already complete ruleset: %s", line)
		}
	}
}

func TestEnsureNATNoFirewallTool(t *testing.T) {
	rec := &hostexec.Recorder{Respond: func(c hostexec.Cmd) (hostexec.Result, error) {
		if c.Name == "sysctl" {
			return hostexec.Result{}, nil
		}
		return notFound(c)
	}}
	err := NewLocal(rec, nil).EnsureNAT(context.Background(), NATSpec{VMIP: "172.30.0.5", Bridge: "br-banger"})
	if !errors.Is(err, ErrNotSupported) || !strings.Contains(err.Error(), "nftables") {
		t.Fatalf("err = %v, want ErrNotSupported naming nftables", err)
	}
}

func TestClearNATScript(t *testing.T) {
	rec := &hostexec.Recorder{}
	if err := NewLocal(rec, nil).ClearNAT(context.Background(), NATSpec{VMIP: "172.30.0.5", Bridge: "br-banger"}); err != nil {
		t.Fatal(err)
	}
	if got := rec.Lines(); !reflect.DeepEqual(got, []string{"nft list set ip banger nat_vms", "nft -f -"}) {
		t.Fatalf("commands = %q", got)
	}
	want := "add element ip banger nat_vms { 172.30.0.5 }\ndelete element ip banger nat_vms { 172.30.0.5 }\n"
	if got := stdinOf(t, rec.Calls()[1]); got != want {
		t.Fatalf("script %q, want %q", got, want)
	}
}

func TestClearNATWithoutTable(t *testing.T) {
	rec := &hostexec.Recorder{Respond: func(c hostexec.Cmd) (hostexec.Result, error) {
		return exit1(c, "Error: No such file or directory\nlist set ip banger nat_vms\n")
	}}
	if err := NewLocal(rec, nil).ClearNAT(context.Background(), NATSpec{VMIP: "172.30.0.5", Bridge: "br-banger"}); err != nil {
		t.Fatal(err)
	}
	if n := len(rec.Calls()); n != 1 {
		t.Fatalf("%d commands, want only the listing", n)
	}
}

func TestClearNATOtherErrorReported(t *testing.T) {
	rec := &hostexec.Recorder{Respond: func(c hostexec.Cmd) (hostexec.Result, error) {
		return exit1(c, "Error: Operation not permitted")
	}}
	err := NewLocal(rec, nil).ClearNAT(context.Background(), NATSpec{VMIP: "172.30.0.5", Bridge: "br-banger"})
	if err == nil || !strings.Contains(err.Error(), "not permitted") {
		t.Fatalf("err = %v", err)
	}
}

func TestClearNATIptables(t *testing.T) {
	listing := map[string]string{
		"filter": "-N BANGER-FWD\n" +
			"-A BANGER-FWD -s 172.30.0.5/32 -i br-banger ! -o br-banger -m comment --comment banger:172.30.0.5 -j ACCEPT\n" +
			"-A BANGER-FWD -s 172.30.0.6/32 -i br-banger ! -o br-banger -m comment --comment banger:172.30.0.6 -j ACCEPT\n" +
			"-A BANGER-FWD -o br-banger -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment banger:replies -j ACCEPT\n",
		"nat": "-N BANGER-POST\n" +
			"-A BANGER-POST -s 172.30.0.5/32 -o eth0 -m comment --comment \"banger:172.30.0.5\" -j MASQUERADE\n" +
			"-A BANGER-POST -s 172.30.0.5/32 -o eth0 -m comment --comment \"banger:172.30.0.5\" -j MASQUERADE\n",
	}
	rec := &hostexec.Recorder{Respond: func(c hostexec.Cmd) (hostexec.Result, error) {
		if c.Name == "nft" {
			return notFound(c)
		}
		switch c.Args[3] {
		case "-S":
			return hostexec.Result{Stdout: []byte(listing[c.Args[2]])}, nil
		}
		return hostexec.Result{}, nil
	}}
	if err := NewLocal(rec, nil).ClearNAT(context.Background(), NATSpec{VMIP: "172.30.0.5", Bridge: "br-banger"}); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"nft list set ip banger nat_vms",
		"iptables -w -t filter -S BANGER-FWD",
		"iptables -w -t filter -D BANGER-FWD -s 172.30.0.5/32 -i br-banger '!' -o br-banger -m comment --comment banger:172.30.0.5 -j ACCEPT",
		"iptables -w -t nat -S BANGER-POST",
		"iptables -w -t nat -D BANGER-POST -s 172.30.0.5/32 -o eth0 -m comment --comment banger:172.30.0.5 -j MASQUERADE",
		"iptables -w -t nat -D BANGER-POST -s 172.30.0.5/32 -o eth0 -m comment --comment banger:172.30.0.5 -j MASQUERADE",
	}
	if got := rec.Lines(); !reflect.DeepEqual(got, want) {
		t.Fatalf("commands:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestNATSpecValidationRejectsHostileInput(t *testing.T) {
	bad := []NATSpec{
		{VMIP: "172.30.0.5; flush ruleset", Bridge: "br-banger"},
		{VMIP: "172.30.0.5/32", Bridge: "br-banger"},
		{VMIP: "::1", Bridge: "br-banger"},
		{VMIP: "0.0.0.0", Bridge: "br-banger"},
		{VMIP: "127.0.0.1", Bridge: "br-banger"},
		{VMIP: "224.0.0.1", Bridge: "br-banger"},
		{VMIP: "172.30.0.5", Bridge: `br" accept; flush ruleset; "`},
		{VMIP: "172.30.0.5", Bridge: "br-banger", Uplink: "eth0 }"},
		{VMIP: "172.30.0.5", Bridge: "br-banger", Uplink: "br-banger"},
		{VMIP: "172.30.0.5", Bridge: "br-banger", Tap: "eth0"},
		{VMIP: "172.30.0.5", Bridge: ""},
		{VMIP: "172.30.0.5", Bridge: "averyveryverylongname"},
	}
	for _, spec := range bad {
		rec := &hostexec.Recorder{}
		l := NewLocal(rec, nil)
		for name, op := range map[string]func(context.Context, NATSpec) error{"EnsureNAT": l.EnsureNAT, "ClearNAT": l.ClearNAT} {
			err := op(context.Background(), spec)
			if !errors.Is(err, ErrInvalidArgument) {
				t.Errorf("%s(%+v) = %v, want ErrInvalidArgument", name, spec, err)
			}
		}
		if n := len(rec.Calls()); n != 0 {
			t.Errorf("%+v: ran %d commands despite invalid input", spec, n)
		}
	}
}

func TestInterfaceValidation(t *testing.T) {
	for _, name := range []string{"", "a/b", "../x", ".", "..", "br banger", "br\nx", "0123456789abcdef", "eth0:1", "tab\tx"} {
		if ValidateIfName(name) == nil {
			t.Errorf("ValidateIfName(%q) accepted", name)
		}
	}
	for _, name := range []string{"br-banger", "bgtap0", "eth0", "a", "x_y.z"} {
		if err := ValidateIfName(name); err != nil {
			t.Errorf("ValidateIfName(%q): %v", name, err)
		}
	}
	for _, name := range []string{"eth0", "bgtap", "docker0", "bgta1"} {
		if ValidateTapName(name) == nil {
			t.Errorf("ValidateTapName(%q) accepted", name)
		}
	}
	badBridges := []BridgeSpec{
		{Name: "br-banger", CIDR: "172.30.0.0/24"},
		{Name: "br-banger", CIDR: "172.30.0.1"},
		{Name: "br-banger", CIDR: "fd00::1/64"},
		{Name: "br-banger", CIDR: "172.30.0.1/31"},
		{Name: "br-banger", CIDR: "10.0.0.1/4"},
		{Name: "bgtapbr", CIDR: "172.30.0.1/24"},
		{Name: "br-banger", CIDR: "172.30.0.1/24", MTU: 100},
	}
	for _, spec := range badBridges {
		if err := ValidateBridgeSpec(spec); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("ValidateBridgeSpec(%+v) = %v", spec, err)
		}
	}
	if err := ValidateBridgeSpec(BridgeSpec{Name: "br-banger", CIDR: "172.30.0.1/24", MTU: 1500}); err != nil {
		t.Error(err)
	}
	if err := ValidateTapSpec(TapSpec{Name: "bgtapx", Bridge: "br-banger", Owner: -2}); err == nil {
		t.Error("owner -2 accepted")
	}
	for _, spec := range []ResolverSpec{
		{Bridge: "br-banger", Server: "127.0.0.1", Domain: "vm", Enable: true},
		{Bridge: "br-banger", Server: "127.0.0.1:53", Domain: "", Enable: true},
		{Bridge: "br-banger", Server: "127.0.0.1:53", Domain: "v m", Enable: true},
		{Bridge: "br-banger", Server: "127.0.0.1:53", Domain: "-vm", Enable: true},
	} {
		if err := ValidateResolverSpec(spec); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("ValidateResolverSpec(%+v) = %v", spec, err)
		}
	}
}

func TestNetlinkOpsRejectInvalidNamesBeforeTouchingTheHost(t *testing.T) {
	l := NewLocal(&hostexec.Recorder{}, nil)
	ctx := context.Background()
	checks := map[string]error{
		"DeleteTap eth0":      l.DeleteTap(ctx, "eth0"),
		"DeleteTap ../x":      l.DeleteTap(ctx, "../x"),
		"DeleteBridge a/b":    l.DeleteBridge(ctx, "a/b"),
		"CreateTap docker0":   l.CreateTap(ctx, TapSpec{Name: "docker0", Bridge: "br-banger"}),
		"EnsureBridge badnet": l.EnsureBridge(ctx, BridgeSpec{Name: "br-banger", CIDR: "nope"}),
		"Resolver bad server": l.SetResolverRouting(ctx, ResolverSpec{Bridge: "br-banger", Server: "x", Domain: "vm", Enable: true}),
	}
	for name, err := range checks {
		if !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%s: %v, want ErrInvalidArgument", name, err)
		}
	}
}

func TestResolvectlCommands(t *testing.T) {
	rec := &hostexec.Recorder{}
	l := NewLocal(rec, nil)
	ctx := context.Background()
	if err := l.resolvectl(ctx, ResolverSpec{Bridge: "br-banger", Server: "127.0.0.1:5353", Domain: "vm", Enable: true}); err != nil {
		t.Fatal(err)
	}
	if err := l.resolvectl(ctx, ResolverSpec{Bridge: "br-banger", Enable: false}); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"resolvectl dns br-banger 127.0.0.1:5353",
		"resolvectl domain br-banger '~vm'",
		"resolvectl default-route br-banger false",
		"resolvectl revert br-banger",
	}
	if got := rec.Lines(); !reflect.DeepEqual(got, want) {
		t.Fatalf("commands = %q\nwant %q", got, want)
	}
}

func TestResolvectlMissing(t *testing.T) {
	rec := &hostexec.Recorder{Respond: notFound}
	l := NewLocal(rec, nil)
	err := l.resolvectl(context.Background(), ResolverSpec{Bridge: "br-banger", Server: "127.0.0.1:5353", Domain: "vm", Enable: true})
	if !errors.Is(err, ErrNotSupported) {
		t.Fatalf("err = %v, want ErrNotSupported", err)
	}
	for _, hint := range []string{"server=/vm/127.0.0.1#5353", "dig @127.0.0.1 -p 5353"} {
		if !strings.Contains(err.Error(), hint) {
			t.Errorf("error lacks hint %q: %v", hint, err)
		}
	}
	if err := l.resolvectl(context.Background(), ResolverSpec{Bridge: "br-banger"}); err != nil {
		t.Fatalf("disable without resolvectl: %v", err)
	}
}

func TestResolvectlFailureHint(t *testing.T) {
	rec := &hostexec.Recorder{Respond: func(c hostexec.Cmd) (hostexec.Result, error) {
		return exit1(c, "Failed to set DNS configuration: Could not activate remote peer.")
	}}
	err := NewLocal(rec, nil).resolvectl(context.Background(), ResolverSpec{Bridge: "br-banger", Server: "127.0.0.1:5353", Domain: "vm", Enable: true})
	if err == nil || !strings.Contains(err.Error(), "systemctl status systemd-resolved") {
		t.Fatalf("err = %v", err)
	}
}

const sampleNFTJSON = `{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}, {"table": {"family": "ip", "name": "banger", "handle": 1}}, {"set": {"family": "ip", "name": "nat_vms", "table": "banger", "type": "ipv4_addr", "handle": 1, "elem": ["172.30.0.5", {"elem": {"val": "172.30.0.7", "comment": "x"}}]}}, {"chain": {"family": "ip", "table": "banger", "name": "postrouting", "handle": 2, "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}, {"chain": {"family": "ip", "table": "banger", "name": "forward", "handle": 3, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}, {"rule": {"family": "ip", "table": "banger", "chain": "postrouting", "handle": 9, "comment": "banger:nat", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@nat_vms"}}, {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "br-x"}}, {"masquerade": null}]}}, {"rule": {"family": "ip", "table": "banger", "chain": "forward", "handle": 10, "comment": "banger:replies", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "br-x"}}, {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}}, {"rule": {"family": "ip", "table": "banger", "chain": "forward", "handle": 11, "comment": "banger:nat", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "br-x"}}, {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "br-x"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@nat_vms"}}, {"accept": null}]}}, {"rule": {"family": "ip", "table": "banger", "chain": "forward", "handle": 12, "comment": "banger:isolate-out", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "br-x"}}, {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "br-x"}}, {"drop": null}]}}, {"rule": {"family": "ip", "table": "banger", "chain": "forward", "handle": 13, "comment": "banger:isolate-in", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "br-x"}}, {"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "br-x"}}, {"drop": null}]}}]}`

func TestInspectNATnft(t *testing.T) {
	rec := &hostexec.Recorder{Respond: func(c hostexec.Cmd) (hostexec.Result, error) {
		return hostexec.Result{Stdout: []byte(sampleNFTJSON)}, nil
	}}
	st, err := InspectNAT(context.Background(), rec, "br-x")
	if err != nil {
		t.Fatal(err)
	}
	if !st.Intact() || st.Backend != "nft" || !reflect.DeepEqual(st.VMs, []string{"172.30.0.5", "172.30.0.7"}) {
		t.Fatalf("state = %+v", st)
	}
	if got := rec.Lines(); !reflect.DeepEqual(got, []string{"nft -j list table ip banger"}) {
		t.Fatalf("commands = %q", got)
	}
	// Wrong bridge.
	st, err = InspectNAT(context.Background(), rec, "br-other")
	if err != nil || st.Intact() {
		t.Fatalf("wrong bridge: state %+v err %v", st, err)
	}
	// A rule removed by hand.
	damaged := strings.Replace(sampleNFTJSON, `"comment": "banger:isolate-out"`, `"comment": "someone-else"`, 1)
	rec.Respond = func(hostexec.Cmd) (hostexec.Result, error) { return hostexec.Result{Stdout: []byte(damaged)}, nil }
	st, err = InspectNAT(context.Background(), rec, "br-x")
	if err != nil || st.Intact() || !strings.Contains(strings.Join(st.Problems, ";"), "chain forward has rules") {
		t.Fatalf("damaged: state %+v err %v", st, err)
	}
	// No table at all.
	rec.Respond = func(c hostexec.Cmd) (hostexec.Result, error) { return exit1(c, "Error: No such file or directory") }
	st, err = InspectNAT(context.Background(), rec, "br-x")
	if err != nil || st.Present || st.Backend != "nft" {
		t.Fatalf("absent: state %+v err %v", st, err)
	}
}

func TestInspectNATiptables(t *testing.T) {
	out := map[string]string{
		"BANGER-FWD": "-N BANGER-FWD\n" +
			"-A BANGER-FWD -s 172.30.0.5/32 -i br-banger ! -o br-banger -m comment --comment banger:172.30.0.5 -j ACCEPT\n" +
			"-A BANGER-FWD -o br-banger -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment banger:replies -j ACCEPT\n" +
			"-A BANGER-FWD -i br-banger ! -o br-banger -m comment --comment banger:isolate-out -j DROP\n" +
			"-A BANGER-FWD -o br-banger ! -i br-banger -m comment --comment banger:isolate-in -j DROP\n",
		"BANGER-POST": "-N BANGER-POST\n-A BANGER-POST -s 172.30.0.5/32 ! -o br-banger -m comment --comment banger:172.30.0.5 -j MASQUERADE\n",
		"FORWARD":     "-P FORWARD ACCEPT\n-A FORWARD -j BANGER-FWD\n",
		"POSTROUTING": "-P POSTROUTING ACCEPT\n-A POSTROUTING -j BANGER-POST\n",
	}
	rec := &hostexec.Recorder{Respond: func(c hostexec.Cmd) (hostexec.Result, error) {
		if c.Name == "nft" {
			return notFound(c)
		}
		return hostexec.Result{Stdout: []byte(out[c.Args[4]])}, nil
	}}
	st, err := InspectNAT(context.Background(), rec, "br-banger")
	if err != nil || !st.Intact() || st.Backend != "iptables" || !reflect.DeepEqual(st.VMs, []string{"172.30.0.5"}) {
		t.Fatalf("state %+v err %v", st, err)
	}
	out["FORWARD"] = "-P FORWARD DROP\n"
	st, err = InspectNAT(context.Background(), rec, "br-banger")
	if err != nil || st.Intact() || !strings.Contains(strings.Join(st.Problems, ";"), "FORWARD does not jump") {
		t.Fatalf("missing jump: state %+v err %v", st, err)
	}
}

func FuzzParseNFTState(f *testing.F) {
	f.Add([]byte(sampleNFTJSON), "br-x")
	f.Add([]byte(`{"nftables":[{"set":{"name":"nat_vms","elem":[1,{"elem":{}}]}}]}`), "")
	f.Fuzz(func(t *testing.T, data []byte, bridge string) {
		st, err := parseNFTState(data, bridge)
		if err == nil && !st.Present && len(st.Problems) > 0 {
			t.Fatalf("problems reported for an absent table: %+v", st)
		}
	})
}

func TestSplitIPTLine(t *testing.T) {
	got := splitIPTLine(`-A X -m comment --comment "a b \"c\"" -j  ACCEPT`)
	want := []string{"-A", "X", "-m", "comment", "--comment", `a b "c"`, "-j", "ACCEPT"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("splitIPTLine = %q, want %q", got, want)
	}
	if got := splitIPTLine(`--comment ""`); !reflect.DeepEqual(got, []string{"--comment", ""}) {
		t.Fatalf("empty quoted arg: %q", got)
	}
}

func FuzzParseIPTRules(f *testing.F) {
	f.Add("-A BANGER-FWD -s 172.30.0.5/32 -m comment --comment banger:172.30.0.5 -j ACCEPT\n", "banger:172.30.0.5")
	f.Add("-A BANGER-FWD --comment\n", "x")
	f.Fuzz(func(t *testing.T, out, tag string) {
		for _, r := range parseIPTRules(out, "BANGER-FWD", tag) {
			found := false
			for i := 0; i+1 < len(r); i++ {
				if r[i] == "--comment" && r[i+1] == tag {
					found = true
				}
			}
			if !found {
				t.Fatalf("rule %q returned without tag %q", r, tag)
			}
		}
	})
}

func TestNftWithoutKernelSupportFallsBackToIptables(t *testing.T) {
	rec := &hostexec.Recorder{Respond: func(c hostexec.Cmd) (hostexec.Result, error) {
		if c.Name == "nft" {
			return exit1(c, "Error: Could not process rule: Protocol not supported")
		}
		return hostexec.Result{}, nil
	}}
	if err := NewLocal(rec, nil).EnsureNAT(context.Background(), NATSpec{VMIP: "172.30.0.5", Bridge: "br-banger"}); err != nil {
		t.Fatal(err)
	}
	lines := rec.Lines()
	if len(lines) < 3 || lines[2] != "iptables -w -t filter -N BANGER-FWD" {
		t.Fatalf("no iptables fallback: %q", lines)
	}
}
