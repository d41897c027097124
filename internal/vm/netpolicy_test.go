package vm

import (
	"context"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/netw"
)

// Every VM gets a network policy (its tap bound to its address and MAC),
// with NAT and LAN access as recorded; forwards follow the VM's life.
func TestNetworkPolicyAndForwardsFollowTheVM(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	plain := r.newVM("plain", false)
	lan := r.newVM("lan", true)
	lan.AllowLAN = true
	lan.Ports = []model.PortForward{{HostAddr: "127.0.0.1", HostPort: 18080, GuestPort: 8080, Proto: "tcp"}}
	r.store.put(lan)
	// AllowLAN without NAT never opens the LAN.
	sneaky := r.newVM("sneaky", false)
	sneaky.AllowLAN = true
	r.store.put(sneaky)

	var err error
	for _, vm := range []*model.VM{plain, lan, sneaky} {
		if _, err = r.m.Start(ctx, vm); err != nil {
			t.Fatal(err)
		}
	}
	got := map[string]netw.VMNet{}
	for _, p := range r.net.policies {
		got[p.IP.String()] = p
	}
	check := func(name string, nat, allowLAN bool) {
		t.Helper()
		vm := r.get(map[string]string{"plain": plain.ID, "lan": lan.ID, "sneaky": sneaky.ID}[name])
		p, ok := got[vm.IP]
		if !ok || p.MAC != vm.MAC || p.Tap != vm.Runtime.Tap || p.Tap == "" || p.NAT != nat || p.AllowLAN != allowLAN || !vm.Runtime.NATActive {
			t.Errorf("%s: policy %+v (ok %v) for record %+v", name, p, ok, vm)
		}
	}
	check("plain", false, false)
	check("lan", true, true)
	check("sneaky", false, false)

	lanRec := r.get(lan.ID)
	if fw := r.fwds.get(lan.ID); !reflect.DeepEqual(fw, lan.Ports) || r.fwds.ip[lan.ID] != netip.MustParseAddr(lanRec.IP) {
		t.Fatalf("forwards %+v to %v", fw, r.fwds.ip[lan.ID])
	}
	if r.fwds.get(plain.ID) != nil {
		t.Fatal("a VM without ports got forwards")
	}

	// A daemon restart re-establishes the forwards of running VMs.
	r.fwds.byVM = map[string][]model.PortForward{}
	m2 := r.restart()
	if _, err := m2.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if fw := r.fwds.get(lan.ID); !reflect.DeepEqual(fw, lan.Ports) {
		t.Fatalf("forwards after restart: %+v", fw)
	}

	// Stop removes them and clears the policy.
	if _, err := m2.Stop(ctx, r.get(lan.ID)); err != nil {
		t.Fatal(err)
	}
	if fw := r.fwds.get(lan.ID); fw != nil {
		t.Fatalf("forwards after stop: %+v", fw)
	}
	if rec := r.get(lan.ID); rec.Runtime.NATActive {
		t.Fatalf("policy still recorded after stop: %+v", rec.Runtime)
	}

	// A forward that cannot be served fails the start and is undone.
	r.fwds.err = errors.New("listen tcp 127.0.0.1:18080: address already in use")
	_, err = m2.Start(ctx, r.get(lan.ID))
	if err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("start with a taken port: %v", err)
	}
	if rec := r.get(lan.ID); rec.State == model.StateRunning || rec.Runtime.NATActive || rec.Runtime.Tap != "" {
		t.Fatalf("failed start left %+v", rec)
	}
}
