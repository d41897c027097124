package vm

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/bangerdev/banger/internal/agent"
	"github.com/bangerdev/banger/internal/disk"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/progress"
	"github.com/bangerdev/banger/internal/vmm"
)

// hasTransient reports whether vm's runtime records resources that only
// exist while a VMM may run (pid, tap, NAT, runtime dir, attached loops).
func hasTransient(vm *model.VM) bool {
	rt := vm.Runtime
	return rt.PID > 0 || rt.Tap != "" || rt.NATActive || rt.RuntimeDir != "" || len(rt.Loops) > 0 && rt.CoW == string(disk.DM)
}

// vmmHandles returns the VM's VMM processes that are verifiably alive: the
// one found by the driver through the pidfile in the runtime dir, and the
// recorded pid when its evidence (comm + command-line marker) still
// matches. A recycled pid matches neither and is never returned.
func (m *Manager) vmmHandles(ctx context.Context, vm *model.VM) (vmm.Driver, []*vmm.Handle, error) {
	d, err := m.driver(vm)
	if err != nil {
		return nil, nil, err
	}
	var out []*vmm.Handle
	if h, err := d.Find(ctx, m.spec(vm, nil, nil)); err == nil {
		out = append(out, h)
	} else if !errors.Is(err, model.ErrNotRunning) {
		m.o.Logger.WarnContext(ctx, "find vmm", "vm", vm.Name, "err", err)
	}
	if h := recordedHandle(vm); h != nil && h.Marker != "" && vmm.Alive(h.Identity()) {
		if len(out) == 0 || out[0].PID != h.PID {
			out = append(out, h)
		}
	}
	return d, out, nil
}

// waitGone waits up to limit for every handle's process to exit.
func (m *Manager) waitGone(ctx context.Context, d vmm.Driver, hs []*vmm.Handle, limit time.Duration) bool {
	wctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	for _, h := range hs {
		if err := d.Wait(wctx, h); err != nil {
			return false
		}
	}
	return true
}

// releaseVMM makes sure the VM's VMM is gone (SIGKILL after re-verifying
// its identity), runs the driver's cleanup (jailer chroot) and clears the
// process fields of the runtime.
func (m *Manager) releaseVMM(ctx context.Context, vm *model.VM) error {
	d, hs, err := m.vmmHandles(ctx, vm)
	if err != nil {
		return err
	}
	for _, h := range hs {
		if err := d.Kill(ctx, h, syscall.SIGKILL); err != nil {
			return fmt.Errorf("kill VMM pid %d: %w", h.PID, err)
		}
	}
	if !m.waitGone(ctx, d, hs, m.o.KillWait) {
		return fmt.Errorf("VMM of %s still running %s after SIGKILL", vm.Name, m.o.KillWait)
	}
	if c, ok := d.(interface {
		Cleanup(context.Context, vmm.Spec) error
	}); ok {
		if err := c.Cleanup(ctx, m.spec(vm, nil, nil)); err != nil {
			return fmt.Errorf("vmm cleanup: %w", err)
		}
	}
	rt := &vm.Runtime
	rt.PID, rt.PIDFile, rt.APISocket, rt.Accel, rt.Chroot, rt.Comm, rt.Marker = 0, "", "", "", "", "", ""
	rt.StartedAt = time.Time{}
	return m.save(ctx, vm)
}

// detachRoot releases the live devices of a device-mapper root disk
// (snapshot, loops) and keeps its files; other strategies have nothing
// attached.
func (m *Manager) detachRoot(ctx context.Context, vm *model.VM) error {
	h, err := decodeHandle(vm.Runtime.DiskHandle)
	if err != nil || h == nil || h.Strategy != disk.DM {
		return err
	}
	cow, err := m.cowFor(h)
	if err != nil {
		return err
	}
	// The disk strategy owns the teardown: it detaches only loops that
	// are still backed by this disk's files (after a reboot a recorded
	// /dev/loopN may be anybody's).
	dt, ok := cow.(interface {
		Detach(context.Context, *disk.Handle) error
	})
	if !ok {
		return fmt.Errorf("disk strategy %s cannot release its devices", h.Strategy)
	}
	if err := dt.Detach(ctx, h); err != nil {
		return err
	}
	h.Loops = nil
	setHandle(vm, h)
	return m.save(ctx, vm)
}

