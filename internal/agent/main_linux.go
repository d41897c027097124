package agent

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"

	"github.com/bangerdev/banger/internal/buildinfo"
	"github.com/bangerdev/banger/internal/hostexec"
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
	debug := fs.Bool("debug", false, "log every session")
	version := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return 2
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
	err := RunGuest(ctx, GuestOptions{
		TokenFile: *token, PortName: *port, VsockPort: uint32(*vsock), Logger: log,
		System: &Guest{Root: "/", ProcRoot: "/proc", Runner: hostexec.Real{}, Version: bi.Version, Kernel: true},
	})
	if err != nil && ctx.Err() == nil {
		log.Error("banger-agent", "err", err)
		return 1
	}
	return 0
}
