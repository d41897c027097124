package daemon

// VM runtime wiring: host network (bridge, taps, NAT), the .vm DNS server,
// ssh (managed key, known_hosts), VMM drivers, copy-on-write disks and the
// vm.Manager that runs VM lifecycles; plus the vm.start/stop/restart/kill/
// set/stats RPC methods.
//
// Environment knobs read here (besides config.toml):
//
//	BANGER_QEMU_ACCEL=tcg|kvm   force QEMU's accelerator (default: kvm when a
//	                            KVM probe passes, else tcg). Some hosts pass
//	                            the probe but cannot run real guests under KVM.
//	BANGER_TEST_CRASH_AT=OP:STEP  (tests only) SIGKILL the daemon itself when
//	                            operation OP (create, start, stop) reaches
//	                            STEP, to test crash recovery.
//	FAKEFC_*                    (tests only) passed to the firecracker
//	                            driver's processes: options of the
//	                            Firecracker test double.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"github.com/bangerdev/banger/internal/buildinfo"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/disk"
	"github.com/bangerdev/banger/internal/guest"
	"github.com/bangerdev/banger/internal/image"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/netw"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/portfwd"
	"github.com/bangerdev/banger/internal/privops"
	"github.com/bangerdev/banger/internal/progress"
	"github.com/bangerdev/banger/internal/rpc"
	"github.com/bangerdev/banger/internal/template"
	"github.com/bangerdev/banger/internal/vm"
	"github.com/bangerdev/banger/internal/vmdns"
	"github.com/bangerdev/banger/internal/vmm"
	"github.com/bangerdev/banger/internal/vmm/firecracker"
	"github.com/bangerdev/banger/internal/vmm/qemu"
)

// Environment variables read by the runtime wiring.
const (
	EnvQEMUAccel = "BANGER_QEMU_ACCEL"
	EnvCrashAt   = "BANGER_TEST_CRASH_AT"
)

// DNSDomain is the zone VM names live in.
const DNSDomain = model.DNSDomain

// runtimeState holds the VM runtime services (network, DNS, ssh, drivers,
// the VM manager). Owned by the lifecycle wiring in this file.
type runtimeState struct {
	mgr      *vm.Manager
	net      *lazyNet
	dns      *vmdns.Server
	guests   *vm.SSHGuests
	fwds     *portfwd.Manager
	cow      disk.Strategy
	cowWhy   string
	driver   string
	disabled string // why there is no VM lifecycle ("" = there is one)

	clocksStop context.CancelFunc // ends the guest clock keeper
	clocksDone chan struct{}      // closed when it has ended
}

// initRuntime builds the VM runtime services from the daemon's
// dependencies. Called once by New. Nothing is created on the host here;
// startRuntime does that.
func (d *Daemon) initRuntime(ctx context.Context) error {
	if d.privops == nil {
		d.rt.disabled = "this daemon has no privileged operations (run bangerd as root, or with its root helper)"
		return nil
	}
	if d.cfg == nil {
		d.rt.disabled = "no configuration"
		return nil
	}
	cfg := d.cfg
	uid, gid := -1, -1
	if os.Geteuid() != 0 {
		uid, gid = os.Getuid(), os.Getgid()
	}
	nm, err := netw.NewManager(d.privops, netw.Config{
		Bridge: cfg.Network.Bridge, CIDR: cfg.Network.CIDR, TapPoolSize: cfg.Network.TapPoolSize,
		Uplink: cfg.Network.Uplink, TapOwner: uid, TapGroup: gid,
	}, d.logger)
	if err != nil {
		return err
	}
	signer, pub, err := guest.EnsureKey(d.layout.SSHDir())
	if err != nil {
		return fmt.Errorf("ssh key: %w", err)
	}
	kh, err := guest.OpenKnownHosts(filepath.Join(d.layout.SSHDir(), "known_hosts"))
	if err != nil {
		return fmt.Errorf("known_hosts: %w", err)
	}
	drivers, def, err := d.newDrivers()
	if err != nil {
		return err
	}
	strategy, why, err := d.chooseCoW(ctx)
	if err != nil {
		return err
	}
	cow, err := disk.New(strategy, d.privops, d.runner)
	if err != nil {
		return err
	}
	guests := &vm.SSHGuests{Signer: signer, PubLine: pub, KnownHosts: kh, Logger: d.logger}
	agentBin := d.agentBinary()
	dns := vmdns.New(cfg.Network.DNSAddr, DNSDomain, d.logger)
	net := &lazyNet{Manager: nm, dns: dns, logger: d.logger}
	fwds := portfwd.New(d.logger)
	mgr, err := vm.New(vm.Options{
		Forwards: fwds,
		Store:    d.store, Artifacts: daemonArtifacts{d}, Drivers: drivers, DefaultDriver: def,
		Network: net, Ops: d.privops, CoW: cow, Runner: d.runner, DNS: dns, Guests: guests,
		Layout: d.layout, Logger: d.logger, Now: d.now, Domain: DNSDomain,
		DNSServers: hostResolvers("/etc/resolv.conf"),
		VMMUID:     uid, VMMGID: gid,
		StepHook:        testCrashHook(),
		AgentBinary:     agentBin,
		Templates:       template.NewStore(d.layout.TemplatesDir(), d.now),
		TemplateDiskMiB: cfg.VM.DiskSizeMiB,
	})
	if err != nil {
		return err
	}
	d.rt = runtimeState{mgr: mgr, net: net, dns: dns, guests: guests, fwds: fwds, cow: strategy, cowWhy: why, driver: def}
	d.logger.Info("vm runtime", "driver", def, "cow", strategy, "cow_reason", why, "bridge", cfg.Network.Bridge, "dns", cfg.Network.DNSAddr)
	d.SetLifecycle(mgr)
	d.standby.vms = mgr
	return nil
}

