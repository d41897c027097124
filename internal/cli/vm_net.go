package cli

import (
	"fmt"
	"net/netip"
	"strings"

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

func (a *app) vmPortsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ports VM",
		Short: "List what a VM's guest listens on, and its forwards from the host",
		Long: `List the sockets the guest listens on (TCP listening, UDP bound), asked
from the guest itself: protocol, address, port and process. Ports
forwarded from the host (vm create/run -p) are shown next to the guest
port they reach; a forward whose guest port nothing listens on is listed
as such. The VM must be running.`,
		Example: `  banger vm ports dev
  banger vm ports --json dev | jq '.listening[] | select(.port == 8080)'`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var res api.VMPorts
			if err := a.call(cmd.Context(), api.MethodVMPorts, api.Ref{Ref: args[0]}, &res); err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.env.Stdout, res)
			}
			printPorts(a, &res)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}

func printPorts(a *app, res *api.VMPorts) {
	from := map[int][]string{}
	for _, f := range res.Forwards {
		from[f.GuestPort] = append(from[f.GuestPort], f.HostAddrPort())
	}
	t := newTable(a.env.Stdout, "PROTO", "ADDRESS", "PORT", "PROCESS", "FORWARDED FROM")
	served := map[int]bool{}
	for _, p := range res.Listening {
		proc := "-"
		if p.Process != "" {
			proc = fmt.Sprintf("%s (%d)", p.Process, p.PID)
		}
		fwd := "-"
		if strings.HasPrefix(p.Proto, "tcp") && len(from[p.Port]) > 0 && !isLoopback(p.Address) {
			fwd = strings.Join(from[p.Port], ", ")
			served[p.Port] = true
		}
		t.row(p.Proto, p.Address, fmt.Sprint(p.Port), proc, fwd)
	}
	t.flush()
	for _, f := range res.Forwards {
		if !served[f.GuestPort] {
			fmt.Fprintf(a.env.Stdout, "note: %s forwards to guest port %d, where nothing listens on a non-loopback address yet\n", f.HostAddrPort(), f.GuestPort)
		}
	}
}

func isLoopback(addr string) bool {
	a, err := netip.ParseAddr(addr)
	return err == nil && a.IsLoopback()
}
