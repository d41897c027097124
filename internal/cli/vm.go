package cli

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/model"
)

func (a *app) vmCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "vm",
		Short: "Create, run and manage VMs",
		Long: `Manage banger VMs. A VM is a named, persistent object: stop/start keeps
its /root disk, delete removes everything it owns.

VMs are referred to by name, id, or a unique id prefix.`,
		Example: `  banger vm create --name dev --nat
  banger vm list
  banger vm show dev
  banger vm delete dev other`,
	}
	cmd.AddCommand(append([]*cobra.Command{a.vmCreateCmd(), a.vmListCmd("list", false), a.vmListCmd("ps", true),
		a.vmShowCmd(), a.vmDeleteCmd(), a.vmPruneCmd()}, a.vmLifecycleCmds()...)...)
	cmd.AddCommand(a.vmWorkspaceCmds()...)
	return cmd
}

type sizeFlags struct {
	vcpu     int
	memory   string
	diskSize string
}

func (s *sizeFlags) add(cmd *cobra.Command) {
	cmd.Flags().IntVar(&s.vcpu, "vcpu", 0, "virtual CPUs (default from config: host CPUs/4, at most 4)")
	cmd.Flags().StringVar(&s.memory, "memory", "", "memory, e.g. 2G or 512M (default from config: host RAM/8, at most 8G)")
	cmd.Flags().StringVar(&s.diskSize, "disk-size", "", "size of the /root disk, e.g. 8G (default 8G)")
}

// apply validates the flags into p; errors name the flag.
func (s *sizeFlags) apply(cmd *cobra.Command, p *api.VMCreateParams) error {
	if cmd.Flags().Changed("vcpu") {
		if s.vcpu <= 0 || s.vcpu > model.MaxVCPU {
			return fmt.Errorf("--vcpu must be between 1 and %d, got %d", model.MaxVCPU, s.vcpu)
		}
		p.VCPU = s.vcpu
	}
	if cmd.Flags().Changed("memory") {
		n, err := model.ParseSizeMiB(s.memory)
		if err != nil {
			return fmt.Errorf("--memory: %w", err)
		}
		p.MemoryMiB = n
	}
	if cmd.Flags().Changed("disk-size") {
		n, err := model.ParseSizeMiB(s.diskSize)
		if err != nil {
			return fmt.Errorf("--disk-size: %w", err)
		}
		p.DiskSizeMiB = n
	}
	return nil
}

func (a *app) vmCreateCmd() *cobra.Command {
	var p api.VMCreateParams
	var sizes sizeFlags
	var netFl netFlags
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create a VM (and start it)",
		Long: `Create a VM: reserve its name and address, make its disks and start it.
Without --name a name is generated (adjective-noun). Names are DNS labels:
1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'; the VM
is reachable as <name>.vm.

A new VM is restored from its image's template (a booted guest saved with
its disks, made on first need or by ` + "`banger image warm`" + `) and then
given its own hostname, address, MAC, ssh host key, machine id, RNG seed and
clock: seconds instead of a full boot. --cold boots from scratch. A template
that fails to restore is discarded and the VM cold-boots (with a warning).`,
		Example: `  banger vm create                       # generated name, defaults
  banger vm create --name dev --nat      # with internet access (not the LAN)
  banger vm create --name dev --nat --allow-lan   # internet and the LAN
  banger vm create --name web -p 8080:80 # host 127.0.0.1:8080 -> guest port 80
  banger vm create --name big --vcpu 4 --memory 8G --disk-size 40G
  banger vm create --name later --no-start
  banger vm create --cold                # boot from scratch, not from the template`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if p.Name != "" {
				if err := model.ValidateName(p.Name); err != nil {
					return fmt.Errorf("--name: %w", err)
				}
			}
			if err := sizes.apply(cmd, &p); err != nil {
				return err
			}
			if err := netFl.apply(&p); err != nil {
				return err
			}
			var vm model.VM
			if err := a.callWithStages(cmd.Context(), api.MethodVMCreate, p, &vm); err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.env.Stdout, vm)
			}
			fmt.Fprintln(a.env.Stdout, vmLine(&vm))
			return nil
		},
	}
	cmd.Flags().StringVar(&p.Name, "name", "", "VM name (a DNS label; generated when omitted)")
	cmd.Flags().StringVar(&p.Image, "image", "", "root image (default from config: debian-bookworm)")
	cmd.Flags().StringVar(&p.Kernel, "kernel", "", "kernel (default from config: debian)")
	cmd.Flags().BoolVar(&p.NAT, "nat", false, "give the VM internet access through NAT")
	netFl.add(cmd)
	cmd.Flags().BoolVar(&p.NoStart, "no-start", false, "only create the VM record; start it later with `banger vm start`")
	cmd.Flags().BoolVar(&p.Cold, "cold", false, "boot from scratch instead of restoring the image's template")
	cmd.Flags().BoolVar(&p.NoStandby, "no-standby", false, "restore the template even when a standby VM is ready (see docs/templates.md)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the VM as JSON")
	sizes.add(cmd)
	return cmd
}

