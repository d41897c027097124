package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/rpc"
)

// vmLifecycleCmds are the VM lifecycle commands: start, stop, restart,
// kill, set, logs and stats.
func (a *app) vmLifecycleCmds() []*cobra.Command {
	return []*cobra.Command{
		a.vmRefsCmd(refsCmd{
			use: "start", method: api.MethodVMStart, short: "Start VMs",
			long: `Start one or more stopped VMs and wait until each answers ssh. The first
start of a VM created with --no-start makes its disks. Several VMs start
concurrently; the command continues past failures and exits 1 if any failed.`,
			example: `  banger vm start dev
  banger vm start a1 a2`,
		}),
		a.vmStopCmd(),
		a.vmRefsCmd(refsCmd{
			use: "restart", method: api.MethodVMRestart, short: "Stop and start VMs again",
			long:    "Restart one or more VMs: a stop as `banger vm stop`, then a start as `banger vm start`.",
			example: `  banger vm restart dev`,
		}),
		a.vmKillCmd(),
		a.vmSetCmd(),
		a.vmLogsCmd(),
		a.vmStatsCmd(),
		a.vmPortsCmd(),
	}
}

// refsCmd describes a command that runs one method on several VMs.
type refsCmd struct {
	use, method, short, long, example string
	// idempotentNotRunning reports a VM that is not running as done
	// (stop), not as a failure.
	idempotentNotRunning bool
	// params builds the request for one VM (nil: api.Ref).
	params func(ref string) any
}

func (a *app) vmStopCmd() *cobra.Command {
	var timeout time.Duration
	cmd := a.vmRefsCmd(refsCmd{
		use: "stop", method: api.MethodVMStop, short: "Stop VMs (sync, read-only, off)", idempotentNotRunning: true,
		long: `Stop one or more running VMs. By default the guest agent flushes the disks,
remounts every filesystem read-only and resets the VM, about a second under
TCG; no service is stopped, nothing written before the stop is lost.
--timeout D asks the guest's init for a full graceful shutdown instead
(services stopped in order) and waits up to D. A guest without an agent
gets sync and a poweroff over ssh; one that does not go away in time is
killed with a warning (at once when neither channel answers). The /root
disk, the root disk and the address are kept: ` + "`banger vm start`" + ` brings the
VM back with its data. Stopping a VM that is not running is not an error.`,
		example: `  banger vm stop dev
  banger vm stop --timeout 2m db      # let its services shut down in order
  banger vm stop $(banger vm ps --json | jq -r '.[].name')`,
		params: func(ref string) any {
			if timeout > 0 {
				return api.VMStopParams{Ref: ref, Timeout: timeout.String()}
			}
			return api.Ref{Ref: ref}
		},
	})
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "graceful shutdown through the guest's init, waiting up to this long (e.g. 2m); default: fast stop")
	cmd.PreRunE = func(cmd *cobra.Command, args []string) error {
		if timeout < 0 {
			return fmt.Errorf("--timeout %s: must be positive (e.g. --timeout 2m)", timeout)
		}
		return nil
	}
	return cmd
}

func (a *app) vmRefsCmd(c refsCmd) *cobra.Command {
	params := c.params
	if params == nil {
		params = func(ref string) any { return api.Ref{Ref: ref} }
	}
	return &cobra.Command{
		Use:     c.use + " VM...",
		Short:   c.short,
		Long:    c.long,
		Example: c.example,
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, refs []string) error {
			return a.eachRef(cmd.Context(), refs, func(ctx context.Context, ref string) (string, error) {
				var vm model.VM
				var err error
				if len(refs) == 1 {
					err = a.callWithStages(ctx, c.method, params(ref), &vm)
				} else {
					err = a.call(ctx, c.method, params(ref), &vm)
				}
				if err != nil {
					if c.idempotentNotRunning && rpc.CodeOf(err) == rpc.CodeNotRunning {
						return ref + " is not running", nil
					}
					return "", err
				}
				return vmLine(&vm), nil
			})
		},
	}
}

// vmLine is the one-line result of a lifecycle command.
func vmLine(vm *model.VM) string {
	if vm.State == model.StateRunning && vm.IP != "" {
		return fmt.Sprintf("%s %s (%s, ssh root@%s.vm)", vm.Name, vm.State, vm.IP, vm.Name)
	}
	return fmt.Sprintf("%s %s", vm.Name, vm.State)
}

