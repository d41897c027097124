// Command banger is the banger CLI. See `banger --help`.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/bangerdev/banger/internal/buildinfo"
	"github.com/bangerdev/banger/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, cli.Env{
		Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr,
		Getenv: os.Getenv, Build: buildinfo.Get(),
	}, os.Args[1:])
	stop()
	os.Exit(code)
}
