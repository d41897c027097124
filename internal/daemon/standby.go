package daemon

// The standby pool: VMs restored from a template ahead of need (see
// internal/vm/standby.go). After a create restored a template, the daemon
// keeps vm.standby VMs of that create's shape under placeholder names,
// identity applied, warmed up and paused; the next create of the same shape
// claims one (a rename) instead of waiting for a restore, and the pool
// makes a new one in the background. One shape is kept: the last one a
// create used. Standby VMs are hidden from every user-facing listing and
// reference; they are dropped when their template is no longer current,
// when their image or kernel is deleted, and when the configuration turns
// the pool off, and when the daemon stops (nothing else could claim them).

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/progress"
)

// StandbyVMs is what the pool needs beyond Lifecycle (*vm.Manager).
type StandbyVMs interface {
	// Claim renames the running standby vm to name and unmarks it (the
	// caller holds its lock); on error the caller destroys it.
	Claim(ctx context.Context, vm *model.VM, name string) (*model.VM, error)
	// WarmStandby runs the guest warm-up in a fresh standby (best effort).
	WarmStandby(ctx context.Context, vm *model.VM)
	// PauseStandby stops a ready standby's vCPUs until its claim.
	PauseStandby(ctx context.Context, vm *model.VM) error
	// StandbyCurrent reports whether vm's template is still its key's.
	StandbyCurrent(ctx context.Context, vm *model.VM) bool
	// DefaultDriver is the driver "auto" resolves to.
	DefaultDriver() string
}

// standbyShape is what a create must ask for to claim a standby VM.
type standbyShape struct {
	Image, Kernel, Driver  string
	VCPU                   int
	MemoryMiB, DiskSizeMiB int64
	NAT, AllowLAN          bool
}

// standbyRetry is how long the pool waits after a failed attempt to make
// a standby before it tries again (a create also wakes it).
const standbyRetry = time.Minute

// claimLockWait is how long a create waits for a busy standby's lock.
const claimLockWait = 100 * time.Millisecond

// A standby is made when no call has been in flight for standbyQuiet (so
// the restore does not compete with the command of the VM that just
// claimed one), or after standbyMaxWait regardless (a follow-mode call may
// never end).
const (
	standbyQuiet   = 300 * time.Millisecond
	standbyMaxWait = 30 * time.Second
)

// waitQuiet waits until the daemon has been idle for standbyQuiet, at
// most standbyMaxWait, or ctx ends.
func (d *Daemon) waitQuiet(ctx context.Context) {
	if d.srv == nil {
		return
	}
	deadline := d.now().Add(standbyMaxWait)
	for d.now().Before(deadline) {
		idle := d.srv.Idle()
		if idle >= standbyQuiet {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(max(standbyQuiet-idle, 20*time.Millisecond)):
		}
	}
}

// standbyPool is the pool's state; its loop (runStandby) is the only
// maker and dropper of standby VMs besides claims and vmsUsing.
type standbyPool struct {
	mu      sync.Mutex
	want    *standbyShape   // the shape to keep ready (nil: none yet)
	warming map[string]bool // ids of standbys being made or warmed up
	wake    chan struct{}
	vms     StandbyVMs
}

func newStandbyPool() *standbyPool {
	return &standbyPool{wake: make(chan struct{}, 1), warming: map[string]bool{}}
}

// ready reports whether the standby vm is ready to be claimed: running
// and not being made or warmed up.
func (p *standbyPool) ready(vm *model.VM) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return vm.Runtime.Standby && vm.State == model.StateRunning && !p.warming[vm.ID]
}

// setWarming marks (or unmarks) id as being made.
func (p *standbyPool) setWarming(id string, on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if on {
		p.warming[id] = true
	} else {
		delete(p.warming, id)
	}
}

// poke wakes the pool's loop (never blocks).
func (p *standbyPool) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// wanted returns the shape to keep ready.
func (p *standbyPool) wanted() (standbyShape, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.want == nil {
		return standbyShape{}, false
	}
	return *p.want, true
}

// setWant makes s the shape to keep ready and wakes the loop.
func (p *standbyPool) setWant(s standbyShape) {
	p.keep(&s)
	p.poke()
}

// keep makes s (nil: none) the shape to keep ready, without a wake-up.
func (p *standbyPool) keep(s *standbyShape) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.want = s
}

// standbySize is how many standby VMs to keep (0 when templates are off).
func (d *Daemon) standbySize() int {
	if d.cfg == nil || !d.cfg.VM.Templates || d.standby.vms == nil {
		return 0
	}
	return d.cfg.VM.Standby
}