// jailerWanted says whether Firecracker runs under the jailer: as
// firecracker.use_jailer says when it is set, else by default in system
// mode (where the VMM must not run with the helper's view of the host).
// explicit reports that the config set it.
func jailerWanted(mode string, cfg *config.Config) (want, explicit bool) {
	if src := cfg.Provenance["firecracker.use_jailer"]; src != "" && src != config.SourceDefault {
		return cfg.Firecracker.UseJailer, true
	}
	return cfg.Firecracker.UseJailer || mode == paths.ModeSystem, false
}

// newDrivers builds the VMM drivers and picks the default: firecracker when
// its binary and a usable /dev/kvm exist, else qemu (config vm.driver
// overrides).
func (d *Daemon) newDrivers() (map[string]vmm.Driver, string, error) {
	cfg := d.cfg
	accel := strings.ToLower(strings.TrimSpace(os.Getenv(EnvQEMUAccel)))
	q, err := qemu.New(qemu.Config{Binary: cfg.QEMU.Binary, Machine: cfg.QEMU.Machine, Accel: accel}, d.privops, d.logger)
	if err != nil {
		return nil, "", fmt.Errorf("qemu driver (%s=%q): %w", EnvQEMUAccel, accel, err)
	}
	drivers := map[string]vmm.Driver{q.Name(): q}
	fcCfg := firecracker.Config{Binary: cfg.Firecracker.Binary}
	if buildinfo.TestKnobs {
		fcCfg.Env = envWithPrefix(os.Environ(), fakeFCEnvPrefix)
	}
	fcBin, fcErr := exec.LookPath(cfg.Firecracker.Binary)
	useJailer, explicit := jailerWanted(d.layout.Mode, cfg)
	noFC := false
	if useJailer && fcErr == nil {
		jailer, err := exec.LookPath(cfg.Firecracker.Jailer)
		switch {
		case err != nil && explicit:
			return nil, "", fmt.Errorf("firecracker.use_jailer is set but %s is not installed: %w", cfg.Firecracker.Jailer, err)
		case err != nil:
			// System mode jails Firecracker by default: without the
			// jailer, Firecracker is not offered (set use_jailer = false
			// to run it unjailed).
			d.logger.Warn("firecracker driver unavailable: system mode runs it under the jailer, which is not installed (install it, or set firecracker.use_jailer = false)", "jailer", cfg.Firecracker.Jailer)
			fcErr, noFC = err, true
		default:
			fcCfg.Binary = fcBin
			fcCfg.Jailer = &firecracker.JailerConfig{Binary: jailer, ChrootBase: d.layout.JailerChrootBase()}
		}
	}
	if noFC {
		// the jailer is wanted but missing (logged above)
	} else if fc, err := firecracker.New(fcCfg, d.privops, d.runner, d.logger); err != nil {
		d.logger.Warn("firecracker driver unavailable", "err", err)
	} else {
		drivers[fc.Name()] = fc
	}
	def := cfg.VM.Driver
	switch def {
	case "", "auto":
		def = "qemu"
		if _, ok := drivers["firecracker"]; ok && fcErr == nil && accel != qemu.AccelTCG && qemu.KVMUsable("/dev/kvm") == nil {
			def = "firecracker"
		}
	default:
		if _, ok := drivers[def]; !ok {
			return nil, "", fmt.Errorf("vm.driver = %q is not available on this host", def)
		}
	}
	return drivers, def, nil
}

