// Package model holds banger's domain records (VM, Image, Kernel, Lease,
// Operation) and the validation of user-supplied names and sizes. It has no
// dependencies on storage or transport.
package model

import (
	"encoding/json"
	"time"
)

// VMState is the lifecycle state of a VM.
type VMState string

const (
	StateCreating VMState = "creating" // resources being made; may be rolled back by reconcile
	StateStopped  VMState = "stopped"  // disks exist, no VMM
	StateStarting VMState = "starting"
	StateRunning  VMState = "running"
	StateStopping VMState = "stopping"
	StateError    VMState = "error" // see VM.Error
)

// VM is a named, persistent sandbox.
type VM struct {
	ID          string  `json:"id"`
	Name        string  `json:"name"`
	State       VMState `json:"state"`
	Image       string  `json:"image"`
	Kernel      string  `json:"kernel"`
	Driver      string  `json:"driver"` // vmm driver name: "qemu" or "firecracker"
	VCPU        int     `json:"vcpu"`
	MemoryMiB   int64   `json:"memory_mib"`
	DiskSizeMiB int64   `json:"disk_size_mib"`
	NAT         bool    `json:"nat"`
	// AllowLAN lets a NAT'd VM reach private ranges (the host's LAN,
	// CGNAT, link-local) and other AllowLAN VMs (see privops' firewall).
	AllowLAN bool `json:"allow_lan,omitempty"`
	// Ports are the VM's port forwards from the host (served while it runs).
	Ports     []PortForward `json:"ports,omitempty"`
	IP        string        `json:"ip,omitempty"`
	MAC       string        `json:"mac,omitempty"`
	Error     string        `json:"error,omitempty"`
	CreatedAt time.Time     `json:"created_at"`
	UpdatedAt time.Time     `json:"updated_at"`
	// Runtime is the teardown identity of a started VM (pid, tap, sockets,
	// loops, dm names...). It is written to the store before each resource
	// is used so cleanup works after a crash.
	Runtime Runtime `json:"runtime"`
	// Workspace records the last prepared workspace, if any.
	Workspace *Workspace `json:"workspace,omitempty"`
	// Sandbox is set on VMs created through the E2B-compatible API.
	Sandbox *Sandbox `json:"sandbox,omitempty"`
}

// Runtime is the durable teardown identity of a VM's resources.
type Runtime struct {
	PID       int       `json:"pid,omitempty"`
	PIDFile   string    `json:"pid_file,omitempty"`
	APISocket string    `json:"api_socket,omitempty"` // firecracker API or QMP socket: unique per VM, used to verify the pid
	Tap       string    `json:"tap,omitempty"`
	RootDisk  string    `json:"root_disk,omitempty"`
	WorkDisk  string    `json:"work_disk,omitempty"`
	Loops     []string  `json:"loops,omitempty"`
	DMName    string    `json:"dm_name,omitempty"`
	Chroot    string    `json:"chroot,omitempty"`
	LogPath   string    `json:"log_path,omitempty"`
	NATActive bool      `json:"nat_active,omitempty"`
	Accel     string    `json:"accel,omitempty"` // kvm or tcg
	StartedAt time.Time `json:"started_at,omitempty"`
	CoW       string    `json:"cow,omitempty"` // CoW strategy of the root disk

	// RuntimeDir is the VM's directory of sockets and pidfiles while a VMM
	// may exist (removed by teardown).
	RuntimeDir string `json:"runtime_dir,omitempty"`
	// Comm and Marker are the process evidence of PID (see package vmm):
	// the VMM is only signalled while both still match.
	Comm   string `json:"comm,omitempty"`
	Marker string `json:"marker,omitempty"`
	// Step is the lifecycle step in progress (create/start/stop); reconcile
	// names it when it rolls back an operation a crash interrupted.
	Step string `json:"step,omitempty"`
	// Provisioned is set once the VM's disks were made and it booted once;
	// an interrupted first start of an unprovisioned VM is rolled back
	// completely (disks and lease released).
	Provisioned bool `json:"provisioned,omitempty"`
	// DiskHandle is the root disk's copy-on-write handle (disk.Handle as
	// JSON), stored before the disk is created.
	DiskHandle json.RawMessage `json:"disk_handle,omitempty"`
	// Cold asks the first start to boot from scratch instead of restoring
	// a template (`vm create --cold`).
	Cold bool `json:"cold,omitempty"`
	// Template is the id of the template the VM was restored from at
	// create ("" = it cold-booted). Later starts always cold-boot.
	Template string `json:"template,omitempty"`
	// Standby marks a VM the daemon restored ahead of need: hidden from
	// users until a create claims it (renames it and clears the mark).
	Standby bool `json:"standby,omitempty"`
	// Paused: the VMM's vCPUs are stopped (a standby VM waiting to be
	// claimed; the claim resumes it).
	Paused bool `json:"paused,omitempty"`
}

// Workspace is what `vm workspace prepare` recorded.
type Workspace struct {
	HostPath   string    `json:"host_path"`
	GuestPath  string    `json:"guest_path"`
	HeadCommit string    `json:"head_commit,omitempty"`
	Branch     string    `json:"branch,omitempty"`
	PreparedAt time.Time `json:"prepared_at"`
	// Subdir is the directory given to prepare, relative to the
	// repository's top level ("" = the top): commands run in
	// GuestPath/Subdir. The options below are reused by a re-sync.
	Subdir           string `json:"subdir,omitempty"`
	IncludeUntracked bool   `json:"include_untracked,omitempty"`
	ReadOnly         bool   `json:"readonly,omitempty"`
	From             string `json:"from,omitempty"`
}

// Image is a root filesystem image in the image store.
type Image struct {
	Name      string    `json:"name"`
	Source    string    `json:"source"` // e.g. "debootstrap:bookworm", "oci:docker.io/library/alpine:3", "register:/path"
	Path      string    `json:"path"`   // the ext4 file in the content-addressed store
	SizeBytes int64     `json:"size_bytes"`
	SHA256    string    `json:"sha256"`
	Kernel    string    `json:"kernel,omitempty"` // default kernel for this image
	CreatedAt time.Time `json:"created_at"`
}

// Kernel is a guest kernel in the kernel store.
type Kernel struct {
	Name       string            `json:"name"`
	Version    string            `json:"version"`
	Source     string            `json:"source"`
	Dir        string            `json:"dir"`
	Vmlinux    string            `json:"vmlinux"`           // uncompressed ELF (firecracker)
	BzImage    string            `json:"bzimage,omitempty"` // as shipped (qemu can boot either)
	Initrd     string            `json:"initrd,omitempty"`
	ModulesDir string            `json:"modules_dir,omitempty"`
	Files      map[string]string `json:"files"` // relative file -> sha256
	ImportedAt time.Time         `json:"imported_at"`
}

// Lease is an IP address held by a VM.
type Lease struct {
	IP        string    `json:"ip"`
	VMID      string    `json:"vm_id"`
	CreatedAt time.Time `json:"created_at"`
}

// Operation is a long-running daemon operation (create, pull, build...).
type Operation struct {
	ID        string     `json:"id"`
	Kind      string     `json:"kind"`
	Target    string     `json:"target,omitempty"`
	Stage     string     `json:"stage"`
	Progress  float64    `json:"progress"` // 0..1, or -1 when unknown
	StartedAt time.Time  `json:"started_at"`
	EndedAt   *time.Time `json:"ended_at,omitempty"`
	Done      bool       `json:"done"`
	Error     string     `json:"error,omitempty"`
}
