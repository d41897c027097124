package vm

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/bangerdev/banger/internal/agent"
	"github.com/bangerdev/banger/internal/model"
)

// Guest clocks.
//
// A guest's wall clock starts from the VM's RTC (whole seconds, so up to a
// second behind), stops while the VM is paused or saved, and does not
// follow the host's NTP corrections; under TCG its rate is only as good as
// the TSC rate on its kernel command line. Nothing in the guest can reach
// a time server. So the daemon keeps it in step through the guest agent:
// SyncClock measures the guest's clock (a ping carries it) and steps it to
// the host's (ApplyIdentity with only Time set) when it is off by more than
// ClockTolerance. It runs after every boot (Start), should run after every
// snapshot restore, and KeepClocks runs it for every running VM
// periodically.

// ClockTolerance is the guest clock offset SyncClock leaves alone: the
// measurement's own uncertainty (half the ping's round trip) is a few
// milliseconds, and stepping a clock back is worse than a small error.
const ClockTolerance = 50 * time.Millisecond

// DefaultClockInterval is how often KeepClocks checks a running guest.
const DefaultClockInterval = time.Minute

// bootAgentWait bounds Start's wait for a new guest's agent (it starts
// before sshd, so it normally answers at once).
const bootAgentWait = 5 * time.Second

// ClockSync is the result of one SyncClock.
type ClockSync struct {
	Offset  time.Duration // guest wall clock minus the host's, before any step
	RTT     time.Duration // round trip of the measuring ping (the uncertainty is half)
	Stepped bool          // the guest clock was set to the host's
}

// SyncClock measures a running VM's guest wall clock against the host's and
// steps it to the host's when they differ by more than ClockTolerance. Use
// it wherever a guest's clock may have stopped or jumped: after a boot,
// after restoring a snapshot, after resuming a paused VM. Errors wrap
// ErrNoAgent (no agent channel) and model.ErrNotRunning.
func (m *Manager) SyncClock(ctx context.Context, vm *model.VM) (ClockSync, error) {
	c, err := m.Agent(vm)
	if err != nil {
		return ClockSync{}, err
	}
	return syncClock(ctx, c, m.o.Now)
}

// syncClock is SyncClock with the agent client and host clock given.
func syncClock(ctx context.Context, c agent.Client, now func() time.Time) (ClockSync, error) {
	t0 := now()
	h, err := c.Ping(ctx)
	t1 := now()
	if err != nil {
		return ClockSync{}, fmt.Errorf("read guest clock: %w", err)
	}
	if h.Time.IsZero() {
		return ClockSync{}, errors.New("read guest clock: the agent sent no time")
	}
	rtt := t1.Sub(t0)
	s := ClockSync{RTT: rtt, Offset: h.Time.Sub(t0.Add(rtt / 2))}
	if s.Offset.Abs() <= ClockTolerance {
		return s, nil
	}
	// The frame reaches the guest about half a round trip after it is sent.
	if _, err := c.ApplyIdentity(ctx, agent.Identity{Time: now().Add(rtt / 2)}); err != nil {
		return s, fmt.Errorf("set guest clock (off by %s): %w", s.Offset.Round(time.Millisecond), err)
	}
	s.Stepped = true
	return s, nil
}

// syncClockAtBoot sets a freshly booted guest's clock (best effort: a
// guest without an agent keeps its RTC time). Called with the VM running.
func (m *Manager) syncClockAtBoot(ctx context.Context, vm *model.VM) {
	if m.o.AgentBinary == "" {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, bootAgentWait)
	defer cancel()
	if _, err := m.WaitAgent(ctx, vm, 50*time.Millisecond); err != nil {
		m.o.Logger.WarnContext(ctx, "guest clock not set: no agent", "vm", vm.Name, "err", err)
		return
	}
	s, err := m.SyncClock(ctx, vm)
	if err != nil {
		m.o.Logger.WarnContext(ctx, "guest clock not set", "vm", vm.Name, "err", err)
		return
	}
	m.o.Logger.InfoContext(ctx, "guest clock", "vm", vm.Name, "offset", s.Offset.Round(time.Millisecond), "stepped", s.Stepped)
}

// KeepClocks runs SyncClock every interval (DefaultClockInterval when ≤ 0)
// for every running VM, until ctx ends. It takes no VM lock: it only talks
// to the guest, over the agent connection the VM's other callers share (a
// client it opens for a VM that is stopping meanwhile is harmless: it
// dials per session, and the VM's next start reuses it).
func (m *Manager) KeepClocks(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = DefaultClockInterval
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		m.syncClocks(ctx)
	}
}

// syncClocks is one pass of KeepClocks.
func (m *Manager) syncClocks(ctx context.Context) {
	vms, err := m.o.Store.ListVMs(ctx)
	if err != nil {
		m.o.Logger.WarnContext(ctx, "clock sync: list vms", "err", err)
		return
	}
	for _, vm := range vms {
		if vm.State != model.StateRunning || vm.Runtime.Paused {
			continue // a paused standby's clock is set when it is claimed
		}
		c, err := m.Agent(vm)
		if err != nil {
			continue // no agent channel: nothing to sync with
		}
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		s, err := syncClock(sctx, c, m.o.Now)
		cancel()
		switch {
		case err != nil:
			m.o.Logger.DebugContext(ctx, "clock sync", "vm", vm.Name, "err", err)
		case s.Stepped:
			m.o.Logger.InfoContext(ctx, "guest clock stepped", "vm", vm.Name, "offset", s.Offset.Round(time.Millisecond))
		}
	}
}
