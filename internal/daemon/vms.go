package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/rpc"
)

// newVMID returns a random 16-hex-digit VM id.
func newVMID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// resolveCreate fills defaults from the configuration and validates the
// request. It does not touch the store.
func (d *Daemon) resolveCreate(p api.VMCreateParams) (api.VMCreateParams, error) {
	cfg := d.cfg.VM
	if p.Image == "" {
		p.Image = cfg.Image
	}
	if p.Kernel == "" {
		p.Kernel = cfg.Kernel
	}
	if p.VCPU == 0 {
		p.VCPU = cfg.VCPU
	}
	if p.MemoryMiB == 0 {
		p.MemoryMiB = cfg.MemoryMiB
	}
	if p.DiskSizeMiB == 0 {
		p.DiskSizeMiB = cfg.DiskSizeMiB
	}
	switch {
	case p.VCPU < 0 || p.VCPU > model.MaxVCPU:
		return p, rpc.Errorf(rpc.CodeBadRequest, "%w", model.ValidateVCPU(p.VCPU))
	case p.MemoryMiB < 0:
		return p, rpc.Errorf(rpc.CodeBadRequest, "memory must be positive, got %d MiB", p.MemoryMiB)
	case p.MemoryMiB < model.MinMemoryMiB:
		return p, rpc.Errorf(rpc.CodeBadRequest, "%w", model.ValidateMemoryMiB(p.MemoryMiB))
	case p.DiskSizeMiB < 0:
		return p, rpc.Errorf(rpc.CodeBadRequest, "disk size must be positive, got %d MiB", p.DiskSizeMiB)
	case p.DiskSizeMiB < model.MinDiskMiB:
		return p, rpc.Errorf(rpc.CodeBadRequest, "%w", model.ValidateDiskMiB(p.DiskSizeMiB))
	case p.AllowLAN && !p.NAT:
		return p, rpc.Errorf(rpc.CodeBadRequest, "--allow-lan widens what a --nat VM may reach: add --nat (a VM without NAT never leaves the bridge)")
	}
	if err := model.ValidatePortForwards(p.Ports); err != nil {
		return p, rpc.Errorf(rpc.CodeBadRequest, "%w", err)
	}
	if p.Name != "" {
		if err := model.ValidateName(p.Name); err != nil {
			return p, rpc.Errorf(rpc.CodeBadRequest, "%w", err)
		}
	}
	return p, nil
}

// createRecord reserves the name and writes the VM record in state
// "stopped" (its disks are made by start).
func (d *Daemon) createRecord(ctx context.Context, p api.VMCreateParams, sb *model.Sandbox) (*model.VM, error) {
	return d.createRecordWith(ctx, p, sb, nil)
}