// fakeFCEnvPrefix marks environment variables passed through to the
// firecracker driver's processes: the options of banger's Firecracker test
// double (internal/vmm/fakefc), which end-to-end tests run as the
// firecracker binary. A real Firecracker ignores them.
const fakeFCEnvPrefix = "FAKEFC_"

// envWithPrefix returns the entries of env starting with prefix, plus PATH
// when there are any (a VMM given an environment gets only that).
func envWithPrefix(env []string, prefix string) []string {
	var out []string
	path := ""
	for _, kv := range env {
		if strings.HasPrefix(kv, prefix) {
			out = append(out, kv)
		}
		if strings.HasPrefix(kv, "PATH=") {
			path = kv
		}
	}
	if len(out) > 0 && path != "" {
		out = append(out, path)
	}
	return out
}

// chooseCoW resolves disk.cow: probe on auto, else the configured strategy.
func (d *Daemon) chooseCoW(ctx context.Context) (disk.Strategy, string, error) {
	s, err := disk.ParseStrategy(d.cfg.Disk.CoW)
	if err != nil {
		return "", "", fmt.Errorf("disk.cow: %w", err)
	}
	if s != disk.Auto {
		return s, "set in config (disk.cow)", nil
	}
	dir := filepath.Join(d.layout.StateDir, "vms")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", err
	}
	s, why := disk.Probe(ctx, dir, d.privops, d.runner)
	return s, why, nil
}

// hostResolvers returns the non-loopback nameservers of the host's
// resolv.conf, for guests (nil: the guests use the bridge address).
func hostResolvers(path string) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) >= 2 && fs[0] == "nameserver" {
			if a, err := netip.ParseAddr(fs[1]); err == nil && a.Is4() && !a.IsLoopback() {
				out = append(out, a.String())
			}
		}
	}
	return out
}

// testCrashHook is the crash hook of a test build (nil in release builds,
// see buildinfo.TestKnobs).
func testCrashHook() func(ctx context.Context, vmID, op, step string) error {
	if !buildinfo.TestKnobs {
		return nil
	}
	return crashHook(os.Getenv(EnvCrashAt))
}

// crashHook implements BANGER_TEST_CRASH_AT=OP:STEP (tests only).
func crashHook(spec string) func(ctx context.Context, vmID, op, step string) error {
	wantOp, wantStep, ok := strings.Cut(strings.TrimSpace(spec), ":")
	if !ok || wantStep == "" {
		return nil
	}
	return func(ctx context.Context, vmID, op, step string) error {
		if op == wantOp && step == wantStep {
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {} // never returns
		}
		return nil
	}
}

// startRuntime starts background services (DNS server, tap pool) and
// reconciles VMs recorded as running. Called by Serve before serving.
func (d *Daemon) startRuntime(ctx context.Context) {
	rt := &d.rt
	if rt.mgr == nil {
		if rt.disabled != "" {
			d.logger.Info("vm lifecycle disabled", "reason", rt.disabled)
		}
		return
	}
	if err := rt.dns.Start(ctx); err != nil {
		d.logger.Error("dns server disabled", "addr", d.cfg.Network.DNSAddr, "err", err)
	}
	if _, err := rt.mgr.Reconcile(ctx); err != nil {
		d.logger.Error("reconcile", "err", err)
	}
	// The ssh_config is written without fsync: a crash may have left it
	// stale.
	if _, err := d.refreshSSHConfig(ctx); err != nil {
		d.logger.Warn("refresh ssh config", "err", err)
	}
	// Guest clocks stop while paused and do not follow the host's NTP:
	// step them back in line now and then (vm.Manager.KeepClocks).
	cctx, cancel := context.WithCancel(ctx)
	rt.clocksStop, rt.clocksDone = cancel, make(chan struct{})
	go func() {
		defer close(rt.clocksDone)
		rt.mgr.KeepClocks(cctx, vm.DefaultClockInterval)
	}()
	// The bridge (and with it the tap pool and resolver routing) is set up
	// when a VM first needs it; here only when VMs already run. A daemon
	// that only keeps records never touches the host's network. After
	// reconcile, so its reclaim of stale taps never races the pool.
	if vms, err := d.store.ListVMs(ctx); err == nil {
		for _, v := range vms {
			if v.State == model.StateRunning {
				if err := rt.net.EnsureBridge(ctx); err != nil {
					d.logger.Error("bridge", "err", err)
				}
				break
			}
		}
	}
}

