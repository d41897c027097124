// Package firecracker is the Firecracker vmm.Driver: a small API client of
// its own over the unix socket (api.go, checked against the API specs of
// every tested release), `--version` detection with a supported range
// (>= 1.5.0, warning above the newest tested release), and two launch modes:
//
//   - plain: firecracker --api-sock RuntimeDir/firecracker.sock --id VMID,
//     launched detached as Spec.UID; the launcher writes
//     RuntimeDir/firecracker.pid; serial console and Firecracker's own log
//     lines go to Spec.LogPath (its stdout/stderr).
//   - jailer: a chroot per VM at <ChrootBase>/<exec name>/<VMID>/root, where
//     ChrootBase is root's own directory (the root helper pins it from its
//     configuration and refuses any other --chroot-base-dir). The chroot is
//     built by the privileged side (privops PrepareJail: kernel, initrd and
//     file drives hard linked in, or bind-mounted from another mount,
//     dm drives as device nodes, run/ and the serial/log/metrics files the
//     VMM's) and removed by it (RemoveJail); the driver never writes there.
//     `jailer --daemonize` without --new-pid-ns (so the jailer execs into
//     firecracker in place and the launched pid is firecracker's; the pid is
//     recorded in RuntimeDir/firecracker.pid), uid/gid dropped by the jailer.
//     The chroot-relative API socket /run/firecracker.socket is reached
//     through the short symlink RuntimeDir/api.sock (unix socket paths are
//     limited to 108 bytes); the vsock socket is /run/vsock.sock. --daemonize sends the jailed process's stdout to
//     /dev/null, so the serial console is written to <chroot>/serial.log via
//     PUT /serial (>= 1.14) and Handle.LogPath points there; on older
//     releases the console is not captured in jailer mode.
//
// # Paths the VMM sees
//
// Firecracker reopens a restored VM's host resources where the saved VM had
// them ("at the same relative paths", in its snapshot documentation). So
// no path of a VM's own files is absolute in what Firecracker records:
// under the jailer they are chroot-relative (/drive-<id>, /run/vsock.sock);
// in plain mode Firecracker runs in RuntimeDir and is given paths relative
// to it: drive <id> is drive-<id>, a symlink RuntimeDir/drive-<id> ->
// Drive.Path made by Start, and a vsock socket inside RuntimeDir is given by
// its base name. Kernel, initrd, logger and metrics keep host paths (a
// snapshot does not record them).
//
// # Snapshots (vmm.Snapshotter, Spec.RestoreFrom)
//
// A saved state is two files: Save(path) sends PATCH /vm Paused and PUT
// /snapshot/create {snapshot_type Full, snapshot_path path, mem_file_path
// path+".mem"} (MemFileSuffix) and leaves the guest paused. path is the one
// name the caller keeps and passes back as Spec.RestoreFrom; the memory file
// is its sibling and goes (moves, is removed) with it. Neither may exist.
//
// Start with Spec.RestoreFrom launches Firecracker as a boot does (same
// launcher, same stale-file removal), configures only the logger and
// metrics (the only resources Firecracker accepts before a load), makes the
// drive links, and sends PUT /snapshot/load {snapshot_path, mem_backend
// {File, path+".mem"}, resume_vm true, network_overrides}: every NIC
// eth<i> is re-pointed at Spec.Net[i].Tap, since tap names are host-global;
// the drive links and a vsock socket in RuntimeDir need no override (see
// above); a vsock socket outside RuntimeDir is re-pointed with
// vsock_override. Start returns once the load (with resume) was accepted.
//
// What each release can do: network_overrides exist from 1.14, vsock_override
// from 1.16; 1.5.0 loads (mem_backend, resume_vm) but cannot re-point a NIC.
// A restore that needs an override the running release lacks fails before
// anything is launched with an error wrapping vmm.ErrUnsupported and
// ErrVersionTooOld: boot cold. Capabilities().Snapshots is true in plain
// mode on releases >= 1.14.1 (`firecracker --version`, read once), where
// every banger VM (one tap, vsock in RuntimeDir) restores; on 1.5.0 it is
// false, though Save works and a spec without NICs restores. Jailer mode has
// no snapshots (Save and RestoreFrom return vmm.ErrUnsupported): the state
// files would have to be moved into and out of the chroot by the privileged
// side. VMMVersion (vmm.Versioner) is "firecracker X.Y.Z".
package firecracker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
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

