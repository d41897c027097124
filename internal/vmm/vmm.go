// Package vmm defines the contract between banger and the process that runs a
// guest (a virtual machine monitor: Firecracker or QEMU), plus the helpers the
// drivers share: process evidence checks, exit waiting and log tails.
//
// # Process model
//
// A VMM process is started detached from the caller: its own session, stdin
// from /dev/null, stdout and stderr appended to the VM's log file. The daemon
// exiting, crashing or restarting never kills a guest. Drivers never start or
// signal processes themselves; they go through a Launcher (a subset of
// privops.Ops), so the same driver works in-process as root and through the
// root helper.
//
// # Identity
//
// A running VMM is recognised only by evidence: its pidfile names a pid,
// /proc/PID exists and is not a zombie, its comm equals the driver's binary
// name and its command line contains the VM's unique marker (its API or QMP
// socket path, or its jailer id). A pid that was recycled by an unrelated
// process never matches, so it is never adopted or signalled.
package vmm

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"syscall"

	"github.com/bangerdev/banger/internal/privops"
)

// ErrUnsupported is returned (wrapped) when a driver cannot do what a spec or
// call asks (vsock under QEMU, snapshots, pause on a driver without it).
// Callers check Capabilities first; the error says what to do instead.
var ErrUnsupported = errors.New("not supported by this vmm driver")

// Drive is one block device. Drives[0] of a Spec is the root device.
type Drive struct {
	ID       string // stable short id ("root", "work"); used as the Firecracker drive_id and QEMU serial
	Path     string // host path of a regular file or block device
	ReadOnly bool
	Root     bool // the root device (exactly one, first)
}

// NetIface is one virtio-net interface backed by a host tap.
type NetIface struct {
	Tap string // host tap device name (exists, owned by the VMM's uid)
	MAC string // guest MAC, e.g. 02:fc:00:00:00:02; "" = VMM default
}

// Spec is everything a driver needs to start one guest.
type Spec struct {
	VMID string // unique, [A-Za-z0-9-]{1,64}; used as the Firecracker/jailer id
	Name string // human name (DNS label); informational

	// RuntimeDir is the per-VM directory for sockets, pidfile and scratch
	// files. It exists and is writable by UID. Socket paths inside it must fit
	// in 107 bytes (unix sun_path), so keep it short.
	RuntimeDir string

	Kernel  string // host path: vmlinux (Firecracker) or vmlinuz/vmlinux (QEMU)
	Initrd  string // optional
	Cmdline string // guest kernel arguments (console=ttyS0, root=, init=...); drivers append machine-specific ones

	VCPU      int
	MemoryMiB int64

	Drives []Drive    // root first
	Net    []NetIface // may be empty

	VsockCID  uint32 // 0 = no vsock
	VsockPath string // host unix socket for the hybrid vsock (Firecracker)

	// SerialPorts are virtio-serial ports, each backed by a host unix
	// socket the VMM listens on (QEMU; Firecracker has none and returns
	// ErrUnsupported: use vsock there).
	SerialPorts []SerialPort

	LogPath     string // VMM output and serial console are appended here
	MetricsPath string // optional; Firecracker metrics file

	UID, GID int // owner to drop the VMM to; -1 = keep the launcher's

	// RestoreFrom, when set, is a saved state file (written by
	// Snapshotter.Save of a guest with the same machine shape and drives):
	// the VMM loads it instead of booting Kernel, and Start returns once the
	// restored guest runs. Drivers without Capabilities().Snapshots return
	// ErrUnsupported.
	RestoreFrom string
}

// SerialPort is one virtio-serial port: the guest sees
// /dev/virtio-ports/Name; the host connects to Socket (one connection at a
// time; data the guest writes while nobody is connected is dropped).
type SerialPort struct {
	Name   string // [A-Za-z0-9._-]{1,64}, e.g. "org.banger.agent.0"
	Socket string // host path, at most MaxSocketPath bytes
}