func (a *app) vmListCmd(use string, runningOnly bool) *cobra.Command {
	var asJSON, all bool
	short := "List VMs"
	long := "List all VMs with their state, address and size."
	if runningOnly {
		short = "List running VMs (use -a for all)"
		long = "List running VMs; with -a, all VMs (like `vm list`)."
	}
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Long:  long,
		Example: fmt.Sprintf(`  banger vm %s
  banger vm %s --json | jq -r '.[].name'`, use, use),
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var res api.VMList
			if err := a.call(cmd.Context(), api.MethodVMList, api.VMListParams{RunningOnly: runningOnly && !all}, &res); err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.env.Stdout, res.VMs)
			}
			if len(res.VMs) == 0 {
				fmt.Fprintln(a.env.Stderr, "no VMs (create one with `banger vm create` or `banger vm run`)")
				return nil
			}
			now := time.Now()
			sandboxes := false
			for _, vm := range res.VMs {
				sandboxes = sandboxes || vm.Sandbox != nil
			}
			headers := []string{"NAME", "STATE", "IP", "VCPU", "MEMORY", "DISK", "NAT", "IMAGE", "CREATED", "ID"}
			if sandboxes {
				headers = append(headers, "E2B SANDBOX")
			}
			t := newTable(a.env.Stdout, headers...)
			for _, vm := range res.VMs {
				nat := "-"
				if vm.NAT {
					nat = "yes"
				}
				cols := []string{vm.Name, string(vm.State), orDash(vm.IP), fmt.Sprint(vm.VCPU), model.FormatMiB(vm.MemoryMiB),
					model.FormatMiB(vm.DiskSizeMiB), nat, vm.Image, ago(now, vm.CreatedAt), shortID(vm.ID)}
				if sandboxes {
					cols = append(cols, sandboxColumn(now, vm.Sandbox))
				}
				t.row(cols...)
			}
			t.flush()
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	if runningOnly {
		cmd.Flags().BoolVarP(&all, "all", "a", false, "show all VMs, not only running ones")
	}
	return cmd
}

// sandboxColumn shows an E2B sandbox's key and remaining time.
func sandboxColumn(now time.Time, sb *model.Sandbox) string {
	if sb == nil {
		return "-"
	}
	left := sb.EndAt.Sub(now).Truncate(time.Second)
	if left < 0 {
		left = 0
	}
	return fmt.Sprintf("key %s, %s left", sb.KeyID, left)
}