// lazyNet is the network manager as the VM manager sees it: the first
// successful EnsureBridge also routes the DNS domain to the daemon's DNS
// server through systemd-resolved where present. Its mutex is a leaf lock
// (taken inside a VM's lock, never the other way round).
type lazyNet struct {
	*netw.Manager
	dns    *vmdns.Server
	logger *slog.Logger

	mu     sync.Mutex
	routed bool
}

// EnsureBridge implements vm.Network. Calls are serialised: creating the
// bridge is not safe to race (two concurrent first starts would both try).
func (n *lazyNet) EnsureBridge(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.Manager.EnsureBridge(ctx); err != nil {
		return err
	}
	if n.routed {
		return nil
	}
	n.routed = true
	if err := n.RouteDNS(ctx, n.dns.Addr(), DNSDomain, true); err != nil {
		if errors.Is(err, privops.ErrNotSupported) {
			n.logger.Info("resolver routing unavailable; use the DNS server directly", "addr", n.dns.Addr(), "reason", err)
		} else {
			n.logger.Warn("resolver routing", "err", err)
		}
	}
	return nil
}

// stopRuntime stops background services; running VMs keep running.
func (d *Daemon) stopRuntime() {
	rt := &d.rt
	if rt.mgr == nil {
		return
	}
	if rt.clocksStop != nil {
		rt.clocksStop()
		<-rt.clocksDone
	}
	_ = rt.mgr.Close()
	_ = rt.fwds.Close()
	_ = rt.dns.Close()
	if err := rt.net.Close(); err != nil {
		d.logger.Warn("closing the tap pool", "err", err)
	}
}

// daemonArtifacts gives the manager the daemon's image and kernel stores.
type daemonArtifacts struct{ d *Daemon }

// EnsureImage returns the image; the default image is built on first use.
func (a daemonArtifacts) EnsureImage(ctx context.Context, name string) (*model.Image, error) {
	img, err := a.d.images.Get(ctx, name)
	if err == nil {
		return img, nil
	}
	if !errors.Is(err, model.ErrNotFound) {
		return nil, err
	}
	if name != image.DefaultImageName {
		return nil, rpc.Errorf(rpc.CodeNotFound, "image %q does not exist: build, pull or register it first (see `banger image --help`)", name)
	}
	progress.Stage(ctx, "image", "building the default image "+name+" (first use; this takes a few minutes)")
	return a.d.images.Build(ctx, image.BuildOptions{Name: name, Kernel: a.d.cfg.VM.Kernel})
}

// EnsureKernel returns the kernel, pulling it when missing (kernels.go).
func (a daemonArtifacts) EnsureKernel(ctx context.Context, name string) (*model.Kernel, error) {
	return a.d.ensureKernel(ctx, name)
}