// File names.
const (
	MemFileSuffix   = ".mem"             // a saved state's memory file: the state path plus this
	DriveLinkPrefix = "drive-"           // drive <id> is drive-<id> in RuntimeDir (plain) or the chroot (jailer)
	SocketName      = "firecracker.sock" // plain mode, in RuntimeDir
	PIDFileName     = "firecracker.pid"  // RuntimeDir
	JailerLinkName  = "api.sock"         // jailer mode: RuntimeDir symlink to the chroot socket
	JailedSocket    = "/run/firecracker.socket"
	JailedSerialLog = "/serial.log"
	JailedVsock     = "/run/vsock.sock"
)

// Config configures the driver.
type Config struct {
	Binary       string        // firecracker binary; default "firecracker"
	Jailer       *JailerConfig // nil = plain mode
	StartTimeout time.Duration // until the API socket answers; default 10s
	// LogLevel, when set, configures Firecracker's logger (PUT /logger) to
	// RuntimeDir/firecracker.log at that level (Error ... Trace). Without it
	// Firecracker logs to its stdout, i.e. the VM log.
	LogLevel string
	// Env is extra environment for the VMM and for `--version` (test doubles
	// read their options from it).
	Env []string
}

// JailerConfig enables jailer mode.
type JailerConfig struct {
	Binary string // default "jailer"
	// ChrootBase must equal the privileged side's jailer chroot base
	// (paths.Layout.JailerChrootBase; the root helper refuses any other).
	ChrootBase string
}

// JailOps are the privileged operations jailer mode needs besides the
// Launcher (privops.Ops has them): building and removing a VM's chroot.
type JailOps interface {
	PrepareJail(ctx context.Context, spec privops.JailSpec) (string, error)
	RemoveJail(ctx context.Context, spec privops.JailSpec) error
}

// Driver implements vmm.Driver, vmm.Pauser, vmm.Snapshotter and
// vmm.Versioner with Firecracker.
type Driver struct {
	cfg      Config
	launcher vmm.Launcher
	jail     JailOps // jailer mode
	runner   hostexec.Runner
	log      *slog.Logger

	versionOnce sync.Once
	version     Version
	versionErr  error
}

