// Package daemon is bangerd's composition root: it opens the store, builds
// the services (VMs, images, kernels, networking, DNS) from their
// dependencies, registers the RPC methods and serves them on the owner's
// unix socket.
package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/buildinfo"
	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/image"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/privops"
	"github.com/bangerdev/banger/internal/rpc"
	"github.com/bangerdev/banger/internal/store"
)

// Lifecycle starts and destroys VMs. The daemon works without one (records
// only) until the VM lifecycle is wired in.
type Lifecycle interface {
	// Start brings a stopped VM to running and returns the updated record.
	Start(ctx context.Context, vm *model.VM) (*model.VM, error)
	// Destroy stops the VM if needed and releases every resource it owns
	// (disks, tap, lease, DNS record, known_hosts entries). The caller
	// then deletes the record.
	Destroy(ctx context.Context, vm *model.VM) error
}

// Options are the daemon's dependencies.
type Options struct {
	Layout paths.Layout
	Config *config.Config
	Logger *slog.Logger
	Runner hostexec.Runner
	Ops    privops.Ops
	Build  buildinfo.Info
	Now    func() time.Time
	// LockWait is how long New waits for a stopping daemon to release the
	// layout's lock (default 10s).
	LockWait time.Duration
}

// Daemon is a running bangerd.
type Daemon struct {
	layout    paths.Layout
	cfg       *config.Config
	logger    *slog.Logger
	runner    hostexec.Runner
	privops   privops.Ops
	build     buildinfo.Info
	now       func() time.Time
	store     *store.Store
	ops       *Operations
	locks     *keyLocks
	lifecycle Lifecycle
	images    *image.Store
	kernels   *kernelService
	sshcfg    sshConfigWriter
	standby   *standbyPool // VMs restored ahead of need (standby.go)
	rt        runtimeState // VM runtime services; see lifecycle.go
	srv       *rpc.Server

	stopOnce sync.Once
	stop     context.CancelFunc
	lockFile *os.File
}

// New opens the state store and builds the daemon. Close releases it.
func New(ctx context.Context, o Options) (*Daemon, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Runner == nil {
		o.Runner = hostexec.Real{Logger: o.Logger}
	}
	if err := o.Layout.Ensure(); err != nil {
		return nil, fmt.Errorf("prepare state directories: %w", err)
	}
	if o.LockWait == 0 {
		o.LockWait = 10 * time.Second
	}
	lf, err := lockDaemon(filepath.Join(o.Layout.RuntimeDir, "bangerd.lock"), o.LockWait)
	if err != nil {
		return nil, err
	}
	st, err := store.Open(ctx, o.Layout.DBPath())
	if err != nil {
		lf.Close()
		return nil, err
	}
	d := &Daemon{
		layout:   o.Layout,
		cfg:      o.Config,
		logger:   o.Logger,
		runner:   o.Runner,
		privops:  o.Ops,
		build:    o.Build,
		now:      o.Now,
		store:    st,
		locks:    newKeyLocks(),
		lockFile: lf,
		standby:  newStandbyPool(),
	}
	d.ops = NewOperations(st, o.Now, o.Logger)
	days := config.DefaultOperationsRetentionDays
	if o.Config != nil && o.Config.OperationsRetentionDays > 0 {
		days = o.Config.OperationsRetentionDays
	}
	d.ops.Retention = time.Duration(days) * 24 * time.Hour
	d.ops.Recover(ctx)
	d.ops.Prune(ctx)
	d.images = d.newImageStore()
	d.kernels = d.newKernelStore()
	if err := d.initRuntime(ctx); err != nil {
		st.Close()
		lf.Close()
		return nil, err
	}
	d.srv = rpc.NewServer(rpc.ServerOptions{Logger: o.Logger, Version: o.Build.Version, Commit: o.Build.Commit, AllowUID: allowPeers(o.Layout)})
	d.register()
	return d, nil
}

// allowPeers decides who may call the daemon: its own uid; in system mode
// also root, whose CLI talks to the system daemon (root could take the
// owner's identity anyway).
func allowPeers(l paths.Layout) func(uint32) bool {
	euid := uint32(os.Geteuid())
	if l.Mode != paths.ModeSystem {
		return func(uid uint32) bool { return uid == euid }
	}
	return func(uid uint32) bool { return uid == euid || uid == 0 }
}

