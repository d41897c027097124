package daemon

import (
	"os"

	"github.com/bangerdev/banger/internal/agent"
)

// agentBinary finds the guest agent installed into VMs (beside this
// executable; see agent.FindBinary). Without one VMs still boot, but
// nothing that needs the agent works for them.
func (d *Daemon) agentBinary() string {
	exe, err := os.Executable()
	if err != nil {
		d.logger.Warn("guest agent disabled: cannot find the daemon's executable", "err", err)
		return ""
	}
	p, err := agent.FindBinary(exe)
	if err != nil {
		d.logger.Warn("guest agent disabled", "err", err)
		return ""
	}
	d.logger.Info("guest agent", "binary", p)
	return p
}