// New returns a Firecracker driver. runner runs `firecracker --version`.
func New(cfg Config, launcher vmm.Launcher, runner hostexec.Runner, logger *slog.Logger) (*Driver, error) {
	if cfg.Binary == "" {
		cfg.Binary = "firecracker"
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 10 * time.Second
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if j := cfg.Jailer; j != nil {
		if j.Binary == "" {
			j.Binary = "jailer"
		}
		if !filepath.IsAbs(j.ChrootBase) {
			return nil, fmt.Errorf("firecracker: jailer chroot base %q must be an absolute path", j.ChrootBase)
		}
		if !strings.Contains(filepath.Base(cfg.Binary), "firecracker") {
			return nil, fmt.Errorf("firecracker: the jailer only runs binaries whose name contains \"firecracker\" (got %s)", cfg.Binary)
		}
		if !filepath.IsAbs(cfg.Binary) {
			return nil, fmt.Errorf("firecracker: jailer mode needs the absolute path of the firecracker binary (got %s)", cfg.Binary)
		}
	}
	d := &Driver{cfg: cfg, launcher: launcher, runner: runner, log: logger}
	if cfg.Jailer != nil {
		jail, ok := launcher.(JailOps)
		if !ok {
			return nil, fmt.Errorf("firecracker: jailer mode needs privileged jail operations (PrepareJail, RemoveJail) from the launcher")
		}
		d.jail = jail
	}
	return d, nil
}

// Name implements vmm.Driver.
func (d *Driver) Name() string { return "firecracker" }

// Capabilities implements vmm.Driver. Snapshots depends on the release
// (see the package doc): the first call may run `firecracker --version`.
func (d *Driver) Capabilities() vmm.Capabilities {
	return vmm.Capabilities{Vsock: true, Pause: true, Snapshots: d.snapshotsSupported()}
}

// snapshotsSupported: plain mode on a release that can re-point a NIC on
// load. An undetectable version has no snapshots (Start then fails anyway).
func (d *Driver) snapshotsSupported() bool {
	if d.cfg.Jailer != nil {
		return false
	}
	v, err := d.BinaryVersion(context.Background())
	return err == nil && FeatureLevel(v).AtLeast(V1_14_1)
}

// VMMVersion implements vmm.Versioner: "firecracker X.Y.Z" from
// `firecracker --version`. A snapshot loads only into the release that
// wrote it (Firecracker's state file is versioned by release).
func (d *Driver) VMMVersion(ctx context.Context) (string, error) {
	v, err := d.BinaryVersion(ctx)
	if err != nil {
		return "", err
	}
	return "firecracker " + v.String(), nil
}

// BinaryVersion runs `firecracker --version` once and checks the supported
// range. A release newer than NewestTested is logged as a warning.
func (d *Driver) BinaryVersion(ctx context.Context) (Version, error) {
	d.versionOnce.Do(func() {
		res, err := d.runner.Run(ctx, hostexec.Cmd{Name: d.cfg.Binary, Args: []string{"--version"}, Env: d.cfg.Env})
		if err != nil {
			d.versionErr = fmt.Errorf("firecracker: %s --version: %w", d.cfg.Binary, err)
			return
		}
		v, err := ParseVersion(string(res.Stdout))
		if err != nil {
			d.versionErr = fmt.Errorf("firecracker: %s --version: %w", d.cfg.Binary, err)
			return
		}
		warn, err := CheckVersion(v)
		if err != nil {
			d.versionErr = fmt.Errorf("firecracker: %w", err)
			return
		}
		if warn != "" {
			d.log.Warn(warn)
		}
		d.version = v
	})
	return d.version, d.versionErr
}

// layout is where one VM's files live.
type layout struct {
	chroot  string // "" in plain mode
	socket  string // host path used to reach the API (symlink in jailer mode)
	pidFile string
	comm    string
	marker  string
}

func (d *Driver) layout(spec vmm.Spec) (layout, error) {
	execName := filepath.Base(d.cfg.Binary)
	if d.cfg.Jailer == nil {
		sock, err := vmm.SocketPath(spec.RuntimeDir, SocketName)
		if err != nil {
			return layout{}, err
		}
		return layout{socket: sock, pidFile: filepath.Join(spec.RuntimeDir, PIDFileName),
			comm: privops.ProcessComm(execName), marker: sock + "\x00"}, nil
	}
	link, err := vmm.SocketPath(spec.RuntimeDir, JailerLinkName)
	if err != nil {
		return layout{}, err
	}
	chroot := ChrootDir(d.cfg.Jailer.ChrootBase, d.cfg.Binary, spec.VMID)
	return layout{chroot: chroot, socket: link, pidFile: filepath.Join(spec.RuntimeDir, PIDFileName),
		comm: privops.ProcessComm(execName), marker: "--id=" + spec.VMID + "\x00"}, nil
}

// ChrootDir is the jailer's chroot for a VM: <base>/<exec name>/<id>/root.
func ChrootDir(base, binary, vmID string) string {
	return filepath.Join(base, filepath.Base(binary), vmID, "root")
}

func (d *Driver) handle(spec vmm.Spec, l layout, pid int) *vmm.Handle {
	h := &vmm.Handle{Driver: d.Name(), PID: pid, PIDFile: l.pidFile, APISocket: l.socket,
		LogPath: spec.LogPath, Accel: "kvm", Chroot: l.chroot, Comm: l.comm, Marker: l.marker}
	if l.chroot != "" {
		if _, err := os.Stat(filepath.Join(l.chroot, JailedSerialLog)); err == nil {
			h.LogPath = filepath.Join(l.chroot, JailedSerialLog)
		}
	}
	return h
}

// Start implements vmm.Driver.
func (d *Driver) Start(ctx context.Context, spec vmm.Spec) (*vmm.Handle, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if len(spec.SerialPorts) > 0 {
		return nil, fmt.Errorf("firecracker: virtio-serial ports: %w (use vsock)", vmm.ErrUnsupported)
	}
	l, err := d.layout(spec)
	if err != nil {
		return nil, fmt.Errorf("firecracker: %w", err)
	}
	for _, dr := range spec.Drives {
		if strings.ContainsAny(dr.ID, "/\x00") || dr.ID == "." || dr.ID == ".." {
			return nil, fmt.Errorf("firecracker: drive id %q: must be a file name (no '/', not . or ..)", dr.ID)
		}
	}
	version, err := d.BinaryVersion(ctx)
	if err != nil {
		return nil, err
	}
	if spec.RestoreFrom != "" {
		if err := d.checkRestore(spec, l, version); err != nil {
			return nil, err
		}
	}
	if h, err := d.Find(ctx, spec); err == nil {
		return nil, fmt.Errorf("firecracker: vm %s is already running (pid %d): %w", spec.VMID, h.PID, model.ErrAlreadyExists)
	}
	stales := []string{l.socket, l.pidFile}
	if spec.VsockPath != "" {
		stales = append(stales, spec.VsockPath) // firecracker will not bind over it
	}
	for _, stale := range stales {
		if err := os.Remove(stale); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("firecracker: remove stale %s: %w", stale, err)
		}
	}
	var (
		launch privops.LaunchSpec
		paths  guestPaths
	)
	if l.chroot == "" {
		launch = privops.LaunchSpec{
			Argv: []string{d.cfg.Binary, "--api-sock", l.socket, "--id", spec.VMID},
			Dir:  spec.RuntimeDir, LogPath: spec.LogPath, PIDFile: l.pidFile, UID: spec.UID, GID: spec.GID, Env: d.cfg.Env,
		}
		if paths, err = plainPaths(spec); err != nil {
			return nil, fmt.Errorf("firecracker: vm %s: %w", spec.VMID, err)
		}
	} else {
		if paths, err = d.prepareChroot(ctx, spec, l); err != nil {
			return nil, fmt.Errorf("firecracker: prepare jail for vm %s: %w", spec.VMID, err)
		}
		uid, gid := spec.UID, spec.GID
		if uid < 0 {
			uid, gid = os.Getuid(), os.Getgid()
		}
		launch = privops.LaunchSpec{
			Argv: []string{d.cfg.Jailer.Binary, "--id", spec.VMID, "--exec-file", d.cfg.Binary,
				"--uid", strconv.Itoa(uid), "--gid", strconv.Itoa(gid),
				"--chroot-base-dir", d.cfg.Jailer.ChrootBase, "--daemonize",
				"--", "--api-sock", JailedSocket},
			Dir: spec.RuntimeDir, LogPath: spec.LogPath, PIDFile: l.pidFile, UID: -1, GID: -1, Env: d.cfg.Env,
		}
	}
	pid, err := d.launcher.LaunchVMM(ctx, launch)
	if err != nil {
		return nil, fmt.Errorf("firecracker: start vm %s: %w", spec.VMID, err)
	}
	h := d.handle(spec, l, pid)
	// Until the jailer has exec'ed into firecracker its comm is "jailer":
	// during startup the evidence is the pid plus the VM id as a whole
	// argument, which both command lines carry.
	startID := h.Identity()
	if l.chroot != "" {
		startID = privops.ProcessIdentity{PID: pid, Marker: spec.VMID + "\x00"}
	}
	fail := func(err error) (*vmm.Handle, error) {
		kill := vmm.KillAndReap
		if l.chroot != "" {
			kill = killStarting
		}
		if kerr := kill(d.launcher, startID); kerr != nil {
			err = errors.Join(err, fmt.Errorf("kill failed firecracker: %w", kerr))
		}
		err = vmm.WithLogTail(fmt.Errorf("firecracker: start vm %s: %w", spec.VMID, err), spec.LogPath)
		if h.LogPath != spec.LogPath {
			err = vmm.WithLogTail(err, h.LogPath)
		}
		return nil, err
	}
	c := NewClient(l.socket)
	err = vmm.WaitStartup(ctx, startID, d.cfg.StartTimeout, func(ctx context.Context) bool {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := c.Describe(rctx)
		return err == nil
	})
	if err != nil {
		return fail(err)
	}
	if c.Version, err = c.GetVersion(ctx); err != nil {
		return fail(err)
	}
	if _, err := CheckVersion(c.Version); err != nil {
		return fail(err)
	}
	if err := d.configure(ctx, c, spec, l, paths); err != nil {
		return fail(err)
	}
	h = d.handle(spec, l, pid) // the serial log may exist now
	d.log.Info("firecracker started", "vm", spec.VMID, "pid", pid, "version", c.Version.String(), "jailed", l.chroot != "", "restored", spec.RestoreFrom != "")
	return h, nil
}