// lockDaemon takes an exclusive lock so only one daemon serves a layout.
func lockDaemon(path string, wait time.Duration) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open daemon lock: %w", err)
	}
	// A daemon that was just asked to stop may still be releasing its
	// resources: give it a few seconds before declaring a conflict.
	deadline := time.Now().Add(wait)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("another bangerd is already running for %s (stop it with `banger daemon stop`)", filepath.Dir(path))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// SetLifecycle wires the VM lifecycle service.
func (d *Daemon) SetLifecycle(l Lifecycle) { d.lifecycle = l }

// Store returns the daemon's state store (for services built around it).
func (d *Daemon) Store() *store.Store { return d.store }

// Serve listens on the daemon socket and serves until ctx ends or a client
// calls daemon.shutdown.
func (d *Daemon) Serve(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	d.stop = cancel
	sock := d.layout.DaemonSocket()
	ln, err := rpc.Listen(sock)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", sock, err)
	}
	d.logger.Info("bangerd serving", "socket", sock, "version", d.build.Version, "pid", os.Getpid())
	d.startRuntime(ctx)
	go d.runSandboxReaper(ctx)
	sctx, stopStandby := context.WithCancel(ctx)
	standbyDone := make(chan struct{})
	go func() { defer close(standbyDone); d.runStandby(sctx) }()
	err = d.srv.Serve(ctx, ln)
	stopStandby()
	<-standbyDone
	dctx, cancelDrop := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	d.dropStandbys(dctx)
	cancelDrop()
	d.stopRuntime()
	_ = os.Remove(sock)
	return err
}

// Close releases the store and the daemon lock.
func (d *Daemon) Close() error {
	err := d.store.Close()
	if d.lockFile != nil {
		d.lockFile.Close()
	}
	return err
}

func (d *Daemon) register() {
	s := d.srv
	s.Handle(api.MethodPing, rpc.Typed(func(ctx context.Context, _ api.Empty) (*api.PingResult, error) {
		return &api.PingResult{
			Build: d.build, Protocol: rpc.ProtocolVersion, PID: os.Getpid(),
			Mode: d.layout.Mode, Socket: d.layout.DaemonSocket(), StateDir: d.layout.StateDir,
		}, nil
	}))
	s.Handle(api.MethodShutdown, rpc.Typed(func(ctx context.Context, _ api.Empty) (api.Empty, error) {
		d.stopOnce.Do(func() {
			go func() {
				time.Sleep(50 * time.Millisecond) // let the reply go out
				if d.stop != nil {
					d.stop()
				}
			}()
		})
		return api.Empty{}, nil
	}))
	s.Handle(api.MethodOperationsList, rpc.Typed(func(ctx context.Context, p api.OperationsListParams) (*api.OperationsList, error) {
		ops := d.ops.List(ctx, p.All)
		if ops == nil {
			ops = []*model.Operation{}
		}
		return &api.OperationsList{Operations: ops}, nil
	}))
	s.Handle(api.MethodStoreStatus, rpc.Typed(func(ctx context.Context, _ api.Empty) (*api.StoreStatus, error) {
		st, detail, err := store.CheckMigrations(ctx, d.layout.DBPath())
		if err != nil {
			return nil, err
		}
		return &api.StoreStatus{Status: int(st), Detail: detail, Path: d.layout.DBPath()}, nil
	}))
	s.Handle(api.MethodSSHCredentials, rpc.Typed(d.sshCredentials))
	d.handleVM(api.MethodVMCreate, rpc.Typed(d.vmCreate))
	s.Handle(api.MethodVMList, rpc.Typed(d.vmList))
	s.Handle(api.MethodVMShow, rpc.Typed(d.vmShow))
	d.handleVM(api.MethodVMDelete, rpc.Typed(d.vmDelete))
	d.handleVM(api.MethodVMPrune, rpc.Typed(d.vmPrune))
	d.registerSSHConfig()
	d.registerImages()
	d.registerKernels()
	d.registerLifecycle()
	d.registerWorkspace()
	d.registerE2B()
	d.registerPorts()
	d.registerExec()
}
