// Package cli implements the banger command line (cobra). Commands are thin:
// they validate flags, call the daemon over RPC and render results as tables
// or JSON.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/bangerdev/banger/internal/buildinfo"
	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/rpc"
	"github.com/bangerdev/banger/internal/system"
)

// Env is what the CLI needs from its process: streams, environment and
// the build identity. Tests construct their own.
type Env struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	Getenv func(string) string
	Build  buildinfo.Info
	// DaemonBinary is the bangerd executable to auto-start ("" = next to
	// this executable, then PATH).
	DaemonBinary string
	// System manages the system-mode install (nil = this host's systemd).
	System system.Manager
	// SystemRoot is where the CLI looks for a system install record
	// ("" = /); tests point it elsewhere.
	SystemRoot string
}

// exitError carries a specific exit status out of a command.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}
func (e *exitError) Unwrap() error { return e.err }

// silentExit exits with code without printing anything more.
func silentExit(code int) error { return &exitError{code: code} }

// Main runs the CLI with args and returns the process exit status.
func Main(ctx context.Context, env Env, args []string) int {
	if env.Getenv == nil {
		env.Getenv = os.Getenv
	}
	app := &app{env: env}
	root := app.rootCmd()
	root.SetArgs(args)
	root.SetIn(env.Stdin)
	root.SetOut(env.Stdout)
	root.SetErr(env.Stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			app.printError(ee.err)
		}
		return ee.code
	}
	app.printError(err)
	return 1
}

type app struct {
	env      Env
	logLevel string
	client   *rpc.Client
}

func (a *app) printError(err error) {
	msg := err.Error()
	var re *rpc.Error
	if errors.As(err, &re) && re.OpID != "" {
		msg += " " + dim(a.env.Stderr, "(op "+re.OpID+")")
	}
	fmt.Fprintf(a.env.Stderr, "banger: %s\n", msg)
}

// debugf prints a debug line on stderr with --log-level debug (or
// BANGER_LOG_LEVEL=debug).
func (a *app) debugf(format string, args ...any) {
	level := a.logLevel
	if level == "" && a.env.Getenv != nil {
		level = a.env.Getenv(config.EnvLogLevel)
	}
	if level != "debug" {
		return
	}
	fmt.Fprintf(a.env.Stderr, "banger: debug: "+format+"\n", args...)
}

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "banger",
		Short: "One-command development sandboxes on microVMs",
		Long: `banger gives you a disposable, fully isolated Linux machine with your
repository inside, in one command. Each sandbox is a microVM with its own
kernel, a copy-on-write root disk, a private persistent /root, a tap network
with optional NAT, a DNS name <name>.vm and ssh.

The banger CLI talks to bangerd, the owner daemon, which it starts on demand.`,
		Example: `  banger vm run ./myrepo -- make test   # run the tests in a fresh VM
  banger vm create --name dev --nat     # a named, persistent VM with internet
  banger vm list                        # what exists
  banger doctor                         # check this host`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       a.env.Build.String(),
	}
	root.SetVersionTemplate("banger {{.Version}}\n")
	root.PersistentFlags().StringVar(&a.logLevel, "log-level", "", "daemon log level when auto-starting it (debug, info, warn, error); debug also prints the CLI's own debug lines")
	root.AddCommand(a.versionCmd(), a.doctorCmd(), a.daemonCmd(), a.vmCmd(), a.imageCmd(), a.kernelCmd(), a.sshConfigCmd(), a.systemCmd(), a.updateCmd(), a.e2bCmd())
	a.withCompletion(root)
	return root
}

func (a *app) versionCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the banger version",
		Long:  "Print the version, commit and build time of this banger binary (and of the daemon, when it runs).",
		Example: `  banger version
  banger version --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b := a.env.Build
			if asJSON {
				return printJSON(a.env.Stdout, b)
			}
			fmt.Fprintf(a.env.Stdout, "banger %s\n", b)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}
