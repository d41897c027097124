// Package qemu is the QEMU vmm.Driver: KVM when /dev/kvm really works, TCG
// emulation otherwise; the microvm machine by default (closest to
// Firecracker's device model), q35 as the fallback; virtio-blk and
// virtio-net devices; the serial console appended to the VM log; QMP over a
// unix socket for status, powerdown, quit and stop/cont.
//
// Files in Spec.RuntimeDir: qmp.sock (QMP, also the process marker) and
// qemu.pid (written by QEMU's -pidfile).
package qemu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/privops"
	"github.com/bangerdev/banger/internal/vmm"
)

// Machine types.
const (
	MachineMicrovm = "microvm"
	MachineQ35     = "q35"
)

// Accelerators.
const (
	AccelKVM = "kvm"
	AccelTCG = "tcg"
)

// File names inside Spec.RuntimeDir.
const (
	QMPSocketName = "qmp.sock"
	PIDFileName   = "qemu.pid"
)

// TSCEarlyKHzArg and TSCReliableArg are the kernel parameters banger adds
// on microvm under TCG (see tsc.go). microvm has no HPET or PM timer: the
// guest kernel could only calibrate its TSC against the PIT (~1 boot in 4
// hung doing so), so it is told the rate, the host's (a TCG guest's TSC
// runs at it). And its clocksource watchdog could only check the TSC
// against jiffies, which under TCG are the unreliable ones: it marked the
// TSC unstable within 2 s of boot and the guest fell back to
// refined-jiffies (clocks 22% fast here). tsc=reliable keeps the TSC.
//
// RebootTripleFaultArg: microvm has no ACPI, PCI or i8042, so a guest
// kernel's default reset path (ACPI, then the keyboard controller polled
// twenty times, then port 0xcf9) finds nothing to reset it until it falls
// through to a triple fault, after a delay that grew past 3 s on a loaded
// host; that is the fast stop's reset (the agent's sysrq b). reboot=t goes
// to the triple fault at once, which QEMU (-no-reboot) turns into its exit.
const (
	TSCEarlyKHzArg       = "tsc_early_khz="
	TSCReliableArg       = "tsc=reliable"
	RebootTripleFaultArg = "reboot=t"
)

// Config selects the binary, machine and accelerator.
type Config struct {
	Binary       string        // default "qemu-system-x86_64"
	Machine      string        // "microvm" (default) or "q35"
	Accel        string        // "" = kvm when usable else tcg; "kvm" or "tcg" to force
	KVMDevice    string        // default /dev/kvm
	StartTimeout time.Duration // until QMP answers "running"; default 60s
	// Runner runs the QEMU probe of the KVM check; nil = hostexec.Real{}.
	Runner hostexec.Runner
	// TSCKHz reports the host's TSC rate in kHz and its source, asked once
	// at the first TCG start; nil = HostTSCKHz.
	TSCKHz func() (khz int64, source string, err error)
}

// Driver implements vmm.Driver, vmm.Pauser, vmm.Snapshotter,
// vmm.Versioner and vmm.DriveResizer with QEMU.
type Driver struct {
	cfg      Config
	launcher vmm.Launcher
	log      *slog.Logger

	kvmProbe  func(dev string) error // KVMUsable; replaced in tests
	accelOnce sync.Once
	accel     string
	accelWhy  string

	versionOnce sync.Once
	version     string
	versionErr  error

	tscOnce sync.Once
	tscKHz  int64
}