// teardown releases everything a running VM holds besides its disks and
// lease: VMM, NAT, tap, DNS record, attached disk devices, runtime dir and
// ssh connection. It runs every step even when one fails and joins the
// errors; fields of released resources are cleared in the record, those of
// resources it could not release are kept for a later attempt.
func (m *Manager) teardown(ctx context.Context, vm *model.VM) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
	defer cancel()
	vmmGone := false
	err := m.runAll(ctx, OpTeardown, vm, []step{
		{name: StepRelease, do: func(ctx context.Context, _ *undoStack) error {
			err := m.releaseVMM(ctx, vm)
			vmmGone = err == nil
			return err
		}},
		{name: StepUnPorts, do: func(ctx context.Context, _ *undoStack) error {
			if m.o.Forwards != nil {
				m.o.Forwards.Remove(vm.ID)
			}
			return nil
		}},
		{name: StepUnNAT, do: func(ctx context.Context, _ *undoStack) error {
			if !vm.Runtime.NATActive {
				return nil
			}
			ip, err := netip.ParseAddr(vm.IP)
			if err != nil {
				return fmt.Errorf("network policy recorded without a valid address %q", vm.IP)
			}
			if vm.Runtime.Tap == "" {
				// Recorded before the tap: nothing was bound.
				vm.Runtime.NATActive = false
				return m.save(ctx, vm)
			}
			if err := m.o.Network.ClearVMNet(ctx, vmNet(vm, ip)); err != nil {
				return err
			}
			vm.Runtime.NATActive = false
			return m.save(ctx, vm)
		}},
		{name: StepUntap, do: func(ctx context.Context, _ *undoStack) error {
			if vm.Runtime.Tap == "" {
				return nil
			}
			if !vmmGone {
				return errors.New("kept: the VMM may still hold it")
			}
			if err := m.o.Network.ReleaseTap(ctx, vm.Runtime.Tap); err != nil {
				return err
			}
			vm.Runtime.Tap = ""
			return m.save(ctx, vm)
		}},
		{name: StepUnDNS, do: func(ctx context.Context, _ *undoStack) error {
			if m.o.DNS != nil {
				m.o.DNS.Remove(vm.Name)
			}
			return nil
		}},
		{name: StepDetach, do: func(ctx context.Context, _ *undoStack) error {
			if !vmmGone {
				return errors.New("kept: the VMM may still use it")
			}
			return m.detachRoot(ctx, vm)
		}},
		{name: StepRunDir, do: func(ctx context.Context, _ *undoStack) error {
			if !vmmGone {
				return errors.New("kept: it holds the pidfile of a VMM that may still run")
			}
			dir := vm.Runtime.RuntimeDir
			if dir == "" {
				dir = m.o.Layout.VMRuntimeDir(vm.ID)
			}
			if err := os.RemoveAll(dir); err != nil {
				return err
			}
			if vm.Runtime.RuntimeDir == "" {
				return nil
			}
			vm.Runtime.RuntimeDir = ""
			return m.save(ctx, vm)
		}},
	})
	m.dropConn(vm.ID)
	if err != nil {
		return fmt.Errorf("teardown of %s: %w", vm.Name, err)
	}
	return nil
}

// poweroffCommand syncs, then powers the guest off in the background so the
// ssh session returns before the guest goes away (an ssh session to a guest
// that powers off under it would hang until keep-alives fail).
const poweroffCommand = `sync; (sleep 0.3; if [ -x /usr/lib/banger/poweroff ]; then exec /usr/lib/banger/poweroff; fi; ` +
	`exec systemctl poweroff || exec poweroff) </dev/null >/dev/null 2>&1 &`