// Handle identifies a started VMM. It is what the daemon records (pid,
// pidfile, sockets, log) and what it passes back to Shutdown, Kill and Wait.
type Handle struct {
	Driver    string // driver name ("qemu", "firecracker")
	PID       int
	PIDFile   string
	APISocket string // Firecracker API socket or QEMU QMP socket (host path, ≤107 bytes)
	LogPath   string // where the serial console goes
	Accel     string // "kvm", "tcg" or "" (unknown / Firecracker: always kvm)
	Chroot    string // jailer chroot dir ("" without jailer)

	// Comm and Marker are the evidence that PID is still this VMM (see the
	// package doc). They are derived by the driver; callers keep them as is.
	Comm   string
	Marker string
}

// Identity returns the evidence privops uses to verify the pid before
// signalling it.
func (h *Handle) Identity() privops.ProcessIdentity {
	return privops.ProcessIdentity{PID: h.PID, Comm: h.Comm, Marker: h.Marker}
}

// Capabilities says which optional features a driver offers.
type Capabilities struct {
	Snapshots bool // create/load guest snapshots
	Vsock     bool // Spec.VsockCID/VsockPath honoured
	Pause     bool // Pauser implemented
}

// Driver starts and controls VMM processes. Implementations are safe for
// concurrent use on different VMs; calls for one VM are serialised by the
// caller (the daemon's per-VM lock).
//
// Contract, per method:
//
//   - Start launches the VMM through the Launcher and returns once the VMM is
//     running the guest (QEMU: QMP reports "running"; Firecracker:
//     InstanceStart accepted). It does not wait for the guest OS. On any
//     failure it leaves nothing running (the VMM it launched is killed and
//     reaped) and the error includes the tail of the VMM log. Stale sockets
//     and pidfiles in RuntimeDir are removed first.
//   - Shutdown asks the guest to shut down (QEMU: QMP system_powerdown;
//     Firecracker: SendCtrlAltDel, see that driver's doc for when it is safe)
//     and returns once the request was delivered, not when the VMM exited:
//     follow it with Wait under a deadline, then Kill. A VMM that is already
//     gone is not an error (nil).
//   - Kill sends sig to the VMM after re-verifying its identity. A VMM that is
//     already gone (or a pid that now belongs to another process) is nil.
//   - Wait blocks until the VMM process has exited or ctx ends (ctx.Err()).
//     It works for processes that are not children of the caller (after a
//     daemon restart). An already-exited VMM returns nil immediately.
//   - Find re-attaches to a running VMM after a daemon restart, by evidence
//     only (pidfile → /proc/PID alive → comm and cmdline marker). Anything
//     else, including a recycled pid, returns an error wrapping
//     model.ErrNotRunning. Find never modifies the VM's files.
type Driver interface {
	Name() string
	Capabilities() Capabilities
	Start(ctx context.Context, spec Spec) (*Handle, error)
	Shutdown(ctx context.Context, h *Handle) error
	Kill(ctx context.Context, h *Handle, sig syscall.Signal) error
	Wait(ctx context.Context, h *Handle) error
	Find(ctx context.Context, spec Spec) (*Handle, error)
}

// Pauser is implemented by drivers with Capabilities().Pause: Pause stops the
// vCPUs (QEMU "stop", Firecracker PATCH /vm Paused), Resume restarts them.
type Pauser interface {
	Pause(ctx context.Context, h *Handle) error
	Resume(ctx context.Context, h *Handle) error
}

// Snapshotter is implemented by drivers that can save a running guest:
// Save pauses the guest and writes its memory and device state to path
// (which must not exist), returning once the file is complete. The guest
// stays paused; the caller usually quits the VMM next. The disks are not
// part of the file: copy them while the guest is paused. Start with
// Spec.RestoreFrom = path restores it.
type Snapshotter interface {
	Save(ctx context.Context, h *Handle, path string) error
}

// Versioner is implemented by drivers that can name the exact VMM they
// run: the VMM's version plus whatever else makes a saved state of one
// unloadable by another (QEMU: machine type and accelerator). Templates are
// keyed by it, so a changed VMM never restores a state it cannot read.
type Versioner interface {
	VMMVersion(ctx context.Context) (string, error)
}