// New returns a QEMU driver. launcher starts and signals the processes.
func New(cfg Config, launcher vmm.Launcher, logger *slog.Logger) (*Driver, error) {
	if cfg.Binary == "" {
		cfg.Binary = "qemu-system-x86_64"
	}
	if cfg.Machine == "" {
		cfg.Machine = MachineMicrovm
	}
	if cfg.Machine != MachineMicrovm && cfg.Machine != MachineQ35 {
		return nil, fmt.Errorf("qemu machine %q: want %q or %q", cfg.Machine, MachineMicrovm, MachineQ35)
	}
	if cfg.Accel != "" && cfg.Accel != AccelKVM && cfg.Accel != AccelTCG {
		return nil, fmt.Errorf("qemu accel %q: want %q, %q or empty (auto)", cfg.Accel, AccelKVM, AccelTCG)
	}
	if cfg.KVMDevice == "" {
		cfg.KVMDevice = "/dev/kvm"
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 60 * time.Second
	}
	if cfg.Runner == nil {
		cfg.Runner = hostexec.Real{}
	}
	if cfg.TSCKHz == nil {
		cfg.TSCKHz = HostTSCKHz
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Driver{cfg: cfg, launcher: launcher, log: logger, kvmProbe: KVMUsable}, nil
}

// Name implements vmm.Driver.
func (d *Driver) Name() string { return "qemu" }

// Capabilities implements vmm.Driver: pause via stop/cont; snapshots via
// migration to a file (Save, Spec.RestoreFrom); no Firecracker-style vsock
// (it needs a vhost-user backend).
func (d *Driver) Capabilities() vmm.Capabilities {
	return vmm.Capabilities{Pause: true, Snapshots: true}
}

// KVMUsable reports whether dev is a working KVM device (see kvmProbe):
// opening it is not enough, many hosts and containers expose a node that
// fails later.
func KVMUsable(dev string) error { return kvmProbe(dev, 3*time.Second) }

// Accel returns the accelerator Start will use and why.
func (d *Driver) Accel() (accel, reason string) {
	d.accelOnce.Do(func() {
		switch d.cfg.Accel {
		case AccelKVM, AccelTCG:
			d.accel, d.accelWhy = d.cfg.Accel, "set in config"
		default:
			if err := d.kvmProbe(d.cfg.KVMDevice); err != nil {
				d.accel, d.accelWhy = AccelTCG, "kvm not usable: "+err.Error()
			} else if err := d.probeQEMUKVM(); err != nil {
				d.accel, d.accelWhy = AccelTCG, "kvm not usable by qemu: "+err.Error()
			} else {
				d.accel, d.accelWhy = AccelKVM, d.cfg.KVMDevice+" works"
			}
		}
		d.log.Info("qemu accelerator", "accel", d.accel, "reason", d.accelWhy)
	})
	return d.accel, d.accelWhy
}

// probeQEMUKVM creates (without running) this machine type under KVM with
// the CPU model Start uses: some hosts pass the ioctl probe but make QEMU
// abort while loading the vCPU's MSRs (seen here: "failed to set MSR 0x10a").
func (d *Driver) probeQEMUKVM() error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	machine := "q35"
	if d.cfg.Machine == MachineMicrovm {
		machine = "microvm,x-option-roms=off,pit=on,pic=on,isa-serial=on,rtc=on,pcie=off"
	}
	_, err := d.cfg.Runner.Run(ctx, hostexec.Cmd{
		Name:  d.cfg.Binary,
		Args:  []string{"-machine", machine, "-accel", "kvm", "-cpu", "host", "-m", "64", "-nodefaults", "-no-user-config", "-display", "none", "-S", "-qmp", "stdio"},
		Stdin: strings.NewReader(`{"execute":"qmp_capabilities"}` + "\n" + `{"execute":"quit"}` + "\n"),
	})
	return err
}

// TSCKHz returns the guest TSC rate the driver puts on TCG kernel command
// lines: the host's (asked once), or FallbackTSCKHz when it cannot be
// found.
func (d *Driver) TSCKHz() int64 {
	d.tscOnce.Do(func() {
		khz, source, err := d.cfg.TSCKHz()
		if err != nil || khz <= 0 {
			d.log.Warn("host tsc rate unknown; guest clocks under tcg may run off until the clock sync steps them",
				"err", err, "assumed_khz", FallbackTSCKHz)
			khz = FallbackTSCKHz
		} else {
			d.log.Info("host tsc rate", "khz", khz, "source", source)
		}
		d.tscKHz = khz
	})
	return d.tscKHz
}

// qemuValue escapes a value for QEMU's comma-separated option syntax.
func qemuValue(s string) string { return strings.ReplaceAll(s, ",", ",,") }

var serialID = regexp.MustCompile(`^[A-Za-z0-9_-]{1,20}$`)

