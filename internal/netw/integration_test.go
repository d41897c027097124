package netw

import (
	"context"
	"errors"
	"github.com/bangerdev/banger/internal/doctor"
	"net"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/bangerdev/banger/internal/privops"
	"github.com/bangerdev/banger/internal/testreq"
)

func integration(t *testing.T, tools ...string) {
	t.Helper()
	testreq.Root(t)
	testreq.Tools(t, append([]string{"ip"}, tools...)...)
}

func (n *testNS) listTaps(prefix string) ([]string, error) {
	var names []string
	err := n.do(func() (err error) {
		names, err = ListTaps(prefix)
		return err
	})
	return names, err
}

func TestBridgeTapPoolLifecycle(t *testing.T) {
	integration(t, "nft")
	ns := newTestNS(t)
	ops := newNSOps(ns)
	cfg := Config{Bridge: testBridge, CIDR: "172.30.0.1/24", TapPoolSize: 2, TapPrefix: testTapPrefix, TapOwner: 4242, TapGroup: 4243}
	m, err := NewManager(ops, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	m.listTaps = ns.listTaps
	t.Cleanup(func() { _ = m.Close() })
	ctx := context.Background()

	start := time.Now()
	if err := m.EnsureBridge(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("EnsureBridge (bridge + address + nft table): %v", time.Since(start))
	if err := m.EnsureBridge(ctx); err != nil {
		t.Fatalf("second EnsureBridge: %v", err)
	}
	br := ns.link(t, testBridge)
	if br == nil || br.Type() != "bridge" || br.Attrs().Flags&net.FlagUp == 0 {
		t.Fatalf("bridge = %+v", br)
	}
	var addrs []netlink.Addr
	_ = ns.do(func() (err error) { addrs, err = netlink.AddrList(br, netlink.FAMILY_V4); return err })
	if len(addrs) != 1 || addrs[0].IPNet.String() != "172.30.0.1/24" {
		t.Fatalf("bridge addresses %v (EnsureBridge twice must add the address once)", addrs)
	}
	var res doctor.Result
	_ = ns.do(func() error { res = CheckBridge(cfg); return nil })
	if res.Status != doctor.Pass {
		t.Fatalf("CheckBridge = %+v", res)
	}
	st, err := privops.InspectNAT(ctx, nsRunner{ns: ns.name}, testBridge)
	if err != nil || !st.Intact() || len(st.VMs) != 0 {
		t.Fatalf("isolation table after EnsureBridge: %+v %v", st, err)
	}

	start = time.Now()
	waitFor(t, "tap pool of 2", func() bool { return len(m.IdleTaps()) == 2 })
	t.Logf("pool of 2 taps filled in %v", time.Since(start))
	checkTap := func(name string) {
		t.Helper()
		l := ns.link(t, name)
		tt, ok := l.(*netlink.Tuntap)
		if !ok {
			t.Fatalf("%s = %T, want a tap", name, l)
		}
		if tt.Attrs().MasterIndex != br.Attrs().Index || tt.Attrs().Flags&net.FlagUp == 0 {
			t.Fatalf("tap %s not attached to %s or not up: %+v", name, testBridge, tt.Attrs())
		}
		if tt.Owner != 4242 || tt.Group != 4243 || tt.NonPersist || tt.Mode != netlink.TUNTAP_MODE_TAP {
			t.Fatalf("tap %s owner %d group %d persist %v mode %v", name, tt.Owner, tt.Group, !tt.NonPersist, tt.Mode)
		}
	}
	for _, n := range m.IdleTaps() {
		checkTap(n)
	}

	start = time.Now()
	held, err := m.AcquireTap(ctx, "vm-1")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("AcquireTap from the pool: %v", time.Since(start))
	checkTap(held)
	// The VMM's uid/gid can open the tap without privileges; others cannot.
	if err := ns.openTapAs(held, 4242, 4243); err != nil {
		t.Fatalf("owner cannot open its tap: %v", err)
	}
	for _, ids := range [][2]int{{4244, 4243}, {4242, 4244}} {
		if err := ns.openTapAs(held, ids[0], ids[1]); !errors.Is(err, syscall.EPERM) {
			t.Fatalf("uid %d gid %d opening the tap: %v, want EPERM", ids[0], ids[1], err)
		}
	}
	if ns.link(t, held) == nil {
		t.Fatal("tap gone after the VMM closed it: not persistent")
	}
	// CreateTap is idempotent and DeleteTap of a missing tap is fine.
	spec := privops.TapSpec{Name: held, Bridge: testBridge, Owner: 4242, Group: 4243}
	if err := ops.CreateTap(ctx, spec); err != nil {
		t.Fatalf("CreateTap on an existing tap: %v", err)
	}
	checkTap(held)
	if err := ops.DeleteTap(ctx, testTapPrefix+"none"); err != nil {
		t.Fatalf("DeleteTap of a missing tap: %v", err)
	}
	waitFor(t, "refill", func() bool { return len(m.IdleTaps()) == 2 })

	other, err := m.AcquireTap(ctx, "vm-2")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.ReleaseTap(ctx, other); err != nil {
		t.Fatal(err)
	}
	if ns.link(t, other) != nil {
		t.Fatalf("released tap %s still exists", other)
	}
	if err := m.ReleaseTap(ctx, other); err != nil {
		t.Fatalf("second ReleaseTap: %v", err)
	}

	// Taps a crashed daemon left behind are reclaimed; used ones are kept.
	if err := ops.CreateTap(ctx, privops.TapSpec{Name: testTapPrefix + "stray", Bridge: testBridge, Owner: -1, Group: -1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "refill", func() bool { return len(m.IdleTaps()) == 2 })
	deleted, err := m.Reclaim(ctx, func(tap string) bool { return tap == held })
	if err != nil || !slices.Equal(deleted, []string{testTapPrefix + "stray"}) {
		t.Fatalf("Reclaim = %v, %v", deleted, err)
	}

	idle := m.IdleTaps()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	for _, n := range idle {
		if ns.link(t, n) != nil {
			t.Fatalf("idle pool tap %s survived Close", n)
		}
	}
	if names, _ := ns.listTaps(testTapPrefix); !slices.Equal(names, []string{held}) {
		t.Fatalf("taps after Close = %v, want only %s", names, held)
	}
	if err := m.ReleaseTap(ctx, held); err != nil {
		t.Fatal(err)
	}

	// The bridge is only deleted with banger's own ports on it.
	ns.sh(t, "ip link add bgtnv0 type veth peer name bgtnv1")
	ns.sh(t, "ip link set bgtnv0 master "+testBridge)
	if err := ops.DeleteBridge(ctx, testBridge); !errors.Is(err, privops.ErrInvalidArgument) {
		t.Fatalf("DeleteBridge with a foreign port: %v", err)
	}
	ns.sh(t, "ip link del bgtnv0")
	if err := m.DeleteBridge(ctx); err != nil {
		t.Fatal(err)
	}
	if ns.link(t, testBridge) != nil {
		t.Fatal("bridge survived DeleteBridge")
	}
	if out := ns.sh(t, "nft list tables"); strings.Contains(out, "banger") {
		t.Fatalf("nft table survived DeleteBridge: %s", out)
	}
	if err := m.DeleteBridge(ctx); err != nil {
		t.Fatalf("second DeleteBridge: %v", err)
	}
	_ = ns.do(func() error { res = CheckBridge(cfg); return nil })
	if res.Status != doctor.Fail || res.Hint == "" {
		t.Fatalf("CheckBridge without a bridge = %+v", res)
	}
}

func TestRefusesForeignInterfaces(t *testing.T) {
	integration(t, "nft")
	ns := newTestNS(t)
	ops := newNSOps(ns)
	ctx := context.Background()
	ns.sh(t, "ip link add bgtndummy type veth peer name bgtnpeer")
	ns.sh(t, "ip link add "+testTapPrefix+"dum type veth peer name bgtnpeer2")
	if err := ops.EnsureBridge(ctx, privops.BridgeSpec{Name: "bgtndummy", CIDR: "172.30.0.1/24"}); !errors.Is(err, privops.ErrInvalidArgument) {
		t.Errorf("EnsureBridge over a dummy: %v", err)
	}
	if err := ops.DeleteBridge(ctx, "bgtndummy"); !errors.Is(err, privops.ErrInvalidArgument) {
		t.Errorf("DeleteBridge of a dummy: %v", err)
	}
	if err := ops.DeleteTap(ctx, testTapPrefix+"dum"); !errors.Is(err, privops.ErrInvalidArgument) {
		t.Errorf("DeleteTap of a dummy: %v", err)
	}
	if ns.link(t, "bgtndummy") == nil || ns.link(t, testTapPrefix+"dum") == nil {
		t.Fatal("a refused operation deleted the interface")
	}
	if err := ops.CreateTap(ctx, privops.TapSpec{Name: testTapPrefix + "x", Bridge: "bgtnnobridge", Owner: -1, Group: -1}); err == nil {
		t.Error("CreateTap on a missing bridge succeeded")
	}
	// Clearing a VM's policy where nothing was ever installed is fine, with
	// or without nft; ensuring it before the bridge says what to do.
	spec := privops.VMNetSpec{VMIP: "172.30.0.2", MAC: "02:ba:ac:1e:00:02", Tap: testTapPrefix + "x", Bridge: testBridge}
	for _, hide := range [][]string{nil, {"nft"}} {
		if err := newNSOps(ns, hide...).ClearVMNet(ctx, spec); err != nil {
			t.Errorf("ClearVMNet without a table (hide %v): %v", hide, err)
		}
	}
	if err := ops.EnsureVMNet(ctx, spec); err == nil || !strings.Contains(err.Error(), "ensure the bridge first") {
		t.Errorf("EnsureVMNet without the bridge: %v", err)
	}
	// Without nftables banger refuses to set up the bridge instead of
	// running VMs unisolated.
	if err := newNSOps(ns, "nft").EnsureBridge(ctx, privops.BridgeSpec{Name: testBridge, CIDR: "172.30.0.1/24"}); !errors.Is(err, privops.ErrNotSupported) || !strings.Contains(err.Error(), "install") {
		t.Errorf("EnsureBridge without nft: %v", err)
	}
}

func TestResolverRoutingWithoutResolved(t *testing.T) {
	integration(t, "nft")
	if _, err := exec.LookPath("resolvectl"); err == nil {
		t.Skip("resolvectl is installed: it would talk to the host's systemd-resolved, which this test must not touch (unit tests cover the commands)")
	}
	ns := newTestNS(t)
	m, err := NewManager(newNSOps(ns), Config{Bridge: testBridge, TapPrefix: testTapPrefix}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := m.RouteDNS(ctx, "127.0.0.1:5353", "vm", true); err == nil || errors.Is(err, privops.ErrNotSupported) {
		t.Fatalf("RouteDNS without a bridge: %v, want a 'bridge does not exist' error", err)
	}
	if err := m.EnsureBridge(ctx); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	err = m.RouteDNS(ctx, "127.0.0.1:5353", "vm", true)
	if !errors.Is(err, privops.ErrNotSupported) || !strings.Contains(err.Error(), "dnsmasq") {
		t.Fatalf("RouteDNS = %v, want ErrNotSupported with alternatives", err)
	}
	if err := m.RouteDNS(ctx, "", "", false); err != nil {
		t.Fatalf("disabling without resolved: %v", err)
	}
	res := CheckResolverRouting(ctx, nsRunner{ns: ns.name}, m.Config(), "127.0.0.1:5353", "vm")
	if res.Status != doctor.Warn || !strings.Contains(res.Hint, "server=/vm/127.0.0.1#5353") {
		t.Fatalf("CheckResolverRouting = %+v", res)
	}
}