// createRecordWith is createRecord; mark, if set, amends the record before
// it is written.
func (d *Daemon) createRecordWith(ctx context.Context, p api.VMCreateParams, sb *model.Sandbox, mark func(*model.VM)) (*model.VM, error) {
	p, err := d.resolveCreate(p)
	if err != nil {
		return nil, err
	}
	if p.Name == "" {
		if p.Name, err = d.freeName(ctx); err != nil {
			return nil, err
		}
	}
	unlock, err := d.locks.Lock(ctx, "name:"+p.Name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	now := d.now()
	vm := &model.VM{
		ID:          newVMID(),
		Name:        p.Name,
		State:       model.StateStopped,
		Image:       p.Image,
		Kernel:      p.Kernel,
		Driver:      d.cfg.VM.Driver,
		VCPU:        p.VCPU,
		MemoryMiB:   p.MemoryMiB,
		DiskSizeMiB: p.DiskSizeMiB,
		NAT:         p.NAT,
		AllowLAN:    p.AllowLAN,
		Ports:       p.Ports,
		Sandbox:     sb,
		CreatedAt:   now,
		UpdatedAt:   now,
	}
	vm.Runtime.Cold = p.Cold || !d.cfg.VM.Templates
	if mark != nil {
		mark(vm)
	}
	if err := d.store.CreateVM(ctx, vm); err != nil {
		if errors.Is(err, model.ErrAlreadyExists) {
			return nil, rpc.Errorf(rpc.CodeAlreadyExists, "a VM named %q already exists (pick another --name, or `banger vm delete %s`)", p.Name, p.Name)
		}
		return nil, fmt.Errorf("record vm %s: %w", p.Name, err)
	}
	return vm, nil
}

func (d *Daemon) vmCreate(ctx context.Context, p api.VMCreateParams) (*model.VM, error) {
	return d.createVM(ctx, p, nil)
}

// createVM records a VM (an E2B sandbox when sb is set) and starts it
// unless p.NoStart.
func (d *Daemon) createVM(ctx context.Context, p api.VMCreateParams, sb *model.Sandbox) (*model.VM, error) {
	ctx, op := d.ops.Begin(ctx, "vm.create", p.Name)
	if d.lifecycle != nil && d.standbyFor(p) {
		if vm, ok := d.claimStandby(ctx, p, sb); ok {
			op.End(nil)
			return vm, nil
		}
	}
	vm, err := d.createRecord(ctx, p, sb)
	if err == nil && !p.NoStart {
		if d.lifecycle == nil {
			err = rpc.Errorf(rpc.CodeOperationFailed, "VM %s was recorded but cannot be started: the VM runtime is unavailable (%s); see `banger doctor`, or create with --no-start", vm.Name, d.rt.disabled)
		} else {
			// The record is visible from here on: hold its lock while it
			// starts, like every other lifecycle call (lock order: the
			// name lock was released by createRecord).
			var unlock func()
			if unlock, err = d.locks.Lock(ctx, "vm:"+vm.ID); err == nil {
				vm, err = d.lifecycle.Start(ctx, vm)
				unlock()
			}
			if err == nil {
				d.noteCreated(vm, p)
			}
		}
	}
	op.End(err)
	return vm, err
}

func (d *Daemon) vmList(ctx context.Context, p api.VMListParams) (*api.VMList, error) {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	out := &api.VMList{VMs: []*model.VM{}}
	for _, vm := range vms {
		if vm.Runtime.Standby && !p.Standby || p.RunningOnly && vm.State != model.StateRunning {
			continue
		}
		out.VMs = append(out.VMs, vm)
	}
	return out, nil
}

func (d *Daemon) resolveRef(ctx context.Context, ref string) (*model.VM, error) {
	if ref == "" {
		return nil, rpc.Errorf(rpc.CodeBadRequest, "no VM given: name a VM by name, id or id prefix (see `banger vm list`)")
	}
	vm, err := d.store.ResolveVM(ctx, ref)
	if err != nil {
		if errors.Is(err, model.ErrNotFound) {
			return nil, rpc.Errorf(rpc.CodeNotFound, "no VM matches %q (see `banger vm list`)", ref)
		}
		return nil, rpc.Errorf(rpc.CodeBadRequest, "%w", err)
	}
	if vm.Runtime.Standby {
		// Restored ahead of need: not the user's until a create claims it.
		return nil, rpc.Errorf(rpc.CodeNotFound, "no VM matches %q (see `banger vm list`)", ref)
	}
	return vm, nil
}

func (d *Daemon) vmShow(ctx context.Context, p api.Ref) (*model.VM, error) {
	return d.resolveRef(ctx, p.Ref)
}

// withVM resolves ref and runs fn holding the VM's lock, re-reading the
// record under the lock.
func (d *Daemon) withVM(ctx context.Context, ref string, fn func(vm *model.VM) (*model.VM, error)) (*model.VM, error) {
	vm, err := d.resolveRef(ctx, ref)
	if err != nil {
		return nil, err
	}
	unlock, err := d.locks.Lock(ctx, "vm:"+vm.ID)
	if err != nil {
		return nil, err
	}
	defer unlock()
	vm, err = d.store.GetVM(ctx, vm.ID)
	if err != nil {
		if errors.Is(err, model.ErrNotFound) {
			return nil, rpc.Errorf(rpc.CodeNotFound, "VM %q was deleted meanwhile", ref)
		}
		return nil, err
	}
	return fn(vm)
}

func (d *Daemon) vmDelete(ctx context.Context, p api.Ref) (*model.VM, error) {
	return d.withVM(ctx, p.Ref, func(vm *model.VM) (*model.VM, error) {
		return vm, d.deleteLocked(ctx, vm)
	})
}

// deleteLocked removes a VM and everything it owns. The caller holds the
// VM's lock.
func (d *Daemon) deleteLocked(ctx context.Context, vm *model.VM) error {
	if d.lifecycle != nil {
		if err := d.lifecycle.Destroy(ctx, vm); err != nil {
			return err
		}
	} else if vm.State == model.StateRunning {
		return rpc.Errorf(rpc.CodeOperationFailed, "VM %s is running; stop it first", vm.Name)
	}
	if err := d.store.DeleteVM(ctx, vm.ID); err != nil && !errors.Is(err, model.ErrNotFound) {
		return fmt.Errorf("delete record of %s: %w", vm.Name, err)
	}
	return nil
}

func (d *Daemon) vmPrune(ctx context.Context, p api.VMPruneParams) (*api.VMPruneResult, error) {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	res := &api.VMPruneResult{Deleted: []string{}, Failed: map[string]string{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, vm := range vms {
		if vm.Runtime.Standby || vm.State == model.StateRunning || vm.State == model.StateStarting || vm.State == model.StateStopping {
			continue
		}
		if p.DryRun {
			res.Deleted = append(res.Deleted, vm.Name)
			continue
		}
		wg.Add(1)
		go func(vm *model.VM) {
			defer wg.Done()
			_, err := d.withVM(ctx, vm.ID, func(cur *model.VM) (*model.VM, error) {
				if cur.State == model.StateRunning || cur.State == model.StateStarting || cur.State == model.StateStopping {
					return cur, nil // started meanwhile: keep it
				}
				return cur, d.deleteLocked(ctx, cur)
			})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				res.Failed[vm.Name] = err.Error()
			} else {
				res.Deleted = append(res.Deleted, vm.Name)
			}
		}(vm)
	}
	wg.Wait()
	return res, nil
}