func (a *app) vmKillCmd() *cobra.Command {
	var signal string
	cmd := &cobra.Command{
		Use:   "kill VM...",
		Short: "Kill VMs' VMM processes",
		Long: `Send a signal to the VMM process of one or more VMs (SIGKILL by default),
without asking the guest to shut down: data the guest has not synced is lost.
After a terminating signal (KILL, TERM, INT, QUIT, HUP, ABRT) banger waits
for the VMM to exit and releases the VM's tap, NAT and DNS name; the VM is
then stopped and can be started again. Other signals are only delivered.`,
		Example: `  banger vm kill dev
  banger vm kill --signal TERM dev other`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, refs []string) error {
			return a.eachRef(cmd.Context(), refs, func(ctx context.Context, ref string) (string, error) {
				var vm model.VM
				if err := a.call(ctx, api.MethodVMKill, api.VMKillParams{Ref: ref, Signal: signal}, &vm); err != nil {
					return "", err
				}
				return vmLine(&vm), nil
			})
		},
	}
	cmd.Flags().StringVarP(&signal, "signal", "s", "KILL", "signal name or number (KILL, TERM, INT, 9 ...)")
	return cmd
}

func (a *app) vmSetCmd() *cobra.Command {
	var sizes sizeFlags
	var nat, noNAT bool
	cmd := &cobra.Command{
		Use:   "set VM...",
		Short: "Change a stopped VM's vCPUs, memory, /root disk size or NAT",
		Long: `Change the settings of one or more stopped VMs. --disk-size grows the /root
disk now (shrinking is refused); the other settings apply at the next start.
Stop a running VM first with ` + "`banger vm stop`" + `.`,
		Example: `  banger vm set dev --vcpu 4 --memory 8G
  banger vm set dev --disk-size 40G
  banger vm set dev --nat          # give it internet access
  banger vm set dev --no-nat`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, refs []string) error {
			var c api.VMCreateParams
			if err := sizes.apply(cmd, &c); err != nil {
				return err
			}
			base := api.VMSetParams{}
			if cmd.Flags().Changed("vcpu") {
				base.VCPU = &c.VCPU
			}
			if cmd.Flags().Changed("memory") {
				base.MemoryMiB = &c.MemoryMiB
			}
			if cmd.Flags().Changed("disk-size") {
				base.DiskSizeMiB = &c.DiskSizeMiB
			}
			switch {
			case nat && noNAT:
				return errors.New("--nat and --no-nat contradict each other")
			case nat:
				base.NAT = &nat
			case noNAT:
				f := false
				base.NAT = &f
			}
			if base.VCPU == nil && base.MemoryMiB == nil && base.DiskSizeMiB == nil && base.NAT == nil {
				return errors.New("nothing to change: give --vcpu, --memory, --disk-size, --nat or --no-nat")
			}
			return a.eachRef(cmd.Context(), refs, func(ctx context.Context, ref string) (string, error) {
				p := base
				p.Ref = ref
				var vm model.VM
				if err := a.call(ctx, api.MethodVMSet, p, &vm); err != nil {
					return "", err
				}
				return fmt.Sprintf("%s: vcpu %d, memory %s, disk %s, nat %v", vm.Name, vm.VCPU,
					model.FormatMiB(vm.MemoryMiB), model.FormatMiB(vm.DiskSizeMiB), vm.NAT), nil
			})
		},
	}
	sizes.add(cmd)
	cmd.Flags().BoolVar(&nat, "nat", false, "enable NAT (internet access) from the next start")
	cmd.Flags().BoolVar(&noNAT, "no-nat", false, "disable NAT from the next start")
	return cmd
}

