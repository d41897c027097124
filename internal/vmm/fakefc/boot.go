package fakefc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/bangerdev/banger/internal/agent"
	"github.com/bangerdev/banger/internal/privops"
	"github.com/bangerdev/banger/internal/vmm"
	"github.com/bangerdev/banger/internal/vmm/qemu"
)

// qemuGuest boots the configured guest through the QEMU driver. QEMU is a
// child of the fake that dies with it (parent-death signal), and its serial
// console goes to the fake's stdout, like Firecracker's.
type qemuGuest struct {
	srv     *Server
	log     *slog.Logger
	driver  *qemu.Driver
	dir     string
	handle  *vmm.Handle
	exited  chan struct{}
	launchQ chan launchReq

	// vsockPorts are the emulated vsock ports (port -> virtio-serial
	// port name in the guest); see vsock.go.
	vsockPorts map[uint32]string
	vsock      *VsockBridge // while the guest has a vsock device
}

// DefaultVsockPorts are the vsock ports the fake emulates: banger's guest
// agent, which serves the same protocol on its virtio-serial port.
func DefaultVsockPorts() map[uint32]string {
	return map[uint32]string{agent.VsockPort: agent.PortName}
}

// newQEMUGuest keeps QEMU's files next to the API socket (so a SIGKILLed
// fake leaves nothing elsewhere), or in a temp dir when that path would be
// too long for QMP's unix socket.
func newQEMUGuest(srv *Server, sockPath string, logger *slog.Logger) (*qemuGuest, error) {
	dir := filepath.Join(filepath.Dir(sockPath), "fakefc-qemu")
	var err error
	// The longest socket name the fake makes there: QMP's, or a vsock
	// port's (see vsockSocket).
	longest := max(len(qemu.QMPSocketName), len(vsockSocketName(^uint32(0))))
	if len(dir)+1+longest > vmm.MaxSocketPath {
		dir, err = os.MkdirTemp("", "fakefc-")
	} else {
		err = os.MkdirAll(dir, 0o700)
	}
	if err != nil {
		return nil, err
	}
	g := &qemuGuest{srv: srv, log: logger, dir: dir, exited: make(chan struct{}), launchQ: make(chan launchReq), vsockPorts: DefaultVsockPorts()}
	go g.launcherThread()
	d, err := qemu.New(qemu.Config{Accel: os.Getenv(EnvQEMUAccel)}, g, logger)
	if err != nil {
		return nil, err
	}
	g.driver = d
	return g, nil
}

func (g *qemuGuest) cleanup() {
	if g.vsock != nil {
		_ = g.vsock.Close()
	}
	os.RemoveAll(g.dir)
}

// Exited is closed when QEMU exits.
func (g *qemuGuest) Exited() <-chan struct{} { return g.exited }

func (g *qemuGuest) Boot(ctx context.Context, cfg *Config) error {
	spec, err := g.spec(cfg)
	if err != nil {
		return err
	}
	return g.start(ctx, cfg, spec)
}

// Restore starts QEMU from the migration stream at statePath (written by
// Save) with the devices of cfg: the restored snapshot's configuration with
// the load request's overrides applied.
func (g *qemuGuest) Restore(ctx context.Context, cfg *Config, statePath string) error {
	spec, err := g.spec(cfg)
	if err != nil {
		return err
	}
	spec.RestoreFrom = statePath
	return g.start(ctx, cfg, spec)
}

// Save writes the paused guest's QEMU migration stream to path.
func (g *qemuGuest) Save(ctx context.Context, path string) error {
	if g.handle == nil {
		return errors.New("guest not started")
	}
	return g.driver.Save(ctx, g.handle, path)
}

// start binds the vsock socket when cfg has a vsock device (Firecracker
// binds it while building the VM, before the guest runs) and starts QEMU.
func (g *qemuGuest) start(ctx context.Context, cfg *Config, spec vmm.Spec) error {
	var bridge *VsockBridge
	if cfg.Vsock != nil {
		ports := map[uint32]string{}
		for p := range g.vsockPorts {
			ports[p] = g.vsockSocket(p)
		}
		uds := g.srv.hostPath(str(cfg.Vsock, "uds_path"))
		var err error
		if bridge, err = ListenVsock(uds, ports, g.log); err != nil {
			return err
		}
	}
	h, err := g.driver.Start(ctx, spec)
	if err != nil {
		if bridge != nil {
			_ = bridge.Close()
			_ = os.Remove(bridge.Path)
		}
		return err
	}
	if g.vsock != nil {
		_ = g.vsock.Close()
	}
	g.handle, g.vsock = h, bridge
	go func() {
		_ = g.driver.Wait(context.Background(), h)
		close(g.exited)
	}()
	return nil
}

// vsockSocket is the host socket of the virtio-serial port that emulates
// vsock port p.
func (g *qemuGuest) vsockSocket(p uint32) string {
	return filepath.Join(g.dir, vsockSocketName(p))
}

func vsockSocketName(p uint32) string { return fmt.Sprintf("vsock-%d.sock", p) }

