package netw

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/doctor"
	"github.com/bangerdev/banger/internal/privops"
)

// policyTopology is the network banger's VMs live in, built from network
// namespaces:
//
//	guest A (172.30.0.2) ─┐                ┌─ lan (192.168.77.2): a LAN service on :8080, a resolver on :53
//	guest B (172.30.0.3) ─┴─ host (bridge) ┤
//	                        172.30.0.1     └─ up  (198.18.0.2): the internet, a service on :8080
//
// Each guest is a veth whose host end carries banger's tap prefix (a tap
// carries no traffic without a VMM) and whose guest end has the VM's MAC.
// The host runs a service on all addresses (:2222) and banger's DNS port
// (:5354). The LAN and the internet route the bridge's subnet back to the
// host, so only banger's rules keep traffic in: every service answers with
// the peer address it sees, which shows whether NAT happened.
type policyTopology struct {
	host, a, b, lan, up *testNS
	m                   *Manager
	runner              nsRunner
	cfg                 Config
	local               *privops.Local
	vmA, vmB            VMNet
}

const (
	internetSvc  = "198.18.0.2:8080"
	lanSvc       = "192.168.77.2:8080"
	lanResolver  = "192.168.77.2:53"
	hostSvcGW    = "172.30.0.1:2222"
	hostSvcLAN   = "192.168.77.1:2222"
	hostSvcUp    = "198.18.0.1:2222"
	hostDNS      = "172.30.0.1:5354"
	hostDNSOnLAN = "192.168.77.1:5354"
	vmBSvc       = "172.30.0.3:8080"
	vmASvc       = "172.30.0.2:8080"
)

func newPolicyTopology(t *testing.T) *policyTopology {
	t.Helper()
	tp := &policyTopology{host: newTestNS(t), a: newTestNS(t), b: newTestNS(t), lan: newTestNS(t), up: newTestNS(t)}
	tp.runner = nsRunner{ns: tp.host.name}
	tp.cfg = Config{Bridge: testBridge, CIDR: "172.30.0.1/24", TapPrefix: testTapPrefix, TapOwner: -1, TapGroup: -1}
	tp.local = privops.NewLocal(tp.runner, nil)
	tp.local.Firewall = privops.FirewallConfig{DNSPorts: []uint16{5354}, Resolvers: []netip.Addr{netip.MustParseAddr("192.168.77.2")}}
	m, err := NewManager(&nsOps{ns: tp.host, local: tp.local}, tp.cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	tp.m = m
	t.Cleanup(func() { _ = m.Close() })
	h := tp.host
	h.sh(t, "sysctl -q -w net.ipv4.ip_forward=0")
	if err := m.EnsureBridge(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.DeleteBridge(context.Background()) })

	guest := func(g *testNS, tap, ip string) VMNet {
		addr := netip.MustParseAddr(ip)
		mac := MACFor(addr)
		h.sh(t, "ip link add "+tap+" type veth peer name eth0 netns "+g.name)
		h.sh(t, "ip link set "+tap+" master "+testBridge)
		h.sh(t, "ip link set "+tap+" up")
		g.sh(t, "ip link set eth0 address "+mac)
		g.sh(t, "ip addr add "+ip+"/24 dev eth0")
		g.sh(t, "ip link set eth0 up")
		g.sh(t, "ip route add default via 172.30.0.1")
		return VMNet{IP: addr, MAC: mac, Tap: tap}
	}
	tp.vmA = guest(tp.a, testTapPrefix+"a", "172.30.0.2")
	tp.vmB = guest(tp.b, testTapPrefix+"b", "172.30.0.3")

	link := func(hostIf, hostAddr string, peer *testNS, peerAddr string) {
		h.sh(t, "ip link add "+hostIf+" type veth peer name up1 netns "+peer.name)
		h.sh(t, "ip addr add "+hostAddr+" dev "+hostIf)
		h.sh(t, "ip link set "+hostIf+" up")
		peer.sh(t, "ip addr add "+peerAddr+" dev up1")
		peer.sh(t, "ip link set up1 up")
		peer.sh(t, "ip route add 172.30.0.0/24 via "+strings.Split(hostAddr, "/")[0])
	}
	link("bgtnlan", "192.168.77.1/24", tp.lan, "192.168.77.2/24")
	link("bgtnup", "198.18.0.1/24", tp.up, "198.18.0.2/24")

	serve(t, tp.up, internetSvc)
	serve(t, tp.lan, lanSvc)
	serve(t, tp.lan, lanResolver)
	serve(t, tp.host, "0.0.0.0:2222")
	serve(t, tp.host, "0.0.0.0:5354")
	serve(t, tp.b, vmBSvc)
	serve(t, tp.a, vmASvc)
	return tp
}