// KernelCmdline returns spec.Cmdline plus the machine-specific arguments:
// on microvm reboot=t, and under TCG also tsc_early_khz=tscKHz (the host's TSC rate, which a
// TCG guest's TSC runs at) and tsc=reliable, each unless the command line
// already sets it.
func KernelCmdline(spec vmm.Spec, machine, accel string, tscKHz int64) string {
	args := strings.TrimSpace(spec.Cmdline)
	if machine != MachineMicrovm {
		return args
	}
	if !hasParam(args, "reboot") {
		args = strings.TrimSpace(args + " " + RebootTripleFaultArg)
	}
	if accel != AccelTCG {
		return args
	}
	if tscKHz > 0 && !strings.Contains(args, TSCEarlyKHzArg) {
		args = strings.TrimSpace(args + " " + TSCEarlyKHzArg + strconv.FormatInt(tscKHz, 10))
	}
	if !hasParam(args, "tsc") {
		args = strings.TrimSpace(args + " " + TSCReliableArg)
	}
	return args
}

// hasParam reports whether a kernel command line sets the parameter key.
func hasParam(cmdline, key string) bool {
	for _, f := range strings.Fields(cmdline) {
		if k, _, _ := strings.Cut(f, "="); k == key {
			return true
		}
	}
	return false
}

// Args returns the full QEMU command line (argv[0] included) for spec;
// tscKHz is the host's TSC rate (Driver.TSCKHz), used under TCG.
func Args(binary string, spec vmm.Spec, machine, accel string, tscKHz int64) []string {
	qmp := filepath.Join(spec.RuntimeDir, QMPSocketName)
	name := spec.Name
	if name == "" {
		name = spec.VMID
	}
	a := []string{binary, "-name", "guest=" + qemuValue(name)}
	blk, netdev := "virtio-blk-pci", "virtio-net-pci"
	switch machine {
	case MachineMicrovm:
		a = append(a, "-machine", "microvm,x-option-roms=off,pit=on,pic=on,isa-serial=on,rtc=on,pcie=off")
		blk, netdev = "virtio-blk-device", "virtio-net-device"
	default:
		a = append(a, "-machine", "q35")
	}
	if accel == AccelKVM {
		a = append(a, "-accel", "kvm", "-cpu", "host")
	} else {
		a = append(a, "-accel", "tcg,thread=multi", "-cpu", "max")
	}
	a = append(a,
		"-smp", strconv.Itoa(spec.VCPU),
		"-m", strconv.FormatInt(spec.MemoryMiB, 10),
		"-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
		"-chardev", "file,id=serial0,path="+qemuValue(spec.LogPath)+",append=on",
		"-serial", "chardev:serial0",
		"-kernel", spec.Kernel,
	)
	if spec.Initrd != "" {
		a = append(a, "-initrd", spec.Initrd)
	}
	a = append(a, "-append", KernelCmdline(spec, machine, accel, tscKHz))
	for i, dr := range spec.Drives {
		id := "drive" + strconv.Itoa(i)
		opt := "if=none,id=" + id + ",file=" + qemuValue(dr.Path) + ",format=raw,discard=unmap"
		if dr.ReadOnly {
			opt += ",readonly=on"
		}
		dev := blk + ",drive=" + id
		if serialID.MatchString(dr.ID) {
			dev += ",serial=" + dr.ID
		}
		a = append(a, "-drive", opt, "-device", dev)
	}
	for i, n := range spec.Net {
		id := "net" + strconv.Itoa(i)
		a = append(a, "-netdev", "tap,id="+id+",ifname="+qemuValue(n.Tap)+",script=no,downscript=no")
		dev := netdev + ",netdev=" + id
		if n.MAC != "" {
			dev += ",mac=" + n.MAC
		}
		a = append(a, "-device", dev)
	}
	a = append(a, serialPortArgs(spec, machine)...)
	if spec.RestoreFrom != "" {
		if uri, err := migrationURI(spec.RestoreFrom, false); err == nil {
			a = append(a, "-incoming", uri)
		}
	}
	a = append(a,
		"-qmp", "unix:"+qemuValue(qmp)+",server=on,wait=off",
		"-pidfile", filepath.Join(spec.RuntimeDir, PIDFileName),
	)
	return a
}