// shutdownGuest asks the guest to sync and power off over ssh. It returns
// false when ssh is unreachable or the request failed.
func (m *Manager) shutdownGuest(ctx context.Context, vm *model.VM) bool {
	if vm.IP == "" {
		return false
	}
	c := m.cachedConn(vm.ID)
	if c == nil {
		var err error
		c, err = m.o.Guests.Dial(ctx, sshAddr(vm), m.aliases(vm), 10*time.Second)
		if err != nil {
			m.o.Logger.InfoContext(ctx, "stop: ssh unreachable, killing the VMM", "vm", vm.Name, "err", err)
			return false
		}
	}
	defer m.dropConn(vm.ID)
	defer c.Close()
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	status, err := c.Run(sctx, poweroffCommand, nil, nil, nil)
	if err != nil || status != 0 {
		m.o.Logger.WarnContext(ctx, "stop: poweroff over ssh failed, killing the VMM", "vm", vm.Name, "status", status, "err", err)
		return false
	}
	return true
}

// StopOptions tune StopWith.
type StopOptions struct {
	// Graceful, when > 0, asks the guest's init to shut down (systemd
	// stops every service in order) and waits up to this long before the
	// VMM is killed. Zero is the fast stop.
	Graceful time.Duration
}

// FastStopGrace bounds the wait for the VMM to exit after a fast stop: the
// guest resets itself a moment after the agent answered.
const FastStopGrace = 3 * time.Second

// Stop is StopWith and the fast stop.
func (m *Manager) Stop(ctx context.Context, vm *model.VM) (*model.VM, error) {
	return m.StopWith(ctx, vm, StopOptions{})
}

// StopWith stops a running VM. The fast stop (the default) has the guest
// agent sync, remount read-only and reset (agent.Client.Halt; the VMM gets
// FastStopGrace to exit); a graceful stop
// (o.Graceful), a guest without an agent, or one whose agent does not
// answer get `sync` and a detached poweroff over ssh and up to o.Graceful
// (or the manager's stop grace) to exit. A VMM still running after that is
// killed with a warning (at once when neither channel answers; never
// Ctrl-Alt-Del); then every teardown step runs. Disks and lease are kept.
// Stopping a VM that is not running returns an error wrapping
// model.ErrNotRunning, unless the record holds leftovers of a failed run,
// which are released.
func (m *Manager) StopWith(ctx context.Context, vm *model.VM, o StopOptions) (*model.VM, error) {
	if vm.State != model.StateRunning && vm.State != model.StateStopping && !hasTransient(vm) {
		return vm, fmt.Errorf("VM %s is %s: %w", vm.Name, vm.State, model.ErrNotRunning)
	}
	vm.State, vm.Runtime.Step = model.StateStopping, StepShutdown
	if err := m.save(ctx, vm); err != nil {
		return vm, err
	}
	if o.Graceful > 0 {
		progress.Stage(ctx, StepShutdown, fmt.Sprintf("graceful poweroff (up to %s)", o.Graceful))
	} else {
		progress.Stage(ctx, StepShutdown, "sync, read-only, reset")
	}
	if h := m.o.StepHook; h != nil {
		if err := h(ctx, vm.ID, OpStop, StepShutdown); err != nil {
			return m.finishStop(ctx, vm, err)
		}
	}
	d, hs, err := m.vmmHandles(ctx, vm)
	if err != nil {
		return m.finishStop(ctx, vm, err)
	}
	if len(hs) > 0 {
		m.haltGuest(ctx, vm, d, hs, o)
	}
	progress.Stage(ctx, "teardown", "releasing VMM, NAT, tap, DNS and disk devices")
	return m.finishStop(ctx, vm, nil)
}