// spec is the QEMU spec of a Firecracker configuration. A vsock device
// becomes one virtio-serial port per emulated vsock port, with its host
// socket in the fake's QEMU directory (see vsock.go).
func (g *qemuGuest) spec(cfg *Config) (vmm.Spec, error) {
	var bs map[string]any
	if cfg.BootSource != nil {
		bs = *cfg.BootSource
	}
	spec := vmm.Spec{
		VMID: "fakefc", Name: g.srv.ID, RuntimeDir: g.dir,
		Kernel: g.srv.hostPath(str(bs, "kernel_image_path")), Cmdline: str(bs, "boot_args"),
		VCPU: 1, MemoryMiB: 128, LogPath: "/proc/self/fd/1", UID: -1, GID: -1,
	}
	if p := str(bs, "initrd_path"); p != "" {
		spec.Initrd = g.srv.hostPath(p)
	}
	if v, ok := cfg.Machine["vcpu_count"].(float64); ok {
		spec.VCPU = int(v)
	}
	if v, ok := cfg.Machine["mem_size_mib"].(float64); ok {
		spec.MemoryMiB = int64(v)
	}
	// root device first, then the others in the order they were added
	order := append([]string(nil), cfg.DriveOrder...)
	sort.SliceStable(order, func(i, j int) bool {
		ri, _ := cfg.Drives[order[i]]["is_root_device"].(bool)
		rj, _ := cfg.Drives[order[j]]["is_root_device"].(bool)
		return ri && !rj
	})
	for _, id := range order {
		d := cfg.Drives[id]
		root, _ := d["is_root_device"].(bool)
		ro, _ := d["is_read_only"].(bool)
		spec.Drives = append(spec.Drives, vmm.Drive{ID: id, Path: g.srv.hostPath(str(d, "path_on_host")), Root: root, ReadOnly: ro})
	}
	if len(spec.Drives) > 0 && !spec.Drives[0].Root {
		spec.Drives[0].Root = true // Firecracker boots without a root drive; QEMU's spec wants one first
		for i := range spec.Drives[1:] {
			spec.Drives[i+1].Root = false
		}
	}
	for _, id := range cfg.NetOrder {
		n := cfg.Nets[id]
		spec.Net = append(spec.Net, vmm.NetIface{Tap: str(n, "host_dev_name"), MAC: str(n, "guest_mac")})
	}
	if cfg.Vsock != nil {
		ports := make([]uint32, 0, len(g.vsockPorts))
		for p := range g.vsockPorts {
			ports = append(ports, p)
		}
		slices.Sort(ports) // the same device order at boot and restore
		for _, p := range ports {
			sock := g.vsockSocket(p)
			if len(sock) > vmm.MaxSocketPath {
				err := fmt.Errorf("socket path %s is longer than %d bytes", sock, vmm.MaxSocketPath)
				return vmm.Spec{}, fmt.Errorf("vsock port %d: %w", p, err)
			}
			spec.SerialPorts = append(spec.SerialPorts, vmm.SerialPort{Name: g.vsockPorts[p], Socket: sock})
		}
	}
	return spec, nil
}

func (g *qemuGuest) CtrlAltDel(ctx context.Context) error {
	if g.handle == nil {
		return errors.New("guest not started")
	}
	return g.driver.Shutdown(ctx, g.handle)
}

func (g *qemuGuest) Pause(ctx context.Context) error { return g.driver.Pause(ctx, g.handle) }

func (g *qemuGuest) Resume(ctx context.Context) error { return g.driver.Resume(ctx, g.handle) }

// Stop ends QEMU (SIGTERM, then SIGKILL after 5 s).
func (g *qemuGuest) Stop(ctx context.Context) error {
	if g.handle == nil {
		return nil
	}
	_ = g.driver.Kill(ctx, g.handle, syscall.SIGTERM)
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := g.driver.Wait(wctx, g.handle); err != nil {
		_ = g.driver.Kill(ctx, g.handle, syscall.SIGKILL)
		return g.driver.Wait(ctx, g.handle)
	}
	return nil
}

type launchReq struct {
	spec privops.LaunchSpec
	resp chan launchResp
}

type launchResp struct {
	pid int
	err error
}

// launcherThread starts children from one locked OS thread that never
// exits: Linux sends the parent-death signal when the *thread* that forked
// the child exits, so it must outlive the children.
func (g *qemuGuest) launcherThread() {
	runtime.LockOSThread()
	for req := range g.launchQ {
		pid, err := g.startChild(req.spec)
		req.resp <- launchResp{pid, err}
	}
}

func (g *qemuGuest) startChild(spec privops.LaunchSpec) (int, error) {
	path, err := exec.LookPath(spec.Argv[0])
	if err != nil {
		return 0, err
	}
	logf, err := os.OpenFile(spec.LogPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	cmd := &exec.Cmd{Path: path, Args: spec.Argv, Dir: spec.Dir, Stdout: logf, Stderr: logf,
		SysProcAttr: &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	go func() { _ = cmd.Wait() }()
	return cmd.Process.Pid, nil
}

// LaunchVMM implements vmm.Launcher for the QEMU driver inside the fake.
func (g *qemuGuest) LaunchVMM(ctx context.Context, spec privops.LaunchSpec) (int, error) {
	if len(spec.Argv) == 0 || !strings.HasPrefix(filepath.Base(spec.Argv[0]), "qemu-system-") {
		return 0, fmt.Errorf("fakefc launches only qemu, not %v", spec.Argv)
	}
	resp := make(chan launchResp, 1)
	select {
	case g.launchQ <- launchReq{spec, resp}:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	r := <-resp
	return r.pid, r.err
}

// SignalVMM implements vmm.Launcher with the identity-checked local signal.
func (g *qemuGuest) SignalVMM(ctx context.Context, id privops.ProcessIdentity, sig syscall.Signal) error {
	return privops.NewLocal(nil, nil).SignalVMM(ctx, id, sig)
}