// serve runs a TCP service in ns that writes "peer=ADDR\n" to each client.
func serve(t *testing.T, ns *testNS, addr string) {
	t.Helper()
	var ln net.Listener
	if err := ns.do(func() (err error) { ln, err = net.Listen("tcp4", addr); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			fmt.Fprintf(c, "peer=%s\n", host)
			c.Close()
		}
	}()
}

// dial connects from ns (optionally from the source address src) and
// returns the peer address the service saw.
func dial(ns *testNS, src, addr string) (string, error) {
	var line string
	err := ns.do(func() error {
		d := net.Dialer{Timeout: 600 * time.Millisecond}
		if src != "" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
		}
		c, err := d.Dial("tcp4", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		line, err = bufio.NewReader(c).ReadString('\n')
		return err
	})
	return strings.TrimPrefix(strings.TrimSpace(line), "peer="), err
}

// expect checks one path: reach says whether it must work; peer, when set,
// is the source address the service must see.
func (tp *policyTopology) expect(t *testing.T, from *testNS, src, addr string, reach bool, peer string) {
	t.Helper()
	got, err := dial(from, src, addr)
	switch {
	case reach && err != nil:
		t.Errorf("%s -> %s: blocked (%v), want allowed", from.name, addr, err)
	case reach && peer != "" && got != peer:
		t.Errorf("%s -> %s: service saw %s, want %s", from.name, addr, got, peer)
	case !reach && err == nil:
		t.Errorf("%s -> %s: allowed (service saw %s), want blocked", from.name, addr, got)
	}
}

func (tp *policyTopology) apply(t *testing.T, v VMNet) {
	t.Helper()
	for range 2 { // idempotent
		if err := tp.m.ApplyVMNet(context.Background(), v); err != nil {
			t.Fatal(err)
		}
	}
}

func (tp *policyTopology) ipForward(t *testing.T) string {
	t.Helper()
	return strings.TrimSpace(tp.host.sh(t, "cat /proc/sys/net/ipv4/ip_forward"))
}

func (tp *policyTopology) inspect(t *testing.T) privops.NATState {
	t.Helper()
	st, err := privops.InspectNAT(context.Background(), tp.runner, testBridge)
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(st.VMs)
	return st
}