// checkRestore refuses, before anything is launched, a restore this mode or
// release cannot do (vmm.ErrUnsupported: boot cold) or whose files are
// missing.
func (d *Driver) checkRestore(spec vmm.Spec, l layout, v Version) error {
	unsupported := func(what string, min Version) error {
		return fmt.Errorf("firecracker %s: restore vm %s from a snapshot: %s needs firecracker >= %s: %w: %w (boot cold)",
			v, spec.VMID, what, min, vmm.ErrUnsupported, ErrVersionTooOld)
	}
	if l.chroot != "" {
		return fmt.Errorf("firecracker: restore vm %s from a snapshot under the jailer: %w (boot cold, or run without the jailer)", spec.VMID, vmm.ErrUnsupported)
	}
	level := FeatureLevel(v)
	if len(spec.Net) > 0 && !level.AtLeast(V1_14_1) {
		return unsupported("re-pointing its network interface at tap "+spec.Net[0].Tap+" (network_overrides)", V1_14_1)
	}
	if spec.VsockPath != "" && !relativeVsock(spec) && !level.AtLeast(V1_16_1) {
		return unsupported("a vsock socket outside its runtime dir (vsock_override)", V1_16_1)
	}
	if !filepath.IsAbs(spec.RestoreFrom) {
		return fmt.Errorf("firecracker: restore vm %s: state file %q must be an absolute path", spec.VMID, spec.RestoreFrom)
	}
	for _, p := range []string{spec.RestoreFrom, spec.RestoreFrom + MemFileSuffix} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("firecracker: restore vm %s: %w", spec.VMID, err)
		}
	}
	return nil
}

