package netw

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestPlan(t *testing.T) {
	cases := []struct {
		cidr             string
		gw, first, last  string
		prefix           int
		wantErrSubstring string
	}{
		{cidr: "172.30.0.1/24", gw: "172.30.0.1", first: "172.30.0.2", last: "172.30.0.254", prefix: 24},
		{cidr: "172.30.0.0/24", gw: "172.30.0.1", first: "172.30.0.2", last: "172.30.0.254", prefix: 24},
		{cidr: " 10.1.0.1/16 ", gw: "10.1.0.1", first: "10.1.0.2", last: "10.1.255.254", prefix: 16},
		{cidr: "192.168.7.1/30", gw: "192.168.7.1", first: "192.168.7.2", last: "192.168.7.2", prefix: 30},
		{cidr: "172.30.0.100/24", gw: "172.30.0.100", first: "172.30.0.101", last: "172.30.0.254", prefix: 24},
		{cidr: "172.30.0.254/24", wantErrSubstring: "no address for VMs"},
		{cidr: "172.30.0.255/24", wantErrSubstring: "broadcast"},
		{cidr: "172.30.0.1/31", wantErrSubstring: "prefix /31"},
		{cidr: "10.0.0.1/7", wantErrSubstring: "prefix /7"},
		{cidr: "fd00::1/64", wantErrSubstring: "IPv4"},
		{cidr: "172.30.0.1", wantErrSubstring: "IPv4 with a prefix"},
		{cidr: "", wantErrSubstring: "IPv4 with a prefix"},
	}
	for _, c := range cases {
		gw, first, last, prefix, err := Plan(c.cidr)
		if c.wantErrSubstring != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErrSubstring) {
				t.Errorf("Plan(%q) err = %v, want %q", c.cidr, err, c.wantErrSubstring)
			}
			continue
		}
		if err != nil {
			t.Errorf("Plan(%q): %v", c.cidr, err)
			continue
		}
		if gw.String() != c.gw || first.String() != c.first || last.String() != c.last || prefix != c.prefix {
			t.Errorf("Plan(%q) = %s %s %s /%d, want %s %s %s /%d", c.cidr, gw, first, last, prefix, c.gw, c.first, c.last, c.prefix)
		}
	}
}

func FuzzPlan(f *testing.F) {
	for _, s := range []string{"172.30.0.1/24", "10.0.0.0/8", "1.2.3.4/30", "255.255.255.254/30", "0.0.0.0/8"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, cidr string) {
		gw, first, last, bits, err := Plan(cidr)
		if err != nil {
			return
		}
		p := netip.PrefixFrom(gw, bits).Masked()
		if !p.Contains(first) || !p.Contains(last) {
			t.Fatalf("%q: range %s-%s outside %s", cidr, first, last, p)
		}
		if gw.Compare(first) >= 0 || first.Compare(last) > 0 {
			t.Fatalf("%q: order gw %s first %s last %s", cidr, gw, first, last)
		}
		if gw == p.Addr() || !p.Contains(last.Next()) {
			t.Fatalf("%q: gateway is the network address or last is the broadcast", cidr)
		}
	})
}

func TestMACFor(t *testing.T) {
	if got := MACFor(netip.MustParseAddr("172.30.0.5")); got != "02:ba:ac:1e:00:05" {
		t.Fatalf("MACFor = %s", got)
	}
	seen := map[string]bool{}
	for ip := netip.MustParseAddr("10.0.0.0"); ip.Compare(netip.MustParseAddr("10.0.4.0")) < 0; ip = ip.Next() {
		m := MACFor(ip)
		if seen[m] {
			t.Fatalf("duplicate MAC %s", m)
		}
		seen[m] = true
		if m[:2] != "02" { // locally administered, unicast
			t.Fatalf("MAC %s not locally administered unicast", m)
		}
	}
}

func TestTapNames(t *testing.T) {
	a, b := TapName("vm-1"), TapName("vm-2")
	if a == b || a != TapName("vm-1") {
		t.Fatalf("TapName not deterministic/distinct: %s %s", a, b)
	}
	for _, n := range []string{a, b, TapName(""), TapName(strings.Repeat("x", 500))} {
		if len(n) != 15 || !strings.HasPrefix(n, "bgtap") {
			t.Fatalf("bad tap name %q", n)
		}
		if IsPoolTap("bgtap", n) {
			t.Fatalf("deterministic name %q looks like a pool tap", n)
		}
	}
	cfg := Config{TapPrefix: "bgtapxy"}
	if n := cfg.TapName("vm-1"); len(n) != 15 || !strings.HasPrefix(n, "bgtapxy") {
		t.Fatalf("cfg.TapName = %q", n)
	}
	m := &Manager{cfg: Config{TapPrefix: "bgtapxyz"}}
	if n := m.poolName(); len(n) != 15 || !IsPoolTap("bgtapxyz", n) {
		t.Fatalf("poolName = %q", n)
	}
}

func TestConfigValidate(t *testing.T) {
	good := Config{}.WithDefaults()
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	if good.Bridge != "br-banger" || good.CIDR != "172.30.0.1/24" || good.TapPrefix != "bgtap" {
		t.Fatalf("defaults = %+v", good)
	}
	if got := (Config{CIDR: "172.30.0.0/24"}).WithDefaults().BridgeSpec().CIDR; got != "172.30.0.1/24" {
		t.Fatalf("BridgeSpec CIDR = %s", got)
	}
	bad := []Config{
		{Bridge: "br/x"},
		{CIDR: "172.30.0.1/31"},
		{TapPrefix: "tap"},
		{TapPrefix: "bgtap1234"},
		{TapPoolSize: -1},
		{TapPoolSize: 65},
		{Uplink: "eth 0"},
		{MTU: 10},
		{Bridge: "bgtapbr"},
	}
	for _, c := range bad {
		if err := c.WithDefaults().Validate(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("Validate(%+v) = %v, want ErrInvalidConfig", c, err)
		}
		if _, err := NewManager(nil, c, nil); err == nil {
			t.Errorf("NewManager(%+v) accepted", c)
		}
	}
}
