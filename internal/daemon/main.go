package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/bangerdev/banger/internal/buildinfo"
	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/privops"
	"github.com/bangerdev/banger/internal/store"
)

// Main is bangerd's entry point; it returns the exit status.
func Main(ctx context.Context, build buildinfo.Info, args []string, stderr io.Writer) int {
	code := 0
	var logLevel string
	var checkMigrations bool
	root := &cobra.Command{
		Use:   "bangerd",
		Short: "banger's owner daemon",
		Long: `bangerd owns banger's state store, images, kernels, VMs, DNS server and ssh
to guests, and serves the banger CLI over a unix socket. The CLI starts it on
demand in user mode; systemd runs it in system mode.

Exit status of --check-migrations: 0 schema compatible, 1 migrations needed,
2 incompatible (the store is newer than this binary), 3 error.`,
		Example: `  bangerd                       # serve (normally started by the CLI)
  bangerd --check-migrations    # before an upgrade
  bangerd root-helper --owner-uid 1000`,
		Version:       build.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			layout, err := paths.FromEnv()
			if err != nil {
				return err
			}
			if checkMigrations {
				st, detail, err := store.CheckMigrations(cmd.Context(), layout.DBPath())
				if err != nil {
					fmt.Fprintf(stderr, "bangerd: %v\n", err)
					code = 3
					return nil
				}
				fmt.Fprintln(cmd.OutOrStdout(), detail)
				code = int(st)
				return nil
			}
			return serve(cmd.Context(), build, layout, logLevel, stderr)
		},
	}
	root.SetVersionTemplate("bangerd {{.Version}}\n")
	root.Flags().StringVar(&logLevel, "log-level", "", "log level: debug, info, warn, error (default from config or BANGER_LOG_LEVEL)")
	root.Flags().BoolVar(&checkMigrations, "check-migrations", false, "report whether the state store needs migrations, then exit")
	root.AddCommand(rootHelperCmd(build, stderr))
	root.SetArgs(args)
	root.SetErr(stderr)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(stderr, "bangerd: %v\n", err)
		return 1
	}
	return code
}

func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(strings.ToUpper(level))); err != nil {
		return nil, fmt.Errorf("bad log level %q: use debug, info, warn or error", level)
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l})), nil
}

func serve(ctx context.Context, build buildinfo.Info, layout paths.Layout, logLevel string, stderr io.Writer) error {
	cfg, err := config.Load(layout.ConfigFile(), config.DetectHost(), os.Getenv)
	if err != nil {
		return err
	}
	if logLevel == "" {
		logLevel = cfg.LogLevel
	}
	logger, err := newLogger(stderr, logLevel)
	if err != nil {
		return err
	}
	runner := hostexec.Real{Logger: logger}
	var ops privops.Ops
	if os.Geteuid() == 0 {
		local := privops.NewLocal(runner, logger)
		local.Firewall = firewallConfig(cfg)
		local.JailerChrootBase = layout.JailerChrootBase()
		ops = local
	} else {
		ops = privops.NewClient(layout.HelperSocket())
	}
	d, err := New(ctx, Options{Layout: layout, Config: cfg, Logger: logger, Runner: runner, Ops: ops, Build: build})
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Serve(ctx)
}

func rootHelperCmd(build buildinfo.Info, stderr io.Writer) *cobra.Command {
	var ownerUID int
	var logLevel string
	cmd := &cobra.Command{
		Use:   "root-helper",
		Short: "Run the privileged helper (as root)",
		Long: `Run banger's root helper: the only process that runs as root. It serves a
small, fixed, typed set of privileged operations (bridge/tap, NAT, resolver
routing, loop/dm devices, VMM launch/kill, chown) to the owner daemon over a
unix socket, validating every argument. systemd runs it in system mode.`,
		Example: "  sudo bangerd root-helper --owner-uid 1000",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if os.Geteuid() != 0 {
				return fmt.Errorf("the root helper must run as root (use `sudo banger system install`)")
			}
			if ownerUID < 0 {
				return fmt.Errorf("--owner-uid is required: the uid of the user whose daemon may call the helper")
			}
			logger, err := newLogger(stderr, logLevel)
			if err != nil {
				return err
			}
			return runRootHelper(cmd.Context(), build, ownerUID, logger)
		},
	}
	cmd.Flags().IntVar(&ownerUID, "owner-uid", -1, "uid of the owner daemon allowed to call the helper")
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "log level")
	return cmd
}
