package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/bangerdev/banger/internal/agent"
	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/e2b"
	"github.com/bangerdev/banger/internal/envd"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/rpc"
)

// E2B sandbox bookkeeping (docs/e2b.md): API keys, sandbox records on
// VMs, and the reaper deleting sandboxes past their end.

// MaxSandboxTimeout bounds a sandbox's lifetime from now.
const MaxSandboxTimeout = 24 * time.Hour

// reapInterval is how often expired sandboxes are looked for.
const reapInterval = time.Second

func (d *Daemon) registerE2B() {
	s := d.srv
	s.Handle(api.MethodE2BKeyCreate, rpc.Typed(func(ctx context.Context, p api.E2BKeyCreateParams) (*api.E2BKeyCreated, error) {
		secret, err := e2b.NewKey()
		if err != nil {
			return nil, err
		}
		id, err := e2b.NewKeyID()
		if err != nil {
			return nil, err
		}
		k := &model.APIKey{ID: id, Name: p.Name, CreatedAt: d.now()}
		if err := d.store.CreateAPIKey(ctx, k, e2b.HashKey(secret)); err != nil {
			return nil, err
		}
		return &api.E2BKeyCreated{Key: k, Secret: secret}, nil
	}))
	s.Handle(api.MethodE2BKeyList, rpc.Typed(func(ctx context.Context, _ api.Empty) (*api.E2BKeyList, error) {
		keys, err := d.store.ListAPIKeys(ctx)
		if err != nil {
			return nil, err
		}
		if keys == nil {
			keys = []*model.APIKey{}
		}
		return &api.E2BKeyList{Keys: keys}, nil
	}))
	s.Handle(api.MethodE2BKeyRevoke, rpc.Typed(func(ctx context.Context, p api.E2BKeyRef) (*model.APIKey, error) {
		k, err := d.store.RevokeAPIKey(ctx, p.ID)
		if errors.Is(err, model.ErrNotFound) {
			return nil, rpc.Errorf(rpc.CodeNotFound, "no API key with id %q (see `banger e2b key list`)", p.ID)
		}
		return k, err
	}))
	s.Handle(api.MethodE2BKeyVerify, rpc.Typed(func(ctx context.Context, p api.E2BKeyVerifyParams) (*model.APIKey, error) {
		if !e2b.ValidKeyFormat(p.Secret) {
			return nil, rpc.Errorf(rpc.CodeUnauthorized, "malformed API key")
		}
		k, err := d.store.APIKeyByHash(ctx, e2b.HashKey(p.Secret))
		if errors.Is(err, model.ErrNotFound) {
			return nil, rpc.Errorf(rpc.CodeUnauthorized, "unknown API key")
		}
		if err != nil {
			return nil, err
		}
		if k.RevokedAt != nil {
			return nil, rpc.Errorf(rpc.CodeUnauthorized, "API key %s was revoked", k.ID)
		}
		return k, nil
	}))
	d.handleVM(api.MethodE2BSandboxCreate, rpc.Typed(d.e2bCreate))
	s.Handle(api.MethodE2BSandboxGet, rpc.Typed(func(ctx context.Context, p api.Ref) (*api.E2BSandbox, error) {
		vm, err := d.sandboxVM(ctx, p.Ref)
		if err != nil {
			return nil, err
		}
		return d.sandboxResult(vm)
	}))
	s.Handle(api.MethodE2BSandboxTimeout, rpc.Typed(func(ctx context.Context, p api.E2BSandboxTimeoutParams) (*model.VM, error) {
		if p.EndAt.After(d.now().Add(MaxSandboxTimeout)) {
			return nil, rpc.Errorf(rpc.CodeBadRequest, "a sandbox lives at most %s", MaxSandboxTimeout)
		}
		if _, err := d.sandboxVM(ctx, p.Ref); err != nil {
			return nil, err
		}
		return d.withVM(ctx, p.Ref, func(vm *model.VM) (*model.VM, error) {
			if vm.Sandbox == nil {
				return nil, rpc.Errorf(rpc.CodeNotFound, "VM %s is not a sandbox", vm.Name)
			}
			vm.Sandbox.EndAt = p.EndAt
			return vm, d.store.UpdateVM(ctx, vm)
		})
	}))
}