// relativeVsock reports a vsock socket directly in RuntimeDir, which
// plain mode names by its base name (see the package doc).
func relativeVsock(spec vmm.Spec) bool {
	return spec.VsockPath != "" && filepath.Dir(spec.VsockPath) == filepath.Clean(spec.RuntimeDir)
}

// killStarting kills a jailed VMM that failed to start. Until the jailer
// has exec'ed into firecracker its comm is the jailer's, and the root
// helper only signals a process whose comm is a configured VMM's: the comm
// is read from /proc, and the kill is retried when the exec happened in
// between (the identity then no longer matches and nothing was signalled).
func killStarting(l vmm.Launcher, id privops.ProcessIdentity) error {
	for range 3 {
		comm, err := os.ReadFile("/proc/" + strconv.Itoa(id.PID) + "/comm")
		if err != nil {
			return nil // gone
		}
		id.Comm = strings.TrimSuffix(string(comm), "\n")
		if err := vmm.KillAndReap(l, id); err != nil {
			return err
		}
		if !vmm.Alive(privops.ProcessIdentity{PID: id.PID, Marker: id.Marker}) {
			return nil
		}
	}
	return fmt.Errorf("pid %d is still running after SIGKILL", id.PID)
}

// guestPaths are the paths as the (possibly jailed) Firecracker sees them.
type guestPaths struct {
	kernel, initrd, metrics, vsock, logger, serial string
	drives                                         []string
}

// plainPaths are the paths a plain-mode Firecracker (working directory
// RuntimeDir) is given: drives through links RuntimeDir/drive-<id> (made
// here) and a vsock socket in RuntimeDir by its base name, so that a
// snapshot records no path of this VM's (see the package doc).
func plainPaths(spec vmm.Spec) (guestPaths, error) {
	p := guestPaths{kernel: spec.Kernel, initrd: spec.Initrd, metrics: spec.MetricsPath, vsock: spec.VsockPath,
		logger: filepath.Join(spec.RuntimeDir, "firecracker.log")}
	if relativeVsock(spec) {
		p.vsock = filepath.Base(spec.VsockPath)
	}
	for _, dr := range spec.Drives {
		name := DriveLinkPrefix + dr.ID
		target, err := filepath.Abs(dr.Path)
		if err != nil {
			return guestPaths{}, fmt.Errorf("drive %s: %w", dr.ID, err)
		}
		if err := replaceSymlink(target, filepath.Join(spec.RuntimeDir, name)); err != nil {
			return guestPaths{}, fmt.Errorf("drive %s: link: %w", dr.ID, err)
		}
		p.drives = append(p.drives, name)
	}
	return p, nil
}