// DriveResizer is implemented by drivers that can grow a running guest's
// block device: the backing file is grown to sizeBytes and the guest is
// told its new capacity (QEMU: block_resize). index is the drive's
// position in Spec.Drives. The filesystem on it is the guest's business.
type DriveResizer interface {
	ResizeDrive(ctx context.Context, h *Handle, index int, sizeBytes int64) error
}

// Launcher is the subset of privops.Ops that drivers use: every VMM process
// is started and signalled through it, never directly.
//
// LaunchVMM starts argv detached (own session, stdin /dev/null, output
// appended to LogPath) and returns its pid; SignalVMM re-verifies the
// identity from /proc and signals, returning an error wrapping
// model.ErrNotRunning when the process is gone or is not the identified VMM.
type Launcher interface {
	LaunchVMM(ctx context.Context, spec privops.LaunchSpec) (int, error)
	SignalVMM(ctx context.Context, id privops.ProcessIdentity, sig syscall.Signal) error
}

var serialPortName = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

var vmIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9-]{0,63}$`)

// MaxSocketPath is the longest usable unix socket path (sun_path minus NUL).
const MaxSocketPath = 107

// Validate checks the fields every driver relies on.
func (s Spec) Validate() error {
	var errs []error
	if !vmIDPattern.MatchString(s.VMID) {
		errs = append(errs, fmt.Errorf("vm id %q: want 1-64 letters, digits or '-'", s.VMID))
	}
	if !filepath.IsAbs(s.RuntimeDir) {
		errs = append(errs, fmt.Errorf("runtime dir %q: must be an absolute path", s.RuntimeDir))
	}
	if s.Kernel == "" {
		errs = append(errs, errors.New("kernel path is empty"))
	}
	if s.VCPU < 1 {
		errs = append(errs, fmt.Errorf("vcpu count %d: must be at least 1", s.VCPU))
	}
	if s.MemoryMiB < 16 {
		errs = append(errs, fmt.Errorf("memory %d MiB: must be at least 16", s.MemoryMiB))
	}
	if !filepath.IsAbs(s.LogPath) {
		errs = append(errs, fmt.Errorf("log path %q: must be an absolute path", s.LogPath))
	}
	seen := map[string]bool{}
	for i, d := range s.Drives {
		if d.ID == "" || seen[d.ID] {
			errs = append(errs, fmt.Errorf("drive %d: id %q empty or duplicated", i, d.ID))
		}
		seen[d.ID] = true
		if d.Path == "" {
			errs = append(errs, fmt.Errorf("drive %q: path is empty", d.ID))
		}
		if d.Root != (i == 0) {
			errs = append(errs, fmt.Errorf("drive %q: the root drive must be first and only the first", d.ID))
		}
	}
	for i, n := range s.Net {
		if n.Tap == "" || len(n.Tap) > 15 {
			errs = append(errs, fmt.Errorf("net %d: tap name %q must be 1-15 characters", i, n.Tap))
		}
	}
	if (s.VsockCID == 0) != (s.VsockPath == "") {
		errs = append(errs, errors.New("vsock needs both a guest CID and a host socket path"))
	}
	for _, p := range s.SerialPorts {
		if !serialPortName.MatchString(p.Name) {
			errs = append(errs, fmt.Errorf("serial port name %q: want 1-64 letters, digits, '.', '_' or '-'", p.Name))
		}
		if !filepath.IsAbs(p.Socket) || len(p.Socket) > MaxSocketPath {
			errs = append(errs, fmt.Errorf("serial port %q: socket %q must be an absolute path of at most %d bytes", p.Name, p.Socket, MaxSocketPath))
		}
	}
	if s.VsockCID != 0 && s.VsockCID < 3 {
		errs = append(errs, fmt.Errorf("vsock cid %d: must be at least 3", s.VsockCID))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("invalid vm spec: %w", err)
	}
	return nil
}

// SocketPath joins dir and name and checks the result fits in a unix socket
// address.
func SocketPath(dir, name string) (string, error) {
	p := filepath.Join(dir, name)
	if len(p) > MaxSocketPath {
		return "", fmt.Errorf("socket path %s is %d bytes, longer than the %d a unix socket allows: use a shorter runtime dir", p, len(p), MaxSocketPath)
	}
	return p, nil
}