// sandboxVM returns the sandbox VM with exactly this id.
func (d *Daemon) sandboxVM(ctx context.Context, id string) (*model.VM, error) {
	vm, err := d.store.GetVM(ctx, id)
	if err != nil || vm.Sandbox == nil {
		return nil, rpc.Errorf(rpc.CodeNotFound, "no sandbox with id %q", id)
	}
	return vm, nil
}

// sandboxResult adds the envd access token (derived from the agent
// token, which the daemon keeps in the VM's state directory).
func (d *Daemon) sandboxResult(vm *model.VM) (*api.E2BSandbox, error) {
	data, err := os.ReadFile(filepath.Join(d.layout.VMDir(vm.ID), "agent.token"))
	if errors.Is(err, os.ErrNotExist) {
		return &api.E2BSandbox{VM: vm}, nil // never started: no envd to reach
	}
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: read agent token: %w", vm.ID, err)
	}
	t, err := agent.ParseToken(data)
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", vm.ID, err)
	}
	return &api.E2BSandbox{VM: vm, EnvdToken: envd.AccessToken(t)}, nil
}

func (d *Daemon) e2bCreate(ctx context.Context, p api.E2BSandboxCreateParams) (*api.E2BSandbox, error) {
	if p.KeyID == "" {
		return nil, rpc.Errorf(rpc.CodeBadRequest, "no API key id")
	}
	if p.Timeout <= 0 || p.Timeout > MaxSandboxTimeout {
		return nil, rpc.Errorf(rpc.CodeBadRequest, "timeout %s: give a duration up to %s", p.Timeout, MaxSandboxTimeout)
	}
	img := p.Template
	if img == "" || img == e2b.BaseTemplate {
		img = d.cfg.VM.Image
	} else if _, err := d.images.Get(ctx, img); err != nil {
		if errors.Is(err, model.ErrNotFound) {
			return nil, rpc.Errorf(rpc.CodeNotFound, "template %q not found: templates are banger images (see `banger image list`); %q is the default image", p.Template, e2b.BaseTemplate)
		}
		return nil, err
	}
	tmpl := p.Template
	if tmpl == "" {
		tmpl = e2b.BaseTemplate
	}
	sb := &model.Sandbox{KeyID: p.KeyID, Template: tmpl, Metadata: p.Metadata, EndAt: d.now().Add(p.Timeout)}
	vm, err := d.createVM(ctx, api.VMCreateParams{Image: img, NAT: p.NAT}, sb)
	if err != nil {
		if vm != nil {
			d.deleteSandbox(context.WithoutCancel(ctx), vm.ID)
		}
		return nil, err
	}
	// The timeout counts from when the sandbox is usable.
	vm, err = d.withVM(ctx, vm.ID, func(cur *model.VM) (*model.VM, error) {
		cur.Sandbox.EndAt = d.now().Add(p.Timeout)
		return cur, d.store.UpdateVM(ctx, cur)
	})
	if err != nil {
		return nil, err
	}
	return d.sandboxResult(vm)
}

// deleteSandbox deletes a sandbox VM, logging failures.
func (d *Daemon) deleteSandbox(ctx context.Context, id string) {
	_, err := d.withVM(ctx, id, func(vm *model.VM) (*model.VM, error) {
		if vm.Sandbox == nil {
			return vm, nil
		}
		return vm, d.deleteLocked(ctx, vm)
	})
	if err != nil && !errors.Is(err, model.ErrNotFound) {
		d.logger.Warn("delete sandbox", "id", id, "err", err)
	}
}

// reapSandboxes deletes every running or stopped sandbox past its end.
func (d *Daemon) reapSandboxes(ctx context.Context) {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return
	}
	now := d.now()
	for _, vm := range vms {
		if vm.Sandbox == nil || vm.Sandbox.EndAt.IsZero() || now.Before(vm.Sandbox.EndAt) {
			continue
		}
		if vm.State == model.StateStarting || vm.State == model.StateStopping {
			continue
		}
		d.logger.Info("sandbox timed out: deleting its VM", "id", vm.ID, "name", vm.Name, "end", vm.Sandbox.EndAt)
		d.deleteSandbox(ctx, vm.ID)
		if _, err := d.refreshSSHConfig(ctx); err != nil {
			d.logger.Warn("refresh ssh config", "err", err)
		}
	}
}

// runSandboxReaper runs reapSandboxes until ctx ends.
func (d *Daemon) runSandboxReaper(ctx context.Context) {
	t := time.NewTicker(reapInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			d.reapSandboxes(ctx)
		}
	}
}