// registerLifecycle registers the vm.start/stop/restart/kill/set/stats
// methods.
func (d *Daemon) registerLifecycle() {
	s := d.srv
	d.handleVM(api.MethodVMStart, rpc.Typed(func(ctx context.Context, p api.Ref) (*model.VM, error) {
		return d.lifecycleOp(ctx, "vm.start", p.Ref, func(ctx context.Context, m *vm.Manager, v *model.VM) (*model.VM, error) {
			return m.Start(ctx, v)
		})
	}))
	d.handleVM(api.MethodVMStop, rpc.Typed(func(ctx context.Context, p api.VMStopParams) (*model.VM, error) {
		var o vm.StopOptions
		if p.Timeout != "" {
			t, err := time.ParseDuration(p.Timeout)
			if err != nil || t <= 0 {
				return nil, rpc.Errorf(rpc.CodeBadRequest, "timeout %q: want a positive duration such as 2m", p.Timeout)
			}
			o.Graceful = t
		}
		return d.lifecycleOp(ctx, "vm.stop", p.Ref, func(ctx context.Context, m *vm.Manager, v *model.VM) (*model.VM, error) {
			return m.StopWith(ctx, v, o)
		})
	}))
	d.handleVM(api.MethodVMRestart, rpc.Typed(func(ctx context.Context, p api.Ref) (*model.VM, error) {
		return d.lifecycleOp(ctx, "vm.restart", p.Ref, func(ctx context.Context, m *vm.Manager, v *model.VM) (*model.VM, error) {
			return m.Restart(ctx, v)
		})
	}))
	d.handleVM(api.MethodVMKill, rpc.Typed(func(ctx context.Context, p api.VMKillParams) (*model.VM, error) {
		sig, err := ParseSignal(p.Signal)
		if err != nil {
			return nil, rpc.Errorf(rpc.CodeBadRequest, "%w", err)
		}
		return d.lifecycleOp(ctx, "", p.Ref, func(ctx context.Context, m *vm.Manager, v *model.VM) (*model.VM, error) {
			return m.Kill(ctx, v, sig)
		})
	}))
	d.handleVM(api.MethodVMSet, rpc.Typed(func(ctx context.Context, p api.VMSetParams) (*model.VM, error) {
		if p.VCPU == nil && p.MemoryMiB == nil && p.DiskSizeMiB == nil && p.NAT == nil {
			return nil, rpc.Errorf(rpc.CodeBadRequest, "nothing to change: give --vcpu, --memory, --disk-size or --nat/--no-nat")
		}
		return d.lifecycleOp(ctx, "", p.Ref, func(ctx context.Context, m *vm.Manager, v *model.VM) (*model.VM, error) {
			return m.Set(ctx, v, vm.Changes{VCPU: p.VCPU, MemoryMiB: p.MemoryMiB, DiskSizeMiB: p.DiskSizeMiB, NAT: p.NAT})
		})
	}))
	s.Handle(api.MethodVMStats, rpc.Typed(func(ctx context.Context, p api.Ref) (*api.VMStats, error) {
		var out *api.VMStats
		_, err := d.lifecycleOp(ctx, "", p.Ref, func(ctx context.Context, m *vm.Manager, v *model.VM) (*model.VM, error) {
			st, err := m.Stats(ctx, v)
			if err != nil {
				return v, err
			}
			out = statsResult(v, st)
			return v, nil
		})
		return out, err
	}))
}

// lifecycleOp resolves ref and runs fn holding the VM's lock; kind, when
// set, registers a daemon operation (with live stages).
func (d *Daemon) lifecycleOp(ctx context.Context, kind, ref string, fn func(ctx context.Context, m *vm.Manager, v *model.VM) (*model.VM, error)) (*model.VM, error) {
	if d.rt.mgr == nil {
		return nil, rpc.Errorf(rpc.CodeNotSupported, "VM lifecycle unavailable: %s", d.rt.disabled)
	}
	if kind != "" {
		var op *Op
		ctx, op = d.ops.Begin(ctx, kind, ref)
		var res *model.VM
		var err error
		defer func() { op.End(err) }()
		res, err = d.withVM(ctx, ref, func(v *model.VM) (*model.VM, error) { return fn(ctx, d.rt.mgr, v) })
		err = lifecycleError(err)
		return res, err
	}
	res, err := d.withVM(ctx, ref, func(v *model.VM) (*model.VM, error) { return fn(ctx, d.rt.mgr, v) })
	return res, lifecycleError(err)
}

// lifecycleError gives manager errors their RPC codes.
func lifecycleError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, vm.ErrBadState), errors.Is(err, model.ErrInvalidSize):
		return rpc.Errorf(rpc.CodeBadRequest, "%w", err)
	}
	return err
}

func statsResult(v *model.VM, st *vm.Stats) *api.VMStats {
	du := func(u vm.DiskUsage) api.DiskUsage {
		return api.DiskUsage{Path: u.Path, SizeBytes: u.SizeBytes, AllocatedBytes: u.AllocatedBytes}
	}
	return &api.VMStats{
		Name: v.Name, ID: v.ID, State: v.State, PID: st.PID, CPUSeconds: st.CPUSeconds,
		RSSBytes: st.RSSBytes, UptimeSeconds: int64(st.Uptime.Seconds()),
		VCPU: v.VCPU, MemoryMiB: v.MemoryMiB,
		RootDisk: du(st.RootDisk), WorkDisk: du(st.WorkDisk),
	}
}

// ParseSignal parses a signal name ("KILL", "SIGTERM", "term") or number;
// "" is SIGKILL.
func ParseSignal(s string) (syscall.Signal, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return syscall.SIGKILL, nil
	}
	if n, err := strconv.Atoi(s); err == nil {
		if n < 1 || n > 64 {
			return 0, fmt.Errorf("signal number %d out of range 1-64", n)
		}
		return syscall.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("unknown signal %q (use a name like KILL, TERM, INT or a number)", s)
}
