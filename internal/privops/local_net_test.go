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

func notFound(c hostexec.Cmd) (hostexec.Result, error) {
	return hostexec.Result{ExitCode: -1}, fmt.Errorf("%s: %w", c.Name, hostexec.ErrNotFound)
}

func exit1(c hostexec.Cmd, stderr string) (hostexec.Result, error) {
	return hostexec.Result{ExitCode: 1}, &hostexec.ExitError{Cmd: c.String(), ExitCode: 1, Stderr: stderr}
}

func TestInterfaceValidation(t *testing.T) {
	for _, name := range []string{"", "a/b", "../x", ".", "..", "br banger", "br\nx", "0123456789abcdef", "eth0:1", "tab\tx", "x_y.z", "ETH0", "eth0.100", "-x"} {
		if ValidateIfName(name) == nil {
			t.Errorf("ValidateIfName(%q) accepted", name)
		}
	}
	for _, name := range []string{"br-banger", "bgtap0", "eth0", "a", "enp0s31f6", "bgtapp0a1b2c3d4"} {
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
