// Command banger-agent is the guest side of banger's agent channel: it runs
// in every banger VM (started by systemd or banger's init) and serves the
// daemon over virtio-serial and vsock. See internal/agent.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/bangerdev/banger/internal/agent"
	"github.com/bangerdev/banger/internal/buildinfo"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := agent.Main(ctx, buildinfo.Get(), os.Args[1:], os.Stderr)
	stop()
	os.Exit(code)
}