// shape returns the standby shape of a VM record.
func (d *Daemon) shape(vm *model.VM) standbyShape {
	drv := vm.Driver
	if (drv == "" || drv == "auto") && d.standby.vms != nil {
		drv = d.standby.vms.DefaultDriver()
	}
	return standbyShape{Image: vm.Image, Kernel: vm.Kernel, Driver: drv, VCPU: vm.VCPU, MemoryMiB: vm.MemoryMiB,
		DiskSizeMiB: vm.DiskSizeMiB, NAT: vm.NAT, AllowLAN: vm.NAT && vm.AllowLAN}
}

// shapeOfParams is the shape of a create with resolved params p.
func (d *Daemon) shapeOfParams(p api.VMCreateParams) standbyShape {
	return d.shape(&model.VM{Image: p.Image, Kernel: p.Kernel, Driver: d.cfg.VM.Driver, VCPU: p.VCPU, MemoryMiB: p.MemoryMiB,
		DiskSizeMiB: p.DiskSizeMiB, NAT: p.NAT, AllowLAN: p.AllowLAN})
}

// standbyFor reports whether a create with params p may claim a standby
// (E2B sandboxes claim like any create; the claim records the sandbox).
func (d *Daemon) standbyFor(p api.VMCreateParams) bool {
	return d.standbySize() > 0 && !p.NoStart && !p.Cold && !p.NoStandby && len(p.Ports) == 0
}

// noteCreated records the shape of a VM a plain create just restored from
// a template (with or without --no-standby): the pool keeps that shape
// ready from now on.
func (d *Daemon) noteCreated(vm *model.VM, p api.VMCreateParams) {
	p.NoStandby = false
	if vm == nil || vm.Runtime.Template == "" || !d.standbyFor(p) {
		return
	}
	d.standby.setWant(d.shape(vm))
}

// claimStandby hands a ready standby VM of p's shape to the create (of an
// E2B sandbox when sb is set), or returns ok=false (the create then runs
// as usual). A standby that fails to be claimed is destroyed.
func (d *Daemon) claimStandby(ctx context.Context, p api.VMCreateParams, sb *model.Sandbox) (*model.VM, bool) {
	rp, err := d.resolveCreate(p)
	if err != nil {
		return nil, false // the usual path reports it
	}
	want := d.shapeOfParams(rp)
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return nil, false
	}
	for _, cand := range vms {
		if !d.standby.ready(cand) || d.shape(cand) != want {
			continue
		}
		vm, ok := d.claimOne(ctx, cand.ID, rp, sb)
		if ok {
			d.standby.setWant(want) // and refill
			return vm, true
		}
	}
	return nil, false
}

// claimOne claims the standby id for the create rp, under the VM's lock.
func (d *Daemon) claimOne(ctx context.Context, id string, rp api.VMCreateParams, sb *model.Sandbox) (*model.VM, bool) {
	// A standby is locked while it is made or warmed up: restore instead
	// of waiting for it.
	lctx, cancel := context.WithTimeout(ctx, claimLockWait)
	unlock, err := d.locks.Lock(lctx, "vm:"+id)
	cancel()
	if err != nil {
		return nil, false
	}
	defer unlock()
	vm, err := d.store.GetVM(ctx, id)
	if err != nil || !vm.Runtime.Standby || vm.State != model.StateRunning {
		return nil, false // claimed or dropped meanwhile
	}
	if !d.standby.vms.StandbyCurrent(ctx, vm) {
		d.standby.poke() // the loop drops it
		return nil, false
	}
	name := rp.Name
	if name == "" {
		if name, err = d.freeName(ctx); err != nil {
			return nil, false
		}
	}
	unlockName, err := d.locks.Lock(ctx, "name:"+name)
	if err != nil {
		return nil, false
	}
	defer unlockName()
	if _, err := d.store.GetVMByName(ctx, name); !errors.Is(err, model.ErrNotFound) {
		return nil, false // taken: the usual path says so
	}
	progress.Stage(ctx, "standby", "claiming a VM restored ahead of need")
	vm.Sandbox = sb // saved by the claim
	claimed, err := d.standby.vms.Claim(ctx, vm, name)
	if err != nil {
		d.logger.WarnContext(ctx, "claim standby failed; restoring instead", "standby", id, "err", err)
		if derr := d.deleteLocked(context.WithoutCancel(ctx), vm); derr != nil {
			d.logger.ErrorContext(ctx, "drop standby", "id", id, "err", derr)
		}
		return nil, false
	}
	return claimed, true
}

// freeName picks a generated name no VM has.
func (d *Daemon) freeName(ctx context.Context) (string, error) {
	existing, err := d.store.ListVMs(ctx)
	if err != nil {
		return "", err
	}
	taken := map[string]bool{}
	for _, vm := range existing {
		taken[vm.Name] = true
	}
	return model.GenerateName(func(n string) bool { return taken[n] }), nil
}

