package agent

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"syscall"
	"time"

	"github.com/bangerdev/banger/internal/buildinfo"
	"github.com/bangerdev/banger/internal/envd"
	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/workspace"
)

// Main is banger-agent's command line (cmd/banger-agent). It returns the
// exit code.
func Main(ctx context.Context, bi buildinfo.Info, args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("banger-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, `banger-agent serves banger's daemon inside a VM.

It reads the VM's token from --token-file and answers authenticated
requests (ping, identity, ports, exec) on the virtio-serial port
--port and on vsock port --vsock-port. It is started by the
banger-agent.service unit or by banger's init; running it by hand is only
useful for debugging.

Usage: banger-agent [flags]

`)
		fs.PrintDefaults()
	}
	token := fs.String("token-file", TokenPath, "file holding the VM's token")
	port := fs.String("port", PortName, `virtio-serial port name ("" = none)`)
	vsock := fs.Uint("vsock-port", VsockPort, "vsock port (0 = none)")
	envdAddr := fs.String("envd-listen", fmt.Sprintf(":%d", envd.Port), `address of the E2B-compatible envd API ("" = none)`)
	debug := fs.Bool("debug", false, "log every session")
	version := fs.Bool("version", false, "print the version and exit")
	network := fs.Bool("network", false, "configure the network from "+NetworkEnvPath+" and exit (the guest contract's boot step; falls back to its script)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *network {
		return bootNetwork(ctx, stderr)
	}
	if *version {
		fmt.Fprintln(stderr, "banger-agent", bi.String())
		return 0
	}
	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	log.Info("banger-agent starting", "version", bi.Version, "protocol", Protocol)
	if *envdAddr != "" {
		go serveEnvd(ctx, *envdAddr, *token, log)
	}
	err := RunGuest(ctx, GuestOptions{
		TokenFile: *token, PortName: *port, VsockPort: uint32(*vsock), Logger: log,
		System:   &Guest{Root: "/", ProcRoot: "/proc", Runner: hostexec.Real{}, Version: bi.Version, Kernel: true},
		Builtins: map[string]Builtin{BuiltinWorkspaceInstall: workspace.InstallCommand},
	})
	if err != nil && ctx.Err() == nil {
		log.Error("banger-agent", "err", err)
		return 1
	}
	return 0
}

// bootNetwork runs the boot-time network step; when it fails, the guest
// contract's script takes over (same settings, shell and ip).
func bootNetwork(ctx context.Context, stderr io.Writer) int {
	g := &Guest{Root: "/", ProcRoot: "/proc", Kernel: true}
	iface, err := g.BootNetwork(ctx, 5*time.Second)
	if err == nil {
		fmt.Fprintf(stderr, "banger-agent: network on %s\n", iface)
		return 0
	}
	fmt.Fprintf(stderr, "banger-agent: %v; running %s instead\n", err, NetworkScript)
	if _, serr := os.Stat(NetworkScript); serr != nil {
		return 1
	}
	if xerr := syscall.Exec(NetworkScript, []string{NetworkScript}, os.Environ()); xerr != nil {
		fmt.Fprintf(stderr, "banger-agent: %s: %v\n", NetworkScript, xerr)
	}
	return 1
}

// envdUID is the uid given to envd's default user when the image lacks it.
const envdUID = 1000

// serveEnvd serves the E2B-compatible envd API (internal/envd) until ctx
// ends. The default user is created on first use when the image lacks it. Its access token is derived from the agent token, read again on
// every request so a rotated token holds at once.
func serveEnvd(ctx context.Context, addr, tokenFile string, log *slog.Logger) {
	srv := envd.New(envd.Options{
		Token: func() (string, error) {
			data, err := os.ReadFile(tokenFile)
			if err != nil {
				return "", err
			}
			t, err := ParseToken(data)
			if err != nil {
				return "", err
			}
			return envd.AccessToken(t), nil
		},
		Accounts: &envd.EnsuringAccounts{Root: "/", UID: envdUID},
		AsUser:   envd.RunAsUser,
		BaseEnv:  []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"},
		Logger:   log,
	})
	if err := srv.ListenAndServe(ctx, addr); err != nil && ctx.Err() == nil {
		log.Error("envd", "err", err)
	}
}