// configure sends the pre-boot requests and InstanceStart, or, with
// Spec.RestoreFrom, the snapshot load (see restore).
func (d *Driver) configure(ctx context.Context, c *Client, spec vmm.Spec, l layout, p guestPaths) error {
	hostFile := func(guest string) string {
		if l.chroot == "" {
			return guest
		}
		return filepath.Join(l.chroot, guest)
	}
	// In jailer mode PrepareJail made the files the VMM opens.
	jailed := l.chroot != ""
	if d.cfg.LogLevel != "" {
		if err := ensureFile(hostFile(p.logger), spec.UID, spec.GID, jailed); err != nil {
			return err
		}
		if err := c.PutLogger(ctx, Logger{LogPath: p.logger, Level: d.cfg.LogLevel, ShowLevel: true}); err != nil {
			return err
		}
	}
	if p.serial != "" {
		if err := c.PutSerial(ctx, Serial{SerialOutPath: p.serial}); err != nil {
			return err
		}
	}
	if spec.MetricsPath != "" {
		if err := ensureFile(hostFile(p.metrics), spec.UID, spec.GID, jailed); err != nil {
			return err
		}
		if err := c.PutMetrics(ctx, Metrics{MetricsPath: p.metrics}); err != nil {
			return err
		}
	}
	if spec.RestoreFrom != "" {
		return restore(ctx, c, spec)
	}
	if err := c.PutMachineConfig(ctx, MachineConfig{VCPUCount: spec.VCPU, MemSizeMiB: spec.MemoryMiB}); err != nil {
		return err
	}
	if err := c.PutBootSource(ctx, BootSource{KernelImagePath: p.kernel, InitrdPath: p.initrd, BootArgs: spec.Cmdline}); err != nil {
		return err
	}
	for i, dr := range spec.Drives {
		if err := c.PutDrive(ctx, Drive{DriveID: dr.ID, PathOnHost: p.drives[i], IsRootDevice: dr.Root, IsReadOnly: dr.ReadOnly}); err != nil {
			return err
		}
	}
	for i, n := range spec.Net {
		if err := c.PutNetworkInterface(ctx, NetworkInterface{IfaceID: ifaceID(i), HostDevName: n.Tap, GuestMAC: n.MAC}); err != nil {
			return err
		}
	}
	if spec.VsockCID != 0 {
		if err := c.PutVsock(ctx, Vsock{GuestCID: spec.VsockCID, UDSPath: p.vsock}); err != nil {
			return err
		}
	}
	return c.Action(ctx, ActionInstanceStart)
}

// restore loads Spec.RestoreFrom with the overrides that make the guest
// use this VM's taps (and vsock socket when it is outside RuntimeDir), and
// resumes it.
func restore(ctx context.Context, c *Client, spec vmm.Spec) error {
	load := SnapshotLoad{
		SnapshotPath: spec.RestoreFrom,
		MemBackend:   &MemoryBackend{BackendType: "File", BackendPath: spec.RestoreFrom + MemFileSuffix},
		ResumeVM:     true,
	}
	for i, n := range spec.Net {
		load.NetworkOverrides = append(load.NetworkOverrides, NetworkOverride{IfaceID: ifaceID(i), HostDevName: n.Tap})
	}
	if spec.VsockPath != "" && !relativeVsock(spec) {
		load.VsockOverride = &VsockOverride{UDSPath: spec.VsockPath}
	}
	if err := c.LoadSnapshot(ctx, load); err != nil {
		return fmt.Errorf("restore from %s: %w", spec.RestoreFrom, err)
	}
	return nil
}

func ifaceID(i int) string { return "eth" + strconv.Itoa(i) }

// ensureFile creates an empty file Firecracker opens without O_CREAT
// (logger, metrics), owned by the VMM's user; made (the jail's, by
// PrepareJail) only checks that it exists.
func ensureFile(path string, uid, gid int, made bool) error {
	if made {
		if _, err := os.Lstat(path); err != nil {
			return fmt.Errorf("jail file: %w", err)
		}
		return nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|syscall.O_NOFOLLOW, 0o640)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	defer f.Close()
	if uid >= 0 && os.Geteuid() == 0 {
		if err := f.Chown(uid, gid); err != nil {
			return fmt.Errorf("chown %s: %w", path, err)
		}
	}
	return nil
}

