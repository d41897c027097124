package vm

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/bangerdev/banger/internal/agent"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/vmm"
)

// A standby VM is an ordinary VM, restored from its template and given its
// own identity (address, MAC, host key, machine-id, token, RNG seed) like
// any other, that the daemon makes ahead of need under a placeholder name
// and hides from users (model.Runtime.Standby). Claim hands it to a create:
// the VM takes the create's name, and the create returns without waiting
// for a restore. The daemon's pool (internal/daemon/standby.go) decides
// when to make and drop them.

// ErrNotStandby is returned by Claim for a VM that is not a running
// standby.
var ErrNotStandby = errors.New("not a running standby VM")

// claimTimeout bounds the guest side of a claim (a renamed hostname).
const claimTimeout = 10 * time.Second

// Claim turns the running standby vm into the VM name: the record is
// renamed and unmarked, the guest takes the hostname (and a fresh clock
// and RNG reseed), and known_hosts and DNS follow the name. The caller
// holds the VM's lock and has checked that name is free. On error the VM
// may be half renamed: the caller destroys it.
func (m *Manager) Claim(ctx context.Context, vm *model.VM, name string) (*model.VM, error) {
	if !vm.Runtime.Standby || vm.State != model.StateRunning {
		return vm, fmt.Errorf("claim %s: %w", vm.Name, ErrNotStandby)
	}
	if err := model.ValidateName(name); err != nil {
		return vm, err
	}
	t0 := m.o.Now()
	if vm.Runtime.Paused {
		if err := m.setPaused(ctx, vm, false); err != nil {
			return vm, fmt.Errorf("claim %s: %w", vm.Name, err)
		}
	}
	oldName, oldAliases := vm.Name, m.aliases(vm)
	vm.Name, vm.Runtime.Standby = name, false
	vm.CreatedAt = t0
	if err := m.save(ctx, vm); err != nil {
		return vm, fmt.Errorf("claim %s as %s: %w", oldName, name, err)
	}
	entropy := make([]byte, 64)
	if _, err := rand.Read(entropy); err != nil {
		return vm, fmt.Errorf("entropy: %w", err)
	}
	c, err := m.newAgentClient(vm)
	if err != nil {
		return vm, err
	}
	defer c.Close()
	cctx, cancel := context.WithTimeout(ctx, claimTimeout)
	defer cancel()
	res, err := c.ApplyIdentity(cctx, agent.Identity{Hostname: name, Domain: m.o.Domain, Time: m.o.Now(), Entropy: entropy})
	if err != nil {
		return vm, fmt.Errorf("claim %s as %s: rename the guest: %w", oldName, name, err)
	}
	if res.Hostname != name {
		return vm, fmt.Errorf("claim %s as %s: the guest reports hostname %q", oldName, name, res.Hostname)
	}
	signer, _, err := hostKey(m.o.Layout.VMDir(vm.ID))
	if err != nil {
		return vm, err
	}
	m.dropConn(vm.ID) // an ssh connection dialled under the old name
	if err := m.o.Guests.Forget(oldAliases...); err != nil {
		return vm, fmt.Errorf("claim %s as %s: %w", oldName, name, err)
	}
	if err := m.o.Guests.PinHostKey(append([]string{vm.IP}, m.aliases(vm)...), signer.PublicKey()); err != nil {
		return vm, fmt.Errorf("claim %s as %s: pin host key: %w", oldName, name, err)
	}
	if m.o.DNS != nil {
		m.o.DNS.Remove(oldName)
		if ip, err := netip.ParseAddr(vm.IP); err == nil {
			m.o.DNS.Set(name, ip)
		}
	}
	m.o.Logger.InfoContext(ctx, "standby claimed", "vm", name, "standby", oldName, "id", vm.ID, "template", vm.Runtime.Template,
		"clock_step", res.ClockStep, "took", m.o.Now().Sub(t0).Round(time.Millisecond))
	return vm, nil
}

// WarmStandby runs the template warm-up (warmGuest) in a standby VM: the
// programs and agent paths a `vm run` uses first are then translated by an
// emulating VMM and cached by the guest before a create claims the VM.
// Best effort.
func (m *Manager) WarmStandby(ctx context.Context, vm *model.VM) {
	c, err := m.newAgentClient(vm)
	if err != nil {
		return
	}
	defer c.Close()
	t0 := m.o.Now()
	warmGuest(ctx, c, m.o.Logger)
	m.o.Logger.DebugContext(ctx, "standby warmed", "vm", vm.Name, "took", m.o.Now().Sub(t0).Round(time.Millisecond))
}

// StandbyCurrent reports whether the template vm was restored from is
// still the template its key selects (an image, kernel or agent change
// since makes a new one: a standby of the old one must not be claimed).
func (m *Manager) StandbyCurrent(ctx context.Context, vm *model.VM) bool {
	if m.tmpl == nil || vm.Runtime.Template == "" {
		return false
	}
	key, err := m.TemplateKey(ctx, vm)
	if err != nil {
		return false
	}
	t, err := m.tmpl.Store().Get(key)
	return err == nil && t.ID == vm.Runtime.Template
}

// PauseStandby stops the vCPUs of a standby VM that is ready: an idle
// guest under emulation still costs a tenth of a core here. Claim resumes
// it (and sets its clock, which stood still meanwhile). Drivers without
// vmm.Pauser leave it running.
func (m *Manager) PauseStandby(ctx context.Context, vm *model.VM) error {
	if !vm.Runtime.Standby || vm.State != model.StateRunning || vm.Runtime.Paused {
		return nil
	}
	// The warm-up's agent session ends in the guest a moment after the
	// host hung up; paused before that, it would meet the claim's
	// connection.
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(agent.SerialEOFConfirm + 200*time.Millisecond):
	}
	return m.setPaused(ctx, vm, true)
}

// setPaused pauses or resumes vm's VMM and records it.
func (m *Manager) setPaused(ctx context.Context, vm *model.VM, pause bool) error {
	d, hs, err := m.vmmHandles(ctx, vm)
	if err != nil {
		return err
	}
	p, ok := d.(vmm.Pauser)
	if !ok || !d.Capabilities().Pause {
		return nil
	}
	if len(hs) == 0 {
		return fmt.Errorf("VM %s: its VMM is gone: %w", vm.Name, model.ErrNotRunning)
	}
	op, do := "resume", p.Resume
	if pause {
		op, do = "pause", p.Pause
	}
	if err := do(ctx, hs[0]); err != nil {
		return fmt.Errorf("%s VM %s: %w", op, vm.Name, err)
	}
	vm.Runtime.Paused = pause
	return m.save(ctx, vm)
}
