package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/bangerdev/banger/internal/buildinfo"
	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/system"
)

// systemManager is the system-mode manager the commands use (tests
// replace it through Env.System).
func (a *app) systemManager() system.Manager {
	if a.env.System != nil {
		return a.env.System
	}
	return &system.Host{Runner: hostexec.Real{}, Build: a.env.Build, Out: a.env.Stdout, Getenv: a.env.Getenv}
}

func (a *app) systemCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "system",
		Short: "Install and run banger as a system service (systemd)",
		Long: `System mode runs banger as two systemd services: bangerd-root.service (the
root helper, the only root process) and bangerd.service (the owner daemon,
running as the owner user with no capabilities). State lives in
/var/lib/banger, the sockets in /run/banger and /run/banger-root. The owner
and root use the system daemon with the plain CLI.

Restarting either service, or both, never stops a running VM.`,
		Example: `  sudo banger system install --owner alice
  banger system status
  sudo banger system restart
  sudo banger system uninstall --purge`,
	}
	cmd.AddCommand(a.systemInstallCmd(), a.systemStatusCmd(), a.systemRestartCmd(), a.systemUninstallCmd())
	return cmd
}

func (a *app) systemInstallCmd() *cobra.Command {
	var o system.InstallOptions
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Install the binaries and systemd units, and start them",
		Long: `Install banger as a system service: copies banger to /usr/local/bin and bangerd
to /usr/local/lib/banger, writes /etc/banger/install.toml (owner, build,
time), renders bangerd.service and bangerd-root.service into
/etc/systemd/system, enables them, restarts the helper and then the daemon,
and waits until both answer on their sockets.

Re-running it refreshes binaries and units (running VMs survive). --owner
defaults to the user who ran sudo. --root DIR writes everything under DIR and
starts nothing (packagers, image builders, tests); --no-start installs and
enables without starting.`,
		Example: `  sudo banger system install                 # owner = the user running sudo
  sudo banger system install --owner alice
  banger system install --root ./pkgroot --owner nobody --no-start`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rec, err := a.systemManager().Install(cmd.Context(), o)
			if err != nil {
				return err
			}
			switch {
			case o.Root != "" && o.Root != "/":
				fmt.Fprintf(a.env.Stdout, "banger %s installed under %s for owner %s (nothing started)\n", rec.Build.Version, o.Root, rec.Owner.User)
			case o.NoStart:
				fmt.Fprintf(a.env.Stdout, "banger %s installed for owner %s; start it with `sudo banger system restart`\n", rec.Build.Version, rec.Owner.User)
			default:
				fmt.Fprintf(a.env.Stdout, "banger %s is running as a system service for %s; try `banger vm run ./repo -- make test` as %s\n", rec.Build.Version, rec.Owner.User, rec.Owner.User)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&o.Owner, "owner", "", "user the daemon runs as and whose VMs these are (default: $SUDO_USER)")
	cmd.Flags().StringVar(&o.Root, "root", "", "install under this directory and start nothing")
	cmd.Flags().BoolVar(&o.NoStart, "no-start", false, "install and enable the units without starting them")
	return cmd
}

func (a *app) systemStatusCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the services, their versions, sockets and owner",
		Long: `Show banger's system install: the owner, both units (state, main pid,
KillMode, and whether the installed unit differs from what this banger
renders), the versions of this CLI, the running daemon and helper and the
installed binary, and the socket paths. Needs no root; changes nothing.`,
		Example: `  banger system status
  banger system status --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := a.systemManager().Status(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.env.Stdout, st)
			}
			if !st.Installed {
				fmt.Fprintln(a.env.Stdout, "banger is not installed as a system service (install it with `sudo banger system install --owner USER`)")
				return silentExit(3)
			}
			t := newTable(a.env.Stdout, "Owner:", fmt.Sprintf("%s (uid %d)", st.Record.Owner.User, st.Record.Owner.UID))
			t.row("Installed:", fmt.Sprintf("%s at %s", st.Record.Build.Version, st.Record.InstalledAt.Format("2006-01-02 15:04:05Z")))
			t.row("CLI:", st.CLI.String())
			t.row("Daemon:", versionOr(st.Daemon, st.DaemonError))
			t.row("Helper:", versionOr(st.Helper, st.HelperError))
			t.row("Binary:", orDash(st.InstalledBinary))
			t.row("Daemon socket:", st.DaemonSocket)
			t.row("Helper socket:", st.HelperSocket)
			t.flush()
			fmt.Fprintln(a.env.Stdout)
			u := newTable(a.env.Stdout, "UNIT", "STATE", "PID", "KILLMODE", "UNIT FILE")
			for _, us := range st.Units {
				file := "current"
				if us.Drift {
					file = "differs (re-run `sudo banger system install`)"
				}
				u.row(us.Name, us.ActiveState+"/"+us.SubState, fmt.Sprint(us.MainPID), orDash(us.KillMode), file)
			}
			u.flush()
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}

func versionOr(b *buildinfo.Info, errText string) string {
	if b == nil {
		return "not answering: " + errText
	}
	return b.String()
}

func (a *app) systemRestartCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "restart",
		Short: "Restart the helper, then the daemon (VMs keep running)",
		Long: `Restart bangerd-root.service, wait until the helper answers, then restart
bangerd.service and wait until the daemon answers. Running VMs keep running:
both units use KillMode=process and the daemon re-adopts the VMMs.`,
		Example: "  sudo banger system restart",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.systemManager().Restart(cmd.Context())
		},
	}
}

func (a *app) systemUninstallCmd() *cobra.Command {
	var o system.UninstallOptions
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Stop and remove the services and binaries",
		Long: `Stop and disable both units and remove them, the installed binaries and
/etc/banger/install.toml. Refuses while VMs run (and names them) unless
--force, which kills them first. --purge also removes /var/lib/banger,
/var/cache/banger and /var/cache/banger-root (every VM, image and kernel).
/etc/banger/config.toml, the owner's ~/.ssh/config include and known_hosts
stay.`,
		Example: `  sudo banger system uninstall
  sudo banger system uninstall --purge --force`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := a.systemManager().Uninstall(cmd.Context(), o); err != nil {
				return err
			}
			fmt.Fprintln(a.env.Stdout, "banger's system service is uninstalled")
			return nil
		},
	}
	cmd.Flags().BoolVar(&o.Purge, "purge", false, "also remove /var/lib/banger, /var/cache/banger and /var/cache/banger-root")
	cmd.Flags().BoolVar(&o.Force, "force", false, "uninstall even though VMs are running (kills them)")
	cmd.Flags().StringVar(&o.Root, "root", "", "uninstall from an install under this directory")
	return cmd
}