// haltGuest gets the guest to stop its VMM: the fast stop through the agent
// unless a graceful one is asked for or the agent does not answer, else a
// poweroff over ssh, else SIGTERM. The teardown kills whatever still runs.
func (m *Manager) haltGuest(ctx context.Context, vm *model.VM, d vmm.Driver, hs []*vmm.Handle, o StopOptions) {
	if o.Graceful <= 0 {
		switch m.fastStop(ctx, vm) {
		case fastStopDone:
			if !m.waitGone(ctx, d, hs, FastStopGrace) {
				m.o.Logger.WarnContext(ctx, "stop: guest did not reset after syncing; killing the VMM (its filesystems were synced and read-only)", "vm", vm.Name, "grace", FastStopGrace)
			}
			return
		case fastStopMaybe:
			// The agent went away mid-request: most likely the reset.
			if m.waitGone(ctx, d, hs, FastStopGrace) {
				return
			}
		}
	}
	grace := m.o.StopGrace
	if o.Graceful > 0 {
		grace = o.Graceful
	}
	if m.shutdownGuest(ctx, vm) {
		if !m.waitGone(ctx, d, hs, grace) {
			m.o.Logger.WarnContext(ctx, "stop: guest did not power off in time; killing the VMM", "vm", vm.Name, "grace", grace)
		}
		return
	}
	for _, h := range hs {
		_ = d.Kill(ctx, h, syscall.SIGTERM)
	}
	m.waitGone(ctx, d, hs, 5*time.Second)
}

type fastStopResult int

const (
	fastStopUnavailable fastStopResult = iota // no agent, or it did not answer a ping
	fastStopDone                              // synced, read-only, reset on its way
	fastStopMaybe                             // the request was sent, the answer lost
)

// fastStop runs fastStopScript through the VM's agent.
func (m *Manager) fastStop(ctx context.Context, vm *model.VM) fastStopResult {
	if m.o.AgentBinary == "" {
		return fastStopUnavailable
	}
	// Not m.Agent: the VM is already recorded as stopping.
	c, err := m.agents.get(vm.ID, func() (agent.Client, error) { return m.newAgentClient(vm) })
	if err != nil {
		return fastStopUnavailable
	}
	// Generous, and more than one try: a first ping to a guest busy
	// writing its disks back (right after a sync, say) was seen to go
	// unanswered for over 2 s under TCG; a later frame gets through.
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	for {
		pctx, pcancel := context.WithTimeout(wctx, 1500*time.Millisecond)
		_, err = c.Ping(pctx)
		pcancel()
		// No socket or a broken channel (ErrUnavailable) and a refused
		// token will not heal in a few seconds.
		if err == nil || wctx.Err() != nil || errors.Is(err, agent.ErrUnavailable) || agent.IsCode(err, agent.CodeUnauthorized) {
			break
		}
	}
	cancel()
	if err != nil {
		m.o.Logger.InfoContext(ctx, "stop: agent not answering; poweroff over ssh", "vm", vm.Name, "err", err)
		return fastStopUnavailable
	}
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err = c.Halt(hctx)
	switch {
	case errors.Is(err, agent.ErrUnavailable):
		m.o.Logger.InfoContext(ctx, "stop: agent went away during the fast stop", "vm", vm.Name, "err", err)
		return fastStopMaybe
	case err != nil:
		m.o.Logger.WarnContext(ctx, "stop: fast stop failed in the guest; poweroff over ssh", "vm", vm.Name, "err", err)
		return fastStopUnavailable
	}
	return fastStopDone
}

// finishStop runs the teardown and records the outcome.
func (m *Manager) finishStop(ctx context.Context, vm *model.VM, cause error) (*model.VM, error) {
	err := errors.Join(cause, m.teardown(ctx, vm))
	vm.Runtime.Step = ""
	if err != nil {
		vm.State, vm.Error = model.StateError, errorText(err)
	} else {
		vm.State, vm.Error = model.StateStopped, ""
	}
	if serr := m.save(ctx, vm); serr != nil {
		err = errors.Join(err, serr)
	}
	return vm, err
}

// terminating lists the signals after which kill waits for the VMM to exit
// and tears the VM down.
var terminating = map[syscall.Signal]bool{
	syscall.SIGKILL: true, syscall.SIGTERM: true, syscall.SIGINT: true,
	syscall.SIGQUIT: true, syscall.SIGHUP: true, syscall.SIGABRT: true,
}

