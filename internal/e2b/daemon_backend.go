package e2b

import (
	"context"
	"fmt"
	"time"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/rpc"
)

// Caller is the part of rpc.Client DaemonBackend uses.
type Caller interface {
	Call(ctx context.Context, method string, params, result any, opts ...rpc.CallOption) error
}

// DaemonBackend is the Backend of `banger e2b serve`: the daemon's RPC
// API.
type DaemonBackend struct {
	Client Caller
}

// mapErr turns daemon error codes into this package's sentinels.
func mapErr(err error) error {
	switch rpc.CodeOf(err) {
	case "":
		return nil
	case rpc.CodeNotFound:
		return fmt.Errorf("%w: %v", ErrNotFound, err)
	case rpc.CodeUnauthorized:
		return fmt.Errorf("%w: %v", ErrUnauthorized, err)
	case rpc.CodeBadRequest:
		return fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	return err
}

func sandboxOf(r *api.E2BSandbox) *Sandbox {
	vm := r.VM
	s := &Sandbox{
		ID: vm.ID, Running: vm.State == model.StateRunning, IP: vm.IP, EnvdToken: r.EnvdToken,
		VCPU: vm.VCPU, MemoryMiB: vm.MemoryMiB, DiskMiB: vm.DiskSizeMiB, StartedAt: vm.CreatedAt,
	}
	if !vm.Runtime.StartedAt.IsZero() {
		s.StartedAt = vm.Runtime.StartedAt
	}
	if sb := vm.Sandbox; sb != nil {
		s.KeyID, s.Template, s.Metadata, s.EndAt = sb.KeyID, sb.Template, sb.Metadata, sb.EndAt
	}
	return s
}

// VerifyKey implements Backend.
func (b DaemonBackend) VerifyKey(ctx context.Context, secret string) (string, error) {
	var k model.APIKey
	if err := b.Client.Call(ctx, api.MethodE2BKeyVerify, api.E2BKeyVerifyParams{Secret: secret}, &k); err != nil {
		return "", mapErr(err)
	}
	return k.ID, nil
}

// Create implements Backend.
func (b DaemonBackend) Create(ctx context.Context, req CreateRequest) (*Sandbox, error) {
	var r api.E2BSandbox
	err := b.Client.Call(ctx, api.MethodE2BSandboxCreate, api.E2BSandboxCreateParams{
		KeyID: req.KeyID, Template: req.Template, Metadata: req.Metadata, Timeout: req.Timeout, NAT: req.Internet,
	}, &r)
	if err != nil {
		return nil, mapErr(err)
	}
	return sandboxOf(&r), nil
}

// Get implements Backend.
func (b DaemonBackend) Get(ctx context.Context, id string) (*Sandbox, error) {
	var r api.E2BSandbox
	if err := b.Client.Call(ctx, api.MethodE2BSandboxGet, api.Ref{Ref: id}, &r); err != nil {
		return nil, mapErr(err)
	}
	return sandboxOf(&r), nil
}

// List implements Backend.
func (b DaemonBackend) List(ctx context.Context) ([]*Sandbox, error) {
	var l api.VMList
	if err := b.Client.Call(ctx, api.MethodVMList, api.VMListParams{}, &l); err != nil {
		return nil, mapErr(err)
	}
	var out []*Sandbox
	for _, vm := range l.VMs {
		if vm.Sandbox != nil {
			out = append(out, sandboxOf(&api.E2BSandbox{VM: vm}))
		}
	}
	return out, nil
}

// Delete implements Backend.
func (b DaemonBackend) Delete(ctx context.Context, id string) error {
	return mapErr(b.Client.Call(ctx, api.MethodVMDelete, api.Ref{Ref: id}, nil))
}

// SetEnd implements Backend.
func (b DaemonBackend) SetEnd(ctx context.Context, id string, end time.Time) error {
	return mapErr(b.Client.Call(ctx, api.MethodE2BSandboxTimeout, api.E2BSandboxTimeoutParams{Ref: id, EndAt: end}, nil))
}
