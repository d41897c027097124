// Command bangerd is banger's owner daemon; `bangerd root-helper` runs the
// privileged helper. See `bangerd --help`.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/bangerdev/banger/internal/buildinfo"
	"github.com/bangerdev/banger/internal/daemon"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := daemon.Main(ctx, buildinfo.Get(), os.Args[1:], os.Stderr)
	stop()
	os.Exit(code)
}