// prepareChroot has the privileged side build the jail (PrepareJail: hard
// links or device nodes for kernel, initrd and drives, run/ for the API and
// vsock sockets, the files the VMM writes) and makes the owner-side links
// in RuntimeDir: the API socket, metrics and vsock.
func (d *Driver) prepareChroot(ctx context.Context, spec vmm.Spec, l layout) (guestPaths, error) {
	js := privops.JailSpec{ExecName: filepath.Base(d.cfg.Binary), ID: spec.VMID, UID: spec.UID, GID: spec.GID}
	if js.UID < 0 {
		js.UID, js.GID = os.Getuid(), os.Getgid()
	}
	p := guestPaths{kernel: "/vmlinux", logger: "/firecracker.log"}
	js.Files = append(js.Files, privops.JailFile{Name: "vmlinux", Source: spec.Kernel})
	if spec.Initrd != "" {
		p.initrd = "/initrd"
		js.Files = append(js.Files, privops.JailFile{Name: "initrd", Source: spec.Initrd})
	}
	for _, dr := range spec.Drives {
		name := DriveLinkPrefix + dr.ID
		js.Files = append(js.Files, privops.JailFile{Name: name, Source: dr.Path})
		p.drives = append(p.drives, "/"+name)
	}
	if d.cfg.LogLevel != "" {
		js.Create = append(js.Create, "firecracker.log")
	}
	if spec.MetricsPath != "" {
		p.metrics = "/metrics.json"
		js.Create = append(js.Create, "metrics.json")
	}
	if spec.VsockCID != 0 {
		p.vsock = JailedVsock
	}
	if d.serialSupported() {
		p.serial = JailedSerialLog
		js.Create = append(js.Create, strings.TrimPrefix(JailedSerialLog, "/"))
	} else {
		d.log.Warn("firecracker before 1.14 has no PUT /serial: the serial console of a jailed VM is not captured", "vm", spec.VMID)
	}
	chroot, err := d.jail.PrepareJail(ctx, js)
	if err != nil {
		return guestPaths{}, err
	}
	if chroot != l.chroot {
		if err := d.jail.RemoveJail(ctx, js); err != nil {
			d.log.Warn("remove misplaced jail", "vm", spec.VMID, "err", err)
		}
		return guestPaths{}, fmt.Errorf("the privileged side built the jail at %s, not at %s: firecracker's chroot base (%s) differs from the root helper's", chroot, l.chroot, d.cfg.Jailer.ChrootBase)
	}
	if spec.MetricsPath != "" {
		if err := replaceSymlink(filepath.Join(l.chroot, p.metrics), spec.MetricsPath); err != nil {
			return guestPaths{}, fmt.Errorf("metrics: %w", err)
		}
	}
	if spec.VsockCID != 0 {
		if err := replaceSymlink(filepath.Join(l.chroot, p.vsock), spec.VsockPath); err != nil {
			return guestPaths{}, fmt.Errorf("vsock: %w", err)
		}
	}
	if err := replaceSymlink(filepath.Join(l.chroot, JailedSocket), l.socket); err != nil {
		return guestPaths{}, fmt.Errorf("api socket link: %w", err)
	}
	return p, nil
}

func (d *Driver) serialSupported() bool {
	return FeatureLevel(d.version).AtLeast(V1_14_1)
}

// replaceSymlink makes link (outside the jail) point at target (inside it).
func replaceSymlink(target, link string) error {
	if err := os.Remove(link); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return os.Symlink(target, link)
}

