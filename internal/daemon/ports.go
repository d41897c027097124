package daemon

import (
	"context"
	"time"

	"github.com/bangerdev/banger/internal/agent"
	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/portfwd"
	"github.com/bangerdev/banger/internal/rpc"
	"github.com/bangerdev/banger/internal/vm"
)

// registerPorts registers vm.ports.
func (d *Daemon) registerPorts() {
	d.srv.Handle(api.MethodVMPorts, rpc.Typed(d.vmPorts))
}

// vmPorts lists what a running guest listens on, asked from the guest (its
// agent; `ss` over the daemon's ssh connection for a guest without one),
// with the VM's forwards from the host.
func (d *Daemon) vmPorts(ctx context.Context, p api.Ref) (*api.VMPorts, error) {
	out := &api.VMPorts{Listening: []api.GuestPort{}, Forwards: []model.PortForward{}}
	_, err := d.lifecycleOp(ctx, "", p.Ref, func(ctx context.Context, m *vm.Manager, v *model.VM) (*model.VM, error) {
		out.VM = v.Name
		out.Forwards = append(out.Forwards, v.Ports...)
		if v.State != model.StateRunning {
			return v, rpc.Errorf(rpc.CodeNotRunning, "VM %s is %s: the guest can only be asked while it runs (banger vm start %s)", v.Name, v.State, v.Name)
		}
		ps, err := d.guestListening(ctx, m, v)
		if err != nil {
			return v, err
		}
		for _, g := range ps {
			out.Listening = append(out.Listening, api.GuestPort{Proto: g.Proto, Address: g.Address, Port: g.Port, PID: g.PID, Process: g.Process})
		}
		return v, nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// guestListening asks the guest agent, and falls back to ssh when the VM
// has no agent or it does not answer.
func (d *Daemon) guestListening(ctx context.Context, m *vm.Manager, v *model.VM) ([]agent.Port, error) {
	if c, err := m.Agent(v); err == nil {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		ps, err := portfwd.AgentLister{Client: c}.Listening(actx)
		cancel()
		if err == nil {
			return ps, nil
		}
		d.logger.DebugContext(ctx, "vm ports: agent did not answer; asking over ssh", "vm", v.Name, "err", err)
	}
	conn, err := m.Conn(ctx, v)
	if err != nil {
		return nil, err
	}
	return portfwd.SSHLister{Conn: conn}.Listening(ctx)
}
