package daemon

import (
	"context"
	"errors"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/rpc"
	"github.com/bangerdev/banger/internal/template"
	"github.com/bangerdev/banger/internal/vm"
)

// registerTemplates registers image.warm and image.templates (VM
// templates, see internal/vm/template.go and docs/templates.md).
func (d *Daemon) registerTemplates() {
	s := d.srv
	s.Handle(api.MethodImageTemplates, rpc.Typed(func(ctx context.Context, _ api.Empty) (*api.TemplateList, error) {
		out := &api.TemplateList{Templates: []api.TemplateInfo{}}
		tm, err := d.templates()
		if err != nil {
			return out, nil // no runtime: no templates
		}
		ts, err := tm.Store().List()
		if err != nil {
			return nil, err
		}
		vms, err := d.store.ListVMs(ctx)
		if err != nil {
			return nil, err
		}
		ready := map[string]int{}
		for _, vm := range vms {
			if d.standby.ready(vm) {
				ready[vm.Runtime.Template]++
			}
		}
		for _, t := range ts {
			out.Templates = append(out.Templates, api.TemplateInfo{Template: t, Standby: ready[t.ID]})
		}
		return out, nil
	}))
	s.Handle(api.MethodImageWarm, rpc.Typed(func(ctx context.Context, p api.ImageWarmParams) (*api.ImageWarmResult, error) {
		tm, err := d.templates()
		if err != nil {
			return nil, err
		}
		cp, err := d.resolveCreate(api.VMCreateParams{Image: p.Image, VCPU: p.VCPU, MemoryMiB: p.MemoryMiB})
		if err != nil {
			return nil, err
		}
		if p.Remove {
			n, err := tm.Store().RemoveImage(cp.Image)
			if err != nil {
				return nil, err
			}
			d.standby.poke() // standby VMs of removed templates go
			return &api.ImageWarmResult{Removed: n}, nil
		}
		ctx, op := d.ops.Begin(ctx, "image.warm", cp.Image)
		t, made, err := d.rt.mgr.WarmTemplate(ctx, &model.VM{Image: cp.Image, Kernel: cp.Kernel, Driver: d.cfg.VM.Driver,
			VCPU: cp.VCPU, MemoryMiB: cp.MemoryMiB, DiskSizeMiB: cp.DiskSizeMiB})
		op.End(err)
		if errors.Is(err, vm.ErrNoTemplate) {
			return nil, rpc.Errorf(rpc.CodeNotSupported, "%w", err)
		}
		if err != nil {
			return nil, err
		}
		// A warmed image is about to be used: keep a standby VM of the
		// shape a plain create of it has (the pool follows later creates).
		if d.standbySize() > 0 {
			d.standby.setWant(d.shapeOfParams(cp))
		}
		return &api.ImageWarmResult{Template: &t, Made: made}, nil
	}))
}

// templates returns the VM manager's template manager, or an RPC error
// saying why there is none.
func (d *Daemon) templates() (*template.Manager, error) {
	if d.rt.mgr == nil {
		return nil, rpc.Errorf(rpc.CodeNotSupported, "VM lifecycle unavailable: %s", d.rt.disabled)
	}
	tm := d.rt.mgr.Templates()
	if tm == nil {
		return nil, rpc.Errorf(rpc.CodeNotSupported, "VM templates are disabled in this daemon")
	}
	return tm, nil
}

// removeImageTemplates removes the templates of a deleted image.
func (d *Daemon) removeImageTemplates(name string) {
	tm, err := d.templates()
	if err != nil {
		return
	}
	defer d.standby.poke() // standby VMs of removed templates go
	if n, err := tm.Store().RemoveImage(name); err != nil {
		d.logger.Warn("remove the templates of a deleted image", "image", name, "err", err)
	} else if n > 0 {
		d.logger.Info("removed the templates of a deleted image", "image", name, "count", n)
	}
}