// args is Args with this driver's binary, machine and TSC rate.
func (d *Driver) args(spec vmm.Spec, accel string) []string {
	var khz int64
	if accel == AccelTCG {
		khz = d.TSCKHz()
	}
	return Args(d.cfg.Binary, spec, d.cfg.Machine, accel, khz)
}

// marker is the cmdline evidence of this VM's QEMU: its QMP socket option.
func marker(qmpPath string) string { return "unix:" + qemuValue(qmpPath) + ",server=on" }

func (d *Driver) handle(spec vmm.Spec, pid int, accel string) *vmm.Handle {
	qmp := filepath.Join(spec.RuntimeDir, QMPSocketName)
	return &vmm.Handle{
		Driver:    d.Name(),
		PID:       pid,
		PIDFile:   filepath.Join(spec.RuntimeDir, PIDFileName),
		APISocket: qmp,
		LogPath:   spec.LogPath,
		Accel:     accel,
		Comm:      privops.ProcessComm(d.cfg.Binary),
		Marker:    marker(qmp),
	}
}

// Start implements vmm.Driver.
func (d *Driver) Start(ctx context.Context, spec vmm.Spec) (*vmm.Handle, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if spec.VsockCID != 0 {
		return nil, fmt.Errorf("qemu: vsock: %w (use the firecracker driver, or start without vsock)", vmm.ErrUnsupported)
	}
	qmpPath, err := vmm.SocketPath(spec.RuntimeDir, QMPSocketName)
	if err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	if spec.RestoreFrom != "" {
		if _, err := migrationURI(spec.RestoreFrom, false); err != nil {
			return nil, fmt.Errorf("qemu: restore: %w", err)
		}
	}
	if h, err := d.Find(ctx, spec); err == nil {
		return nil, fmt.Errorf("qemu: vm %s is already running (pid %d): %w", spec.VMID, h.PID, model.ErrAlreadyExists)
	}
	for _, stale := range []string{qmpPath, filepath.Join(spec.RuntimeDir, PIDFileName)} {
		if err := os.Remove(stale); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("qemu: remove stale %s: %w", stale, err)
		}
	}
	accel, _ := d.Accel()
	argv := d.args(spec, accel)
	pid, err := d.launcher.LaunchVMM(ctx, privops.LaunchSpec{
		Argv: argv, Dir: spec.RuntimeDir, LogPath: spec.LogPath, UID: spec.UID, GID: spec.GID,
	})
	if err != nil {
		return nil, fmt.Errorf("qemu: start vm %s: %w", spec.VMID, err)
	}
	h := d.handle(spec, pid, accel)
	fail := func(err error) (*vmm.Handle, error) {
		if kerr := vmm.KillAndReap(d.launcher, h.Identity()); kerr != nil {
			err = errors.Join(err, fmt.Errorf("kill failed qemu: %w", kerr))
		}
		return nil, vmm.WithLogTail(fmt.Errorf("qemu: start vm %s: %w", spec.VMID, err), spec.LogPath)
	}
	var status Status
	err = vmm.WaitStartup(ctx, h.Identity(), d.cfg.StartTimeout, func(ctx context.Context) bool {
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		q, err := DialQMP(qctx, qmpPath)
		if err != nil {
			return false
		}
		defer q.Close()
		status, err = q.QueryStatus(qctx)
		return err == nil && status.Status != "prelaunch" && status.Status != "inmigrate"
	})
	if err != nil {
		return fail(err)
	}
	if spec.RestoreFrom != "" && !status.Running && status.Status == "paused" {
		// The state was saved with the guest paused (Save stops it first);
		// the restored guest keeps that run state until told to continue.
		if err := d.command(ctx, h, "cont"); err != nil {
			return fail(fmt.Errorf("resume restored guest: %w", err))
		}
		status.Running = true
	}
	if !status.Running {
		return fail(fmt.Errorf("guest is %q, not running", status.Status))
	}
	if got, err := vmm.ReadPIDFile(h.PIDFile); err != nil || got != pid {
		return fail(fmt.Errorf("pid file %s holds %d, want %d (%v)", h.PIDFile, got, pid, err))
	}
	d.log.Info("qemu started", "vm", spec.VMID, "pid", pid, "accel", accel, "machine", d.cfg.Machine)
	return h, nil
}

