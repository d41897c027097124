// Command banger-agent is the guest side of banger's agent channel: it runs
// in every banger VM (started by systemd or banger's init) and serves the
// daemon over virtio-serial and vsock. See internal/agent.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/bangerdev/banger/internal/agent"
	"github.com/bangerdev/banger/internal/buildinfo"
)

// stopGrace is how long the agent lets its sessions wind down after
// SIGTERM. A read on a virtio-serial port does not end with the context,
// and the agent keeps no state, so it then exits: a guest's shutdown must
// never wait on it.
const stopGrace = time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		time.Sleep(stopGrace)
		os.Exit(0)
	}()
	code := agent.Main(ctx, buildinfo.Get(), os.Args[1:], os.Stderr)
	stop()
	os.Exit(code)
}