// Kill sends sig to the VM's VMM (after re-verifying its identity). For
// terminating signals (KILL, TERM, INT, QUIT, HUP, ABRT) it waits for the
// VMM to exit and runs the teardown, leaving the VM stopped; other signals
// are only delivered. A VM without a VMM gives an error wrapping
// model.ErrNotRunning (its leftovers, if any, are released).
func (m *Manager) Kill(ctx context.Context, vm *model.VM, sig syscall.Signal) (*model.VM, error) {
	d, hs, err := m.vmmHandles(ctx, vm)
	if err != nil {
		return vm, err
	}
	if len(hs) == 0 {
		if vm.State == model.StateRunning || vm.State == model.StateStopping || hasTransient(vm) {
			// The VMM is already gone: record that.
			if _, err := m.finishStop(ctx, vm, nil); err != nil {
				return vm, err
			}
		}
		return vm, fmt.Errorf("VM %s has no running VMM: %w", vm.Name, model.ErrNotRunning)
	}
	for _, h := range hs {
		if err := d.Kill(ctx, h, sig); err != nil {
			return vm, fmt.Errorf("signal %v to VMM pid %d: %w", sig, h.PID, err)
		}
	}
	if !terminating[sig] {
		return vm, nil
	}
	if !m.waitGone(ctx, d, hs, m.o.KillWait) {
		return vm, fmt.Errorf("the VMM of %s is still running %s after %v: try `banger vm kill --signal KILL %s`", vm.Name, m.o.KillWait, sig, vm.Name)
	}
	vm.State = model.StateStopping
	return m.finishStop(ctx, vm, nil)
}

// Restart stops a running VM (as Stop) and starts it again (as Start); a VM
// that is not running is just started.
func (m *Manager) Restart(ctx context.Context, vm *model.VM) (*model.VM, error) {
	if vm.State == model.StateRunning || vm.State == model.StateStopping || hasTransient(vm) {
		var err error
		if vm, err = m.Stop(ctx, vm); err != nil {
			return vm, err
		}
	}
	return m.Start(ctx, vm)
}

// Destroy releases everything the VM owns so its record can be deleted: it
// kills a running VMM at once (no graceful stop: the disks are going away),
// runs the teardown, removes the root and work disks, the VM's directories,
// its known_hosts entries and its lease. Every step runs even when one
// fails; on failure the VM is left in state "error" with the reason and the
// joined error is returned (the caller keeps the record, so delete can be
// retried).
func (m *Manager) Destroy(ctx context.Context, vm *model.VM) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
	defer cancel()
	var errs []error
	if err := m.teardown(ctx, vm); err != nil {
		errs = append(errs, err)
	}
	err := m.runAll(ctx, OpDestroy, vm, []step{
		{name: StepRemove, do: func(ctx context.Context, _ *undoStack) error {
			return m.removeDisks(ctx, vm)
		}},
		{name: StepForgetKey, do: func(ctx context.Context, _ *undoStack) error {
			hosts := m.aliases(vm)
			if vm.IP != "" {
				hosts = append(hosts, vm.IP)
			}
			return m.o.Guests.Forget(hosts...)
		}},
		{name: StepUnlease, do: func(ctx context.Context, _ *undoStack) error {
			return m.o.Store.ReleaseLease(ctx, vm.ID)
		}},
	})
	if err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		vm.State, vm.Error = model.StateError, "delete failed: "+errorText(err)
		_ = m.save(ctx, vm)
		return fmt.Errorf("delete %s: %w", vm.Name, err)
	}
	return nil
}

// removeDisks removes the VM's root disk, its work disk and, when both are
// gone, its directory, clearing the runtime fields of what it removed. Every
// step that can run does; the errors are joined.
func (m *Manager) removeDisks(ctx context.Context, vm *model.VM) error {
	var errs []error
	if h, err := decodeHandle(vm.Runtime.DiskHandle); err != nil {
		errs = append(errs, err)
	} else if h != nil {
		cow, err := m.cowFor(h)
		if err == nil {
			err = cow.Remove(ctx, h)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("root disk: %w", err))
		} else {
			setHandle(vm, nil)
		}
	}
	dir := m.o.Layout.VMDir(vm.ID)
	if err := removeWorkDisk(filepath.Join(dir, workDiskFile)); err != nil {
		errs = append(errs, fmt.Errorf("work disk: %w", err))
	} else {
		vm.Runtime.WorkDisk = ""
	}
	if len(errs) == 0 {
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, err)
		}
		vm.Runtime.LogPath = ""
	}
	return errors.Join(errs...)
}
