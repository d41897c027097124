package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/model"
)

// netFlags are the network flags of vm create and vm run.
type netFlags struct {
	allowLAN bool
	publish  []string
}

func (n *netFlags) add(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.BoolVar(&n.allowLAN, "allow-lan", false, "with --nat, also let the VM reach private ranges (the host's LAN, CGNAT, link-local) and other --allow-lan VMs")
	fl.StringArrayVarP(&n.publish, "publish", "p", nil, "forward [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp] from the host (127.0.0.1 unless HOSTADDR is given) while the VM runs; repeatable")
}

// apply checks the flags and copies them into p.
func (n *netFlags) apply(p *api.VMCreateParams) error {
	if n.allowLAN && !p.NAT {
		return fmt.Errorf("--allow-lan widens what a --nat VM may reach: add --nat")
	}
	p.AllowLAN = n.allowLAN
	p.Ports = nil
	for _, spec := range n.publish {
		fwd, err := model.ParsePortForward(spec)
		if err != nil {
			return fmt.Errorf("-p/--publish: %w", err)
		}
		p.Ports = append(p.Ports, fwd)
	}
	if err := model.ValidatePortForwards(p.Ports); err != nil {
		return fmt.Errorf("-p/--publish: %w", err)
	}
	return nil
}

// networkSummary says in words what the VM may reach.
func networkSummary(vm *model.VM) string {
	switch {
	case vm.NAT && vm.AllowLAN:
		return "internet and LAN (--nat --allow-lan); host: DNS only"
	case vm.NAT:
		return "internet only (--nat): no LAN, private ranges, host services or other VMs"
	}
	return "isolated: the host's DNS only (no --nat)"
}
