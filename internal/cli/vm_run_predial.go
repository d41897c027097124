package cli

import (
	"context"
	"net"
	"sync"
	"time"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/guest"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/progress"
	"github.com/bangerdev/banger/internal/rpc"
)

// callWithStagesHook is callWithStages that also passes every progress
// event to hook (after rendering it).
func (a *app) callWithStagesHook(ctx context.Context, method string, params, result any, hook func(progress.Event)) error {
	c, err := a.daemon(ctx)
	if err != nil {
		return err
	}
	r := newStageRenderer(a.env.Stderr)
	err = c.Call(ctx, method, params, result, rpc.WithEvents(func(e progress.Event) {
		r.Event(e)
		if hook != nil {
			hook(e)
		}
	}))
	r.Close(err != nil)
	return err
}

// predial opens the CLI's own ssh connection to a VM while the daemon is
// still waiting for its ssh, so `vm run -- CMD` does not pay a second
// handshake (about a second of guest crypto under emulation) after the VM
// is up. It starts when vm.create reports its "ssh" stage: the record then
// holds the address and the host key is pinned.
type predial struct {
	once   sync.Once
	cancel context.CancelFunc
	done   chan struct{}
	client *guest.Client
}

// hook returns the progress hook that starts the dial for VM name.
func (p *predial) hook(a *app, ctx context.Context, name string) func(progress.Event) {
	return func(e progress.Event) {
		if e.Stage != "ssh" {
			return
		}
		p.once.Do(func() {
			dctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
			p.cancel, p.done = cancel, make(chan struct{})
			go func() {
				defer close(p.done)
				p.client = a.dialWhenOpen(dctx, name)
			}()
		})
	}
}

// take returns the early connection, waiting up to limit for it; nil when
// there is none (the caller then dials itself).
func (p *predial) take(limit time.Duration) *guest.Client {
	if p.done == nil {
		return nil
	}
	select {
	case <-p.done:
	case <-time.After(limit):
		p.cancel()
		<-p.done
	}
	c := p.client
	p.client = nil
	if c != nil {
		select {
		case <-c.Done():
			return nil
		default:
		}
	}
	return c
}

// close drops the early connection if it was not taken.
func (p *predial) close() {
	if p.done == nil {
		return
	}
	p.cancel()
	<-p.done
	if p.client != nil {
		_ = p.client.Close()
		p.client = nil
	}
}

// dialWhenOpen probes the VM's ssh port every 100 ms and handshakes once it
// accepts, until ctx ends. nil when it never succeeded.
func (a *app) dialWhenOpen(ctx context.Context, name string) *guest.Client {
	var vm model.VM
	if err := a.call(ctx, api.MethodVMShow, api.Ref{Ref: name}, &vm); err != nil || vm.IP == "" {
		return nil
	}
	vm.State = model.StateRunning // dialVM's check: the VMM is up
	addr := net.JoinHostPort(vm.IP, "22")
	for ctx.Err() == nil {
		var d net.Dialer
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		conn, err := d.DialContext(pctx, "tcp", addr)
		cancel()
		if err == nil {
			conn.Close()
			if c, err := a.dialVM(ctx, &vm); err == nil {
				return c
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}
