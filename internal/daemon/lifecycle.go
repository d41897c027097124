package daemon

import "context"

// runtimeState holds the VM runtime services (network, DNS, ssh, drivers,
// the VM manager). Owned by the lifecycle wiring in this file.
type runtimeState struct{}

// initRuntime builds the VM runtime services from the daemon's
// dependencies. Called once by New.
func (d *Daemon) initRuntime(ctx context.Context) error { return nil }

// startRuntime starts background services (DNS server, tap pool) and
// reconciles VMs recorded as running. Called by Serve before serving.
func (d *Daemon) startRuntime(ctx context.Context) {}

// stopRuntime stops background services; running VMs keep running.
func (d *Daemon) stopRuntime() {}

// registerLifecycle registers the vm.start/stop/restart/kill/set/logs/stats
// methods.
func (d *Daemon) registerLifecycle() {}