func (a *app) vmLogsCmd() *cobra.Command {
	var follow bool
	var lines int
	cmd := &cobra.Command{
		Use:   "logs VM",
		Short: "Show a VM's console log",
		Long: `Print a VM's serial console and VMM log (kernel messages, init, banger's
guest scripts). The log is kept across stops, so it also explains a VM that
failed to boot. With -f, keep printing what the VM writes until interrupted.`,
		Example: `  banger vm logs dev
  banger vm logs -n 50 dev
  banger vm logs -f dev`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, refs []string) error {
			var vm model.VM
			if err := a.call(cmd.Context(), api.MethodVMShow, api.Ref{Ref: refs[0]}, &vm); err != nil {
				return err
			}
			if vm.Runtime.LogPath == "" {
				return fmt.Errorf("VM %s has no log yet: it has never been started (`banger vm start %s`)", vm.Name, vm.Name)
			}
			return printLog(cmd.Context(), a.env.Stdout, vm.Runtime.LogPath, lines, follow)
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output")
	cmd.Flags().IntVarP(&lines, "lines", "n", 0, "print only the last N lines (0 = all)")
	return cmd
}

// printLog prints the file at path (its last n lines when n > 0) and, with
// follow, new data as it arrives until ctx ends. A truncated file is read
// again from its start.
func printLog(ctx context.Context, w io.Writer, path string, n int, follow bool) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("read the VM log: %w", err)
	}
	defer f.Close()
	if n > 0 {
		data, err := io.ReadAll(f)
		if err != nil {
			return err
		}
		parts := strings.SplitAfter(string(data), "\n")
		if parts[len(parts)-1] == "" {
			parts = parts[:len(parts)-1]
		}
		if len(parts) > n {
			parts = parts[len(parts)-n:]
		}
		if _, err := io.WriteString(w, strings.Join(parts, "")); err != nil {
			return err
		}
	} else if _, err := io.Copy(w, f); err != nil {
		return err
	}
	if !follow {
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
		pos, _ := f.Seek(0, io.SeekCurrent)
		if st, err := os.Stat(path); err == nil && st.Size() < pos {
			_, _ = f.Seek(0, io.SeekStart)
		}
		if _, err := io.Copy(w, f); err != nil {
			return err
		}
	}
}

func (a *app) vmStatsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "stats VM...",
		Short: "Show VMs' CPU time, memory and disk usage",
		Long: `Show the CPU time and resident memory of each VM's VMM process (while it
runs) and the apparent size and the space really used on the host by its
root disk (copy-on-write over the image) and its /root disk.`,
		Example: `  banger vm stats dev
  banger vm stats --json dev other`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, refs []string) error {
			stats := make([]*api.VMStats, len(refs))
			errs := make([]error, len(refs))
			done := make(chan int)
			for i, ref := range refs {
				go func(i int, ref string) {
					var st api.VMStats
					errs[i] = a.call(cmd.Context(), api.MethodVMStats, api.Ref{Ref: ref}, &st)
					stats[i] = &st
					done <- i
				}(i, ref)
			}
			for range refs {
				<-done
			}
			var ok []*api.VMStats
			failed := 0
			for i, err := range errs {
				if err != nil {
					failed++
					a.printError(fmt.Errorf("%s: %w", refs[i], err))
					continue
				}
				ok = append(ok, stats[i])
			}
			if asJSON {
				if len(refs) == 1 && len(ok) == 1 {
					if err := printJSON(a.env.Stdout, ok[0]); err != nil {
						return err
					}
				} else if err := printJSON(a.env.Stdout, ok); err != nil {
					return err
				}
			} else if len(ok) > 0 {
				t := newTable(a.env.Stdout, "NAME", "STATE", "PID", "CPU", "RSS", "UPTIME", "ROOT DISK (used/size)", "/ROOT DISK (used/size)")
				for _, s := range ok {
					pid, cpu, rss, up := "-", "-", "-", "-"
					if s.PID != 0 {
						pid = fmt.Sprint(s.PID)
						cpu = fmt.Sprintf("%.1fs", s.CPUSeconds)
						rss = humanBytes(s.RSSBytes)
						up = (time.Duration(s.UptimeSeconds) * time.Second).String()
					}
					t.row(s.Name, string(s.State), pid, cpu, rss, up, diskCell(s.RootDisk), diskCell(s.WorkDisk))
				}
				t.flush()
			}
			if failed > 0 {
				return silentExit(1)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}

func diskCell(d api.DiskUsage) string {
	if d.SizeBytes == 0 {
		return "-"
	}
	return humanBytes(d.AllocatedBytes) + "/" + humanBytes(d.SizeBytes)
}
