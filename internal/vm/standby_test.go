package vm

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/bangerdev/banger/internal/model"
)

// TestClaimStandby: a standby VM restored from a template is paused once
// ready; a claim resumes it, renames the record, sends the guest the new
// hostname (with a clock and fresh entropy, nothing else of its identity),
// and moves known_hosts and DNS to the new name.
func TestClaimStandby(t *testing.T) {
	r, d := newTemplateRig(t)
	ctx := context.Background()
	sb := r.newVM("standby-0a0b0c0d", false)
	sb.Runtime.Standby = true
	sb, err := r.m.Start(ctx, sb)
	if err != nil {
		t.Fatal(err)
	}
	if sb.Runtime.Template == "" {
		t.Fatal("the standby did not restore a template")
	}
	if err := r.m.PauseStandby(ctx, sb); err != nil {
		t.Fatal(err)
	}
	pid := sb.Runtime.PID
	if !r.get(sb.ID).Runtime.Paused || !slices.Equal(d.pauses, []string{fmt.Sprintf("pause %d", pid)}) {
		t.Fatalf("after PauseStandby: paused=%v, driver calls %v", r.get(sb.ID).Runtime.Paused, d.pauses)
	}
	before := len(d.sys.identities())

	vm, err := r.m.Claim(ctx, r.get(sb.ID), "mine")
	if err != nil {
		t.Fatal(err)
	}
	got := r.get(sb.ID)
	if vm.Name != "mine" || got.Name != "mine" || got.Runtime.Standby || got.Runtime.Paused || got.State != model.StateRunning {
		t.Fatalf("claimed record: %+v", got.Runtime)
	}
	if !slices.Equal(d.pauses, []string{fmt.Sprintf("pause %d", pid), fmt.Sprintf("resume %d", pid)}) {
		t.Errorf("driver calls %v, want a pause and a resume", d.pauses)
	}
	ids := d.sys.identities()
	if len(ids) != before+1 {
		t.Fatalf("identities applied by the claim: %d", len(ids)-before)
	}
	id := ids[len(ids)-1]
	if id.Hostname != "mine" || id.Domain != "vm" || id.Time.IsZero() || len(id.Entropy) < 32 ||
		id.Address != "" || id.MAC != "" || len(id.HostKey) != 0 || id.Token != "" || id.MachineID != "" {
		t.Errorf("the claim's identity: %+v", id)
	}
	r.guests.mu.Lock()
	_, oldPinned := r.guests.pinned["standby-0a0b0c0d.vm"]
	_, newPinned := r.guests.pinned["mine.vm"]
	_, ipPinned := r.guests.pinned[sb.IP]
	r.guests.mu.Unlock()
	if oldPinned || !newPinned || !ipPinned {
		t.Errorf("known_hosts: old name %v, new name %v, address %v", oldPinned, newPinned, ipPinned)
	}
	if names := r.dns.names(); !slices.Contains(names, "mine") || slices.Contains(names, "standby-0a0b0c0d") {
		t.Errorf("DNS names: %v", names)
	}

	// Only a running standby can be claimed; a taken name is refused by
	// the store.
	if _, err := r.m.Claim(ctx, r.get(sb.ID), "again"); !errors.Is(err, ErrNotStandby) {
		t.Errorf("claiming a claimed VM: %v", err)
	}
	other := r.newVM("standby-1", false)
	other.Runtime.Standby = true
	if other, err = r.m.Start(ctx, other); err != nil {
		t.Fatal(err)
	}
	if _, err := r.m.Claim(ctx, other, "Bad_Name"); !errors.Is(err, model.ErrInvalidName) {
		t.Errorf("claim with an invalid name: %v", err)
	}
}