func shortID(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

func (a *app) vmShowCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "show VM...",
		Short: "Show a VM's details",
		Long:  "Show everything banger knows about one or more VMs: settings, state, address and runtime resources.",
		Example: `  banger vm show dev
  banger vm show dev --json`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, refs []string) error {
			var vms []*model.VM
			for _, ref := range refs {
				var vm model.VM
				if err := a.call(cmd.Context(), api.MethodVMShow, api.Ref{Ref: ref}, &vm); err != nil {
					return err
				}
				vms = append(vms, &vm)
			}
			if asJSON {
				if len(vms) == 1 {
					return printJSON(a.env.Stdout, vms[0])
				}
				return printJSON(a.env.Stdout, vms)
			}
			for i, vm := range vms {
				if i > 0 {
					fmt.Fprintln(a.env.Stdout)
				}
				printVM(a, vm)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}

func printVM(a *app, vm *model.VM) {
	t := newTable(a.env.Stdout, "Name:", vm.Name)
	t.row("ID:", vm.ID)
	t.row("State:", string(vm.State))
	if vm.Error != "" {
		t.row("Error:", vm.Error)
	}
	t.row("Image:", vm.Image)
	t.row("Kernel:", vm.Kernel)
	t.row("Driver:", orDash(vm.Driver))
	t.row("vCPU:", fmt.Sprint(vm.VCPU))
	t.row("Memory:", model.FormatMiB(vm.MemoryMiB))
	t.row("Disk:", model.FormatMiB(vm.DiskSizeMiB))
	t.row("NAT:", fmt.Sprint(vm.NAT))
	t.row("Network:", networkSummary(vm))
	if len(vm.Ports) > 0 {
		var ps []string
		for _, p := range vm.Ports {
			ps = append(ps, p.String())
		}
		t.row("Ports:", strings.Join(ps, ", "))
	}
	t.row("IP:", orDash(vm.IP))
	if vm.IP != "" {
		t.row("DNS:", vm.Name+"."+model.DNSDomain)
	}
	t.row("Created:", vm.CreatedAt.Local().Format(time.RFC3339))
	if vm.Runtime.PID != 0 {
		t.row("VMM pid:", fmt.Sprint(vm.Runtime.PID))
	}
	if vm.Runtime.Accel != "" {
		t.row("Accel:", vm.Runtime.Accel)
	}
	if vm.Runtime.LogPath != "" {
		t.row("Log:", vm.Runtime.LogPath)
	}
	if vm.Workspace != nil {
		t.row("Workspace:", vm.Workspace.HostPath+" -> "+vm.Workspace.GuestPath)
	}
	t.flush()
}

// eachRef runs fn for every ref concurrently, prints one line per ref in the
// order given, continues past failures and returns exit status 1 if any
// failed.
func (a *app) eachRef(ctx context.Context, refs []string, fn func(ctx context.Context, ref string) (string, error)) error {
	type result struct {
		msg string
		err error
	}
	results := make([]result, len(refs))
	var wg sync.WaitGroup
	for i, ref := range refs {
		wg.Add(1)
		go func(i int, ref string) {
			defer wg.Done()
			msg, err := fn(ctx, ref)
			results[i] = result{msg, err}
		}(i, ref)
	}
	wg.Wait()
	failed := 0
	for i, r := range results {
		if r.err != nil {
			failed++
			a.printError(fmt.Errorf("%s: %w", refs[i], r.err))
			continue
		}
		fmt.Fprintln(a.env.Stdout, r.msg)
	}
	if failed > 0 {
		return silentExit(1)
	}
	return nil
}

func (a *app) vmDeleteCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "delete VM...",
		Aliases: []string{"rm"},
		Short:   "Delete VMs and everything they own",
		Long: `Delete one or more VMs: stop them if running, then remove their disks,
address lease, tap, DNS name and known_hosts entries. Several VMs are deleted
concurrently; the command continues past failures and exits 1 if any failed.`,
		Example: `  banger vm delete dev
  banger vm delete a1 a2 3f9c`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, refs []string) error {
			return a.eachRef(cmd.Context(), refs, func(ctx context.Context, ref string) (string, error) {
				var vm model.VM
				if err := a.call(ctx, api.MethodVMDelete, api.Ref{Ref: ref}, &vm); err != nil {
					return "", err
				}
				return fmt.Sprintf("%s deleted", vm.Name), nil
			})
		},
	}
	return cmd
}

func (a *app) vmPruneCmd() *cobra.Command {
	var force, dryRun bool
	cmd := &cobra.Command{
		Use:   "prune",
		Short: "Delete all VMs that are not running",
		Long: `Delete every VM that is not running (stopped or failed). Asks for
confirmation unless -f/--force is given; --dry-run only lists them.`,
		Example: `  banger vm prune --dry-run
  banger vm prune -f`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if !force && !dryRun {
				var res api.VMPruneResult
				if err := a.call(ctx, api.MethodVMPrune, api.VMPruneParams{DryRun: true}, &res); err != nil {
					return err
				}
				if len(res.Deleted) == 0 {
					fmt.Fprintln(a.env.Stdout, "nothing to prune")
					return nil
				}
				fmt.Fprintf(a.env.Stderr, "This deletes %d VM(s): %s\nContinue? [y/N] ", len(res.Deleted), strings.Join(res.Deleted, ", "))
				if !confirm(a.env.Stdin) {
					return fmt.Errorf("aborted (use -f to skip the question)")
				}
			}
			var res api.VMPruneResult
			if err := a.call(ctx, api.MethodVMPrune, api.VMPruneParams{DryRun: dryRun}, &res); err != nil {
				return err
			}
			verb := "deleted"
			if dryRun {
				verb = "would delete"
			}
			for _, n := range res.Deleted {
				fmt.Fprintf(a.env.Stdout, "%s %s\n", n, verb)
			}
			if len(res.Deleted) == 0 {
				fmt.Fprintln(a.env.Stdout, "nothing to prune")
			}
			for n, e := range res.Failed {
				a.printError(fmt.Errorf("%s: %s", n, e))
			}
			if len(res.Failed) > 0 {
				return silentExit(1)
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "do not ask for confirmation")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "only list what would be deleted")
	return cmd
}