func (d *Driver) qmp(ctx context.Context, h *vmm.Handle) (*QMP, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return DialQMP(ctx, h.APISocket)
}

// Shutdown implements vmm.Driver with QMP system_powerdown (an ACPI power
// button press): the guest decides what to do with it; one without an ACPI
// handler (acpid, systemd-logind) ignores it, so callers must follow up with
// Wait under a deadline and Kill.
func (d *Driver) Shutdown(ctx context.Context, h *vmm.Handle) error {
	return d.command(ctx, h, "system_powerdown")
}

// Quit asks QEMU to exit immediately (QMP quit): like pulling the plug, but
// QEMU flushes its block devices first.
func (d *Driver) Quit(ctx context.Context, h *vmm.Handle) error {
	return d.command(ctx, h, "quit")
}

// Pause implements vmm.Pauser (QMP stop).
func (d *Driver) Pause(ctx context.Context, h *vmm.Handle) error { return d.command(ctx, h, "stop") }

// Resume implements vmm.Pauser (QMP cont).
func (d *Driver) Resume(ctx context.Context, h *vmm.Handle) error { return d.command(ctx, h, "cont") }

// Status returns QEMU's run state (query-status).
func (d *Driver) Status(ctx context.Context, h *vmm.Handle) (Status, error) {
	if !vmm.Alive(h.Identity()) {
		return Status{}, fmt.Errorf("qemu pid %d: %w", h.PID, model.ErrNotRunning)
	}
	q, err := d.qmp(ctx, h)
	if err != nil {
		return Status{}, err
	}
	defer q.Close()
	return q.QueryStatus(ctx)
}

// command runs one argument-less QMP command; a VMM already gone is nil for
// the stop commands and ErrNotRunning for stop/cont.
func (d *Driver) command(ctx context.Context, h *vmm.Handle, cmd string) error {
	if h == nil || !vmm.Alive(h.Identity()) {
		if cmd == "stop" || cmd == "cont" {
			return fmt.Errorf("qemu %s: %w", cmd, model.ErrNotRunning)
		}
		return nil
	}
	q, err := d.qmp(ctx, h)
	if err != nil {
		if !vmm.Alive(h.Identity()) && cmd != "stop" && cmd != "cont" {
			return nil
		}
		return fmt.Errorf("qemu %s: %w", cmd, err)
	}
	defer q.Close()
	err = q.Execute(ctx, cmd, nil, nil)
	if err != nil && cmd == "quit" && !vmm.Alive(h.Identity()) {
		return nil // QEMU may close the socket before answering
	}
	return err
}

// Kill implements vmm.Driver.
func (d *Driver) Kill(ctx context.Context, h *vmm.Handle, sig syscall.Signal) error {
	return vmm.Signal(ctx, d.launcher, h, sig)
}

// Wait implements vmm.Driver.
func (d *Driver) Wait(ctx context.Context, h *vmm.Handle) error {
	return vmm.Wait(ctx, h)
}

// Find implements vmm.Driver: qemu.pid → /proc → comm + QMP socket in the
// command line. The accelerator is read back from the command line.
func (d *Driver) Find(ctx context.Context, spec vmm.Spec) (*vmm.Handle, error) {
	h := d.handle(spec, 0, "")
	pid, err := vmm.FindProcess(h.PIDFile, h.Comm, h.Marker)
	if err != nil {
		return nil, fmt.Errorf("qemu: find vm %s: %w", spec.VMID, err)
	}
	h.PID = pid
	if cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline"); err == nil {
		args := strings.Split(string(cmdline), "\x00")
		for i := 0; i+1 < len(args); i++ {
			if args[i] == "-accel" {
				h.Accel, _, _ = strings.Cut(args[i+1], ",")
			}
		}
	}
	return h, nil
}