// runStandby keeps the pool filled until ctx ends: on every wake (and
// once at start) it drops what must go and makes what is missing.
func (d *Daemon) runStandby(ctx context.Context) {
	retry := time.NewTimer(0)
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.standby.wake:
		case <-retry.C:
		}
		if err := d.fillStandby(ctx); err != nil && ctx.Err() == nil {
			d.logger.WarnContext(ctx, "standby VM", "err", err)
			retry.Reset(standbyRetry)
		}
	}
}

// fillStandby drops standby VMs that are not running, not of the wanted
// shape, not of a current template or beyond the configured count, then
// makes new ones up to the count.
func (d *Daemon) fillStandby(ctx context.Context) error {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return err
	}
	n := d.standbySize()
	want, ok := d.standby.wanted()
	if !ok && n > 0 {
		// After a restart: keep the shape of a running standby.
		for _, vm := range vms {
			if vm.Runtime.Standby && vm.State == model.StateRunning {
				want, ok = d.shape(vm), true
				d.standby.keep(&want)
				break
			}
		}
	}
	kept := 0
	for _, vm := range vms {
		if !vm.Runtime.Standby {
			continue
		}
		if ok && kept < n && vm.State == model.StateRunning && d.shape(vm) == want && d.standby.vms.StandbyCurrent(ctx, vm) {
			kept++
			continue
		}
		d.dropStandby(ctx, vm.ID)
	}
	for ; ok && kept < n; kept++ {
		if ctx.Err() != nil {
			return nil
		}
		d.waitQuiet(ctx)
		if err := d.makeStandby(ctx, want); err != nil {
			// Forget the shape until a create uses one again: its image
			// may be gone, or it may not restore.
			d.standby.keep(nil)
			return err
		}
		if cur, _ := d.standby.wanted(); cur != want {
			return d.fillStandby(ctx) // the wanted shape changed meanwhile
		}
	}
	return nil
}

// dropStandby destroys the standby id unless a create claimed it.
func (d *Daemon) dropStandby(ctx context.Context, id string) {
	unlock, err := d.locks.Lock(ctx, "vm:"+id)
	if err != nil {
		return
	}
	defer unlock()
	vm, err := d.store.GetVM(ctx, id)
	if err != nil || !vm.Runtime.Standby {
		return
	}
	if err := d.deleteLocked(context.WithoutCancel(ctx), vm); err != nil {
		d.logger.ErrorContext(ctx, "drop standby", "vm", vm.Name, "err", err)
		return
	}
	d.logger.InfoContext(ctx, "standby dropped", "vm", vm.Name, "id", id)
}

// makeStandby restores one standby VM of shape s and warms it up.
func (d *Daemon) makeStandby(ctx context.Context, s standbyShape) error {
	var b [4]byte
	_, _ = rand.Read(b[:])
	p := api.VMCreateParams{Name: "standby-" + hex.EncodeToString(b[:]), Image: s.Image, Kernel: s.Kernel, VCPU: s.VCPU,
		MemoryMiB: s.MemoryMiB, DiskSizeMiB: s.DiskSizeMiB, NAT: s.NAT, AllowLAN: s.AllowLAN}
	t0 := d.now()
	vm, err := d.createRecordWith(ctx, p, nil, func(vm *model.VM) {
		vm.Runtime.Standby = true
		vm.Driver = s.Driver
	})
	if err != nil {
		return fmt.Errorf("record: %w", err)
	}
	d.standby.setWarming(vm.ID, true)
	defer d.standby.setWarming(vm.ID, false)
	unlock, err := d.locks.Lock(ctx, "vm:"+vm.ID)
	if err != nil {
		return err
	}
	vm, err = d.lifecycle.Start(ctx, vm)
	if err == nil && vm.Runtime.Template == "" {
		err = errors.New("it did not restore a template (it cold-booted)")
	}
	if err != nil {
		if derr := d.deleteLocked(context.WithoutCancel(ctx), vm); derr != nil {
			err = errors.Join(err, derr)
		}
		unlock()
		return fmt.Errorf("make standby %s: %w", p.Name, err)
	}
	// Still under the lock: a create that comes now restores instead of
	// claiming a VM whose warm-up still runs.
	d.standby.vms.WarmStandby(ctx, vm)
	if err := d.standby.vms.PauseStandby(ctx, vm); err != nil {
		// It still works running; the claim resumes only what is paused.
		d.logger.WarnContext(ctx, "pause standby", "vm", vm.Name, "err", err)
	}
	unlock()
	d.logger.InfoContext(ctx, "standby ready", "vm", vm.Name, "id", vm.ID, "template", vm.Runtime.Template,
		"took", d.now().Sub(t0).Round(time.Millisecond))
	return nil
}

// dropStandbys destroys every standby VM: the daemon is stopping, and a
// standby nobody can claim would only hold memory until the next start.
func (d *Daemon) dropStandbys(ctx context.Context) {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return
	}
	for _, vm := range vms {
		if vm.Runtime.Standby {
			d.dropStandby(ctx, vm.ID)
		}
	}
}