// Cleanup removes the jail of a stopped VM (<base>/<exec>/<VMID>, through
// the privileged RemoveJail) and the socket link. A no-op
// in plain mode and when nothing exists; refuses while the VM runs.
func (d *Driver) Cleanup(ctx context.Context, spec vmm.Spec) error {
	if d.cfg.Jailer == nil {
		return nil
	}
	if h, err := d.Find(ctx, spec); err == nil {
		return fmt.Errorf("firecracker: vm %s still running (pid %d): stop it first", spec.VMID, h.PID)
	}
	l, err := d.layout(spec)
	if err != nil {
		return err
	}
	var errs []error
	if err := os.Remove(l.socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if err := d.jail.RemoveJail(ctx, privops.JailSpec{ExecName: filepath.Base(d.cfg.Binary), ID: spec.VMID}); err != nil {
		errs = append(errs, fmt.Errorf("firecracker: remove jail of vm %s: %w", spec.VMID, err))
	}
	return errors.Join(errs...)
}

func (d *Driver) client(h *vmm.Handle) *Client {
	c := NewClient(h.APISocket)
	c.Version = d.version
	return c
}

// Shutdown implements vmm.Driver with SendCtrlAltDel. When it is safe: on
// x86_64 only, after InstanceStart, and only for guests that map
// Ctrl-Alt-Del to an orderly reboot or poweroff (systemd does; a shell as
// PID 1 ignores it). Firecracker exits when the guest reboots, so on a
// systemd guest this is an orderly stop; banger's stop path still prefers
// `poweroff` over ssh (SPEC V6) and uses this only as a fallback.
func (d *Driver) Shutdown(ctx context.Context, h *vmm.Handle) error {
	if h == nil || !vmm.Alive(h.Identity()) {
		return nil
	}
	err := d.client(h).Action(ctx, ActionSendCtrlAltDel)
	if err != nil && !vmm.Alive(h.Identity()) {
		return nil
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

// Find implements vmm.Driver: pidfile → /proc → comm + the VM's socket path
// as an exact command-line argument (plain), or, under the jailer, the
// jail's pidfile, comm and start time (see findJailed).
func (d *Driver) Find(ctx context.Context, spec vmm.Spec) (*vmm.Handle, error) {
	l, err := d.layout(spec)
	if err != nil {
		return nil, fmt.Errorf("firecracker: %w", err)
	}
	var pid int
	if l.chroot != "" {
		pid, err = findJailed(l, l.comm)
	} else {
		pid, err = vmm.FindProcess(l.pidFile, l.comm, l.marker)
	}
	if err != nil {
		return nil, fmt.Errorf("firecracker: find vm %s: %w", spec.VMID, err)
	}
	return d.handle(spec, l, pid), nil
}

// Pause implements vmm.Pauser (PATCH /vm Paused).
func (d *Driver) Pause(ctx context.Context, h *vmm.Handle) error {
	return d.client(h).PatchVM(ctx, VMPaused)
}

// Resume implements vmm.Pauser (PATCH /vm Resumed).
func (d *Driver) Resume(ctx context.Context, h *vmm.Handle) error {
	return d.client(h).PatchVM(ctx, VMResumed)
}

// Save implements vmm.Snapshotter: PATCH /vm Paused, then PUT
// /snapshot/create (Full) to path and path+MemFileSuffix, neither of which
// may exist. The guest stays paused. On failure the partial files are
// removed. Not under the jailer (vmm.ErrUnsupported).
func (d *Driver) Save(ctx context.Context, h *vmm.Handle, path string) error {
	if h.Chroot != "" {
		return fmt.Errorf("firecracker: save under the jailer: %w", vmm.ErrUnsupported)
	}
	if !filepath.IsAbs(path) {
		return fmt.Errorf("firecracker: save: state file %q must be an absolute path", path)
	}
	mem := path + MemFileSuffix
	for _, p := range []string{path, mem} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("firecracker: save: %s already exists", p)
		} else if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("firecracker: save: %w", err)
		}
	}
	c := d.client(h)
	if err := c.PatchVM(ctx, VMPaused); err != nil {
		return fmt.Errorf("firecracker: save: pause guest: %w", err)
	}
	if err := c.CreateSnapshot(ctx, SnapshotCreate{SnapshotType: "Full", SnapshotPath: path, MemFilePath: mem}); err != nil {
		err = fmt.Errorf("firecracker: save to %s: %w", path, err)
		for _, p := range []string{path, mem} {
			if rerr := os.Remove(p); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
				err = errors.Join(err, rerr)
			}
		}
		return err
	}
	return nil
}

// Describe returns GET / of a running VM (state "Running" / "Paused").
func (d *Driver) Describe(ctx context.Context, h *vmm.Handle) (InstanceInfo, error) {
	return d.client(h).Describe(ctx)
}