// TestEgressPolicy proves each rule of banger's firewall both ways, with
// real packets between namespaces.
func TestEgressPolicy(t *testing.T) {
	integration(t, "nft", "sysctl")
	tp := newPolicyTopology(t)
	ctx := context.Background()
	a, b := tp.a, tp.b
	A, B := tp.vmA, tp.vmB

	// Nothing bound yet: an unknown VM's frames are dropped at the bridge
	// (anti-spoofing), even to the gateway's DNS port.
	tp.expect(t, a, "", hostDNS, false, "")

	// Without --nat: only the gateway's DNS port, nothing else.
	tp.apply(t, A)
	tp.apply(t, B)
	tp.expect(t, a, "", hostDNS, true, "172.30.0.2")
	tp.expect(t, a, "", hostSvcGW, false, "")
	tp.expect(t, a, "", hostSvcLAN, false, "")
	tp.expect(t, a, "", hostDNSOnLAN, false, "")
	tp.expect(t, a, "", internetSvc, false, "")
	tp.expect(t, a, "", lanSvc, false, "")
	tp.expect(t, a, "", vmBSvc, false, "")
	tp.expect(t, b, "", vmASvc, false, "")
	if got := tp.ipForward(t); got != "0" {
		t.Fatalf("ip_forward = %s before any --nat VM", got)
	}

	// --nat: the internet (masqueraded), the guests' resolver even though it
	// is on the LAN, but not the LAN, the host or the other VM.
	A.NAT = true
	tp.apply(t, A)
	if got := tp.ipForward(t); got != "1" {
		t.Fatalf("ip_forward = %s after a --nat VM", got)
	}
	tp.expect(t, a, "", internetSvc, true, "198.18.0.1")
	tp.expect(t, a, "", lanResolver, true, "192.168.77.1")
	tp.expect(t, a, "", lanSvc, false, "")
	tp.expect(t, a, "", hostSvcGW, false, "")
	tp.expect(t, a, "", hostSvcLAN, false, "")
	tp.expect(t, a, "", hostSvcUp, false, "")
	tp.expect(t, a, "", vmBSvc, false, "")
	tp.expect(t, b, "", internetSvc, false, "")
	tp.expect(t, b, "", lanResolver, false, "")
	// VM to VM through the gateway (a route via the host) is refused too.
	b.sh(t, "ip route add 172.30.0.2/32 via 172.30.0.1")
	tp.expect(t, b, "", vmASvc, false, "")
	b.sh(t, "ip route del 172.30.0.2/32 via 172.30.0.1")

	// Anti-spoofing: B borrows A's address (and then A's MAC as well) to
	// get out through A's NAT; its tap is not bound to them.
	b.sh(t, "ip addr add 172.30.0.2/32 dev eth0")
	tp.expect(t, b, "172.30.0.2", internetSvc, false, "")
	b.sh(t, "ip link set eth0 address "+A.MAC)
	tp.expect(t, b, "172.30.0.2", internetSvc, false, "")
	b.sh(t, "ip link set eth0 address "+B.MAC)
	b.sh(t, "ip addr del 172.30.0.2/32 dev eth0")
	tp.expect(t, a, "", internetSvc, true, "198.18.0.1")

	// --allow-lan: the LAN as well, still not the host; VM to VM only
	// when both allow it.
	A.AllowLAN = true
	tp.apply(t, A)
	tp.expect(t, a, "", lanSvc, true, "192.168.77.1")
	tp.expect(t, a, "", internetSvc, true, "198.18.0.1")
	tp.expect(t, a, "", hostSvcLAN, false, "")
	tp.expect(t, a, "", hostSvcGW, false, "")
	tp.expect(t, a, "", vmBSvc, false, "")
	B.NAT, B.AllowLAN = true, true
	tp.apply(t, B)
	tp.expect(t, a, "", vmBSvc, true, "172.30.0.2")
	tp.expect(t, b, "", vmASvc, true, "172.30.0.3")
	B.NAT, B.AllowLAN = false, false
	tp.apply(t, B)
	tp.expect(t, a, "", vmBSvc, false, "")
	tp.expect(t, b, "", lanSvc, false, "")

	st := tp.inspect(t)
	if !st.Intact() || !slices.Equal(st.VMs, []string{"172.30.0.2"}) || !st.ForwardingByBanger {
		t.Fatalf("firewall state %+v", st)
	}
	if r := CheckNATTable(ctx, tp.runner, tp.cfg, []netip.Addr{A.IP}); r.Status != doctor.Pass || !strings.Contains(r.Message, "turned on by banger") {
		t.Fatalf("CheckNATTable = %+v", r)
	}
	// EnsureBridge again (a daemon restart) keeps every VM's policy.
	if err := tp.m.EnsureBridge(ctx); err != nil {
		t.Fatal(err)
	}
	tp.expect(t, a, "", internetSvc, true, "198.18.0.1")
	tp.expect(t, a, "", hostSvcGW, false, "")

	// Clearing A removes its binding, NAT and LAN access, and nothing else.
	for range 2 {
		if err := tp.m.ClearVMNet(ctx, A); err != nil {
			t.Fatal(err)
		}
	}
	tp.expect(t, a, "", internetSvc, false, "")
	tp.expect(t, a, "", hostDNS, false, "")
	tp.expect(t, b, "", hostDNS, true, "172.30.0.3")
	if st := tp.inspect(t); !st.Intact() || len(st.VMs) != 0 {
		t.Fatalf("after clear: %+v", st)
	}
	if got := tp.ipForward(t); got != "1" {
		t.Fatalf("ip_forward = %s after clearing one VM, want it left on", got)
	}

	// Deleting the bridge turns forwarding back off: banger turned it on.
	if err := tp.m.ClearVMNet(ctx, B); err != nil {
		t.Fatal(err)
	}
	for _, tap := range []string{A.Tap, B.Tap} {
		tp.host.sh(t, "ip link del "+tap)
	}
	if err := tp.m.DeleteBridge(ctx); err != nil {
		t.Fatal(err)
	}
	if got := tp.ipForward(t); got != "0" {
		t.Fatalf("ip_forward = %s after DeleteBridge, want banger's change undone", got)
	}
	if out := tp.host.sh(t, "nft list tables"); strings.Contains(out, "banger") {
		t.Fatalf("tables left after DeleteBridge:\n%s", out)
	}
}

// TestForwardingLeftAloneWhenAlreadyOn: banger restores nothing it did not
// change.
func TestForwardingLeftAloneWhenAlreadyOn(t *testing.T) {
	integration(t, "nft", "sysctl")
	ns := newTestNS(t)
	ns.sh(t, "sysctl -q -w net.ipv4.ip_forward=1")
	m, err := NewManager(newNSOps(ns), Config{Bridge: testBridge, TapPrefix: testTapPrefix}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx := context.Background()
	if err := m.EnsureBridge(ctx); err != nil {
		t.Fatal(err)
	}
	ip := netip.MustParseAddr("172.30.0.2")
	v := VMNet{IP: ip, MAC: MACFor(ip), Tap: testTapPrefix + "z", NAT: true}
	if err := m.ApplyVMNet(ctx, v); err != nil {
		t.Fatal(err)
	}
	if out := ns.sh(t, "nft list table ip banger"); strings.Contains(out, privops.ForwardingMark) {
		t.Fatalf("banger recorded turning on forwarding that was already on:\n%s", out)
	}
	if err := m.DeleteBridge(ctx); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(ns.sh(t, "cat /proc/sys/net/ipv4/ip_forward")); got != "1" {
		t.Fatalf("ip_forward = %s after DeleteBridge, want the host's 1 kept", got)
	}
}
