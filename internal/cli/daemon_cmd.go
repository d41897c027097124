package cli

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/rpc"
)

// daemonKind says which daemon a layout's socket belongs to.
func daemonKind(l paths.Layout) string {
	if l.Mode == paths.ModeSystem {
		return "system (bangerd.service, as the install's owner)"
	}
	return "user (started on demand by the CLI)"
}

func confirm(r io.Reader) bool {
	if r == nil {
		return false
	}
	line, _ := bufio.NewReader(r).ReadString('\n')
	line = strings.ToLower(strings.TrimSpace(line))
	return line == "y" || line == "yes"
}

func (a *app) daemonCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Inspect or stop the banger daemon",
		Long: `bangerd is the owner daemon: it keeps the state store, images, kernels and
VMs. The CLI starts it on demand; stopping it never stops running VMs.`,
		Example: `  banger daemon status
  banger daemon operations
  banger daemon stop`,
	}
	cmd.AddCommand(a.daemonStatusCmd(), a.daemonStopCmd(), a.daemonOpsCmd())
	return cmd
}

func (a *app) daemonStatusCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show whether the daemon runs, and its version",
		Long:  "Show which daemon this CLI talks to (the system service when banger is installed with `banger system install`, else the user-mode daemon) and whether it answers, with its version, pid and state directory. Does not start it.",
		Example: `  banger daemon status
  banger daemon status --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			layout, err := a.layout()
			if err != nil {
				return err
			}
			p, err := a.ping(cmd.Context(), rpc.NewClient(layout.DaemonSocket()))
			if errors.Is(err, rpc.ErrUnreachable) {
				if asJSON {
					return printJSON(a.env.Stdout, map[string]any{"running": false, "socket": layout.DaemonSocket(), "kind": daemonKind(layout)})
				}
				if layout.Mode == paths.ModeSystem {
					fmt.Fprintf(a.env.Stdout, "the system daemon (bangerd.service) is not answering at %s: `sudo banger system restart`, and see `banger system status`\n", layout.DaemonSocket())
				} else {
					fmt.Fprintf(a.env.Stdout, "bangerd is not running (socket %s); any banger command starts it\n", layout.DaemonSocket())
				}
				return silentExit(3)
			}
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.env.Stdout, map[string]any{"running": true, "daemon": p, "cli": a.env.Build, "kind": daemonKind(layout)})
			}
			t := newTable(a.env.Stdout, "Running:", "yes")
			t.row("Daemon:", daemonKind(layout))
			t.row("Version:", p.Build.String())
			t.row("PID:", fmt.Sprint(p.PID))
			t.row("Mode:", p.Mode)
			t.row("Socket:", p.Socket)
			t.row("State:", p.StateDir)
			t.flush()
			if !p.Build.Same(a.env.Build) {
				if layout.Mode == paths.ModeSystem {
					fmt.Fprintf(a.env.Stderr, "note: the CLI is %s; `sudo banger system install` from this build updates the system daemon\n", a.env.Build)
				} else {
					fmt.Fprintf(a.env.Stderr, "note: the CLI is %s; the next command restarts the daemon to match\n", a.env.Build)
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}

func (a *app) daemonStopCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "stop",
		Short:   "Stop the daemon (running VMs keep running)",
		Long:    "Ask bangerd to exit. VMM processes are detached from it, so running VMs keep running; the next banger command starts the daemon again and re-attaches them.",
		Example: "  banger daemon stop",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			layout, err := a.layout()
			if err != nil {
				return err
			}
			if layout.Mode == paths.ModeSystem {
				return errors.New("the system daemon is managed by systemd: `sudo systemctl stop bangerd` (running VMs keep running), or `sudo banger system restart`")
			}
			c := rpc.NewClient(layout.DaemonSocket())
			if err := c.Call(cmd.Context(), api.MethodShutdown, nil, nil); err != nil {
				if errors.Is(err, rpc.ErrUnreachable) {
					fmt.Fprintln(a.env.Stdout, "bangerd is not running")
					return nil
				}
				return err
			}
			if err := waitGone(cmd.Context(), c, 15*time.Second); err != nil {
				return err
			}
			fmt.Fprintln(a.env.Stdout, "bangerd stopped")
			return nil
		},
	}
}

func (a *app) daemonOpsCmd() *cobra.Command {
	var asJSON, all bool
	cmd := &cobra.Command{
		Use:     "operations",
		Aliases: []string{"ops"},
		Short:   "List long-running operations (create, pull, build)",
		Long:    "List the operations the daemon is running, with their current stage and elapsed time. --all adds the finished ones from the store's history (kept operations_retention_days, default 30; an operation whose daemon stopped before it ended shows as interrupted).",
		Example: `  banger daemon operations
  banger daemon ops --all --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var res api.OperationsList
			if err := a.call(cmd.Context(), api.MethodOperationsList, api.OperationsListParams{All: all}, &res); err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.env.Stdout, res.Operations)
			}
			if len(res.Operations) == 0 {
				fmt.Fprintln(a.env.Stdout, "no operations in flight")
				return nil
			}
			now := time.Now()
			t := newTable(a.env.Stdout, "ID", "KIND", "TARGET", "STAGE", "ELAPSED", "STATUS")
			for _, op := range res.Operations {
				end := now
				status := "running"
				if op.EndedAt != nil {
					end = *op.EndedAt
					status = "done"
					if op.Error != "" {
						status = "failed: " + truncateRunes(op.Error, 50)
					}
				}
				t.row(op.ID, op.Kind, orDash(op.Target), op.Stage, end.Sub(op.StartedAt).Round(100*time.Millisecond).String(), status)
			}
			t.flush()
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	cmd.Flags().BoolVar(&all, "all", false, "include finished operations")
	return cmd
}
