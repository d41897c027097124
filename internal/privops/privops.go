// Package privops is the single seam through which the owner daemon performs
// privileged host operations. The set of operations is small, fixed and
// typed; there is no generic exec. Two implementations satisfy Ops:
//
//   - Local: performs the operation in-process (used when the daemon itself
//     runs as root, and by the root helper's server side).
//   - Client: forwards each call over the root helper's unix socket.
//
// Every argument is validated by Validate* functions in this package on the
// server side (Local validates too), so a compromised owner daemon cannot
// make the helper touch anything outside banger's own objects.
package privops

import (
	"context"
	"errors"
	"syscall"
)

// ErrNotSupported is returned for operations the host cannot perform
// (e.g. device-mapper missing). Callers may branch on it to pick a fallback.
var ErrNotSupported = errors.New("operation not supported on this host")

// ErrInvalidArgument wraps every validation failure.
var ErrInvalidArgument = errors.New("invalid argument")

// BridgeSpec describes banger's bridge.
type BridgeSpec struct {
	Name string `json:"name"` // e.g. br-banger
	CIDR string `json:"cidr"` // gateway address with prefix, e.g. 172.30.0.1/24
	MTU  int    `json:"mtu,omitempty"`
	// Uplink, when set, is the only interface --nat VMs may leave
	// through; "" = any interface but the bridge.
	Uplink string `json:"uplink,omitempty"`
}

// TapSpec describes one VM tap device attached to the bridge.
type TapSpec struct {
	Name   string `json:"name"`   // e.g. bgtap3f2a; must carry banger's prefix
	Bridge string `json:"bridge"` // bridge to enslave to
	Owner  int    `json:"owner"`  // uid allowed to open the tap (the VMM's uid)
	Group  int    `json:"group"`
}

// VMNetSpec is one VM's network policy: its tap may only send from its
// leased address and MAC (anti-spoofing, for every VM), NAT lets it reach
// the internet, AllowLAN lets a NAT'd VM reach private ranges and other
// AllowLAN VMs too. See the firewall notes in firewall.go.
type VMNetSpec struct {
	VMIP     string `json:"vm_ip"`  // the VM's leased address
	MAC      string `json:"mac"`    // the VM's MAC address
	Tap      string `json:"tap"`    // the VM's tap on the bridge
	Bridge   string `json:"bridge"` // banger's bridge
	NAT      bool   `json:"nat,omitempty"`
	AllowLAN bool   `json:"allow_lan,omitempty"`
}

// ResolverSpec routes the DNS domain (e.g. "vm") to banger's DNS server.
type ResolverSpec struct {
	Bridge string `json:"bridge"`
	Server string `json:"server"` // ip:port
	Domain string `json:"domain"`
	Enable bool   `json:"enable"`
}

// LoopSpec attaches a file to a loop device.
type LoopSpec struct {
	File     string `json:"file"`
	ReadOnly bool   `json:"read_only"`
}

// SnapshotSpec creates a device-mapper snapshot target.
type SnapshotSpec struct {
	Name      string `json:"name"`       // dm name; must carry banger's prefix
	Origin    string `json:"origin"`     // read-only base loop device
	COW       string `json:"cow"`        // COW loop device
	SizeBytes int64  `json:"size_bytes"` // size of the origin
}

// LaunchSpec starts a VMM process detached from the caller: own session,
// stdin from /dev/null, stdout+stderr appended to LogPath.
type LaunchSpec struct {
	Argv    []string `json:"argv"`     // argv[0] must be an allowed VMM binary (qemu-system-*, firecracker, jailer)
	Dir     string   `json:"dir"`      // working directory (the VM's runtime dir)
	LogPath string   `json:"log_path"` // appended to
	PIDFile string   `json:"pid_file"` // written with the child's pid unless the VMM writes it itself
	UID     int      `json:"uid"`      // drop to this uid/gid (the owner); -1 = keep
	GID     int      `json:"gid"`
	Env     []string `json:"env,omitempty"`
}

// ProcessIdentity is the evidence that a pid still belongs to the VMM we
// started: the process is only signalled if its /proc/PID/cmdline contains
// Marker (the VM's unique socket path) and its comm matches Comm (if set).
type ProcessIdentity struct {
	PID    int    `json:"pid"`
	Comm   string `json:"comm,omitempty"`
	Marker string `json:"marker"`
}

// Ops is the privileged-operations interface. Implementations must be safe
// for concurrent use. Delete/Clear/Detach/Remove operations are idempotent:
// removing something that does not exist is not an error.
type Ops interface {
	EnsureBridge(ctx context.Context, spec BridgeSpec) error
	DeleteBridge(ctx context.Context, name string) error
	CreateTap(ctx context.Context, spec TapSpec) error
	DeleteTap(ctx context.Context, name string) error
	// EnsureVMNet installs (or updates) a VM's network policy; the
	// bridge must have been ensured. ClearVMNet removes it and nothing
	// else.
	EnsureVMNet(ctx context.Context, spec VMNetSpec) error
	ClearVMNet(ctx context.Context, spec VMNetSpec) error
	SetResolverRouting(ctx context.Context, spec ResolverSpec) error

	AttachLoop(ctx context.Context, spec LoopSpec) (device string, err error)
	DetachLoop(ctx context.Context, device string) error
	CreateSnapshot(ctx context.Context, spec SnapshotSpec) (device string, err error)
	RemoveSnapshot(ctx context.Context, name string) error

	LaunchVMM(ctx context.Context, spec LaunchSpec) (pid int, err error)
	SignalVMM(ctx context.Context, id ProcessIdentity, sig syscall.Signal) error

	ChownPath(ctx context.Context, path string, uid, gid int) error

	// PrepareJail builds one VM's Firecracker jail below the jailer
	// chroot base of root's configuration and returns the chroot
	// (<base>/<exec>/<id>/root); RemoveJail removes that VM's jail
	// (only ExecName and ID of the spec are used). See jail.go.
	PrepareJail(ctx context.Context, spec JailSpec) (chroot string, err error)
	RemoveJail(ctx context.Context, spec JailSpec) error
}
