// Package api names the daemon's RPC methods and their parameter and result
// types. It is shared by the CLI (client) and the daemon (server); changing a
// type here is a protocol change.
package api

import (
	"github.com/bangerdev/banger/internal/buildinfo"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/template"
)

// Method names.
const (
	MethodPing           = "ping"
	MethodShutdown       = "daemon.shutdown"
	MethodOperationsList = "daemon.operations.list"

	MethodVMCreate  = "vm.create"
	MethodVMList    = "vm.list"
	MethodVMShow    = "vm.show"
	MethodVMDelete  = "vm.delete"
	MethodVMPrune   = "vm.prune"
	MethodVMStart   = "vm.start"
	MethodVMStop    = "vm.stop"
	MethodVMRestart = "vm.restart"
	MethodVMKill    = "vm.kill"
	MethodVMSet     = "vm.set"
	MethodVMLogs    = "vm.logs"
	MethodVMStats   = "vm.stats"
	MethodVMPorts   = "vm.ports"

	MethodImageList     = "image.list"
	MethodImageShow     = "image.show"
	MethodImageBuild    = "image.build"
	MethodImagePull     = "image.pull"
	MethodImageRegister = "image.register"
	MethodImageDelete   = "image.delete"
	MethodImagePrune    = "image.cache.prune"
	// MethodImageWarm makes (or, with Remove, removes) the VM templates of
	// an image; MethodImageTemplates lists every template.
	MethodImageWarm      = "image.warm"
	MethodImageTemplates = "image.templates"

	MethodKernelList   = "kernel.list"
	MethodKernelShow   = "kernel.show"
	MethodKernelPull   = "kernel.pull"
	MethodKernelImport = "kernel.import"
	MethodKernelRemove = "kernel.rm"

	MethodSSHConfig = "ssh.config"

	// MethodStoreStatus reports the state store's schema status (doctor
	// asks the daemon: the CLI never opens the daemon's store).
	MethodStoreStatus = "daemon.store.status"

	// MethodSSHCredentials hands the caller (the daemon's own user, or
	// root) banger's managed guest key and the host keys pinned for one VM,
	// so the CLI dials guests without reading the daemon's files.
	MethodSSHCredentials = "ssh.credentials"
)

// SSHConfig is the result of ssh.config: the ssh_config file the daemon
// keeps current and its text.
type SSHConfig struct {
	Path string `json:"path"`
	Text string `json:"text"`
}

// Empty is the params/result of methods that take or return nothing.
type Empty struct{}

// PingResult identifies the daemon.
type PingResult struct {
	Build    buildinfo.Info `json:"build"`
	Protocol int            `json:"protocol"`
	PID      int            `json:"pid"`
	Mode     string         `json:"mode"` // user or system
	Socket   string         `json:"socket"`
	StateDir string         `json:"state_dir"`
}

// Ref names one VM by name, id or unique id prefix.
type Ref struct {
	Ref string `json:"ref"`
}

// VMStopParams are the inputs of vm.stop (a plain Ref is a fast stop).
type VMStopParams struct {
	Ref string `json:"ref"`
	// Timeout, a Go duration ("2m"), asks for a graceful shutdown through
	// the guest's init, waiting up to that long.
	Timeout string `json:"timeout,omitempty"`
}

// VMCreateParams are the inputs of vm.create. Zero values mean "use the
// configured default".
type VMCreateParams struct {
	Name        string `json:"name,omitempty"`
	Image       string `json:"image,omitempty"`
	Kernel      string `json:"kernel,omitempty"`
	VCPU        int    `json:"vcpu,omitempty"`
	MemoryMiB   int64  `json:"memory_mib,omitempty"`
	DiskSizeMiB int64  `json:"disk_size_mib,omitempty"`
	NAT         bool   `json:"nat,omitempty"`
	// AllowLAN (with NAT) lets the VM reach private ranges and other
	// AllowLAN VMs.
	AllowLAN bool `json:"allow_lan,omitempty"`
	// Ports are forwarded from the host while the VM runs.
	Ports   []model.PortForward `json:"ports,omitempty"`
	NoStart bool                `json:"no_start,omitempty"`
	// Cold boots the VM from scratch instead of restoring a template.
	Cold bool `json:"cold,omitempty"`
	// NoStandby restores the template even when a standby VM of the same
	// shape is ready to be claimed.
	NoStandby bool `json:"no_standby,omitempty"`
}

// ImageWarmParams are the inputs of image.warm. Image "" is the configured
// default image; the template is made for the configured default kernel,
// vCPUs and memory (VCPU/MemoryMiB override them). Remove removes every
// template of the image instead.
type ImageWarmParams struct {
	Image     string `json:"image,omitempty"`
	VCPU      int    `json:"vcpu,omitempty"`
	MemoryMiB int64  `json:"memory_mib,omitempty"`
	Remove    bool   `json:"remove,omitempty"`
}

// ImageWarmResult is the result of image.warm: the template (nil after
// Remove), whether it was made by this call, how many were removed.
type ImageWarmResult struct {
	Template *template.Template `json:"template,omitempty"`
	Made     bool               `json:"made,omitempty"`
	Removed  int                `json:"removed,omitempty"`
}

// TemplateList is the result of image.templates.
type TemplateList struct {
	Templates []TemplateInfo `json:"templates"`
}

// TemplateInfo is one template and how many standby VMs restored from it
// are ready to be claimed (see docs/templates.md).
type TemplateInfo struct {
	template.Template
	Standby int `json:"standby"`
}

// VMList is the result of vm.list.
type VMList struct {
	VMs []*model.VM `json:"vms"`
}

// VMListParams filters vm.list.
type VMListParams struct {
	RunningOnly bool `json:"running_only,omitempty"`
	// Standby includes the standby VMs (restored ahead of need, hidden
	// otherwise): for checks of the host's state, such as doctor's.
	Standby bool `json:"standby,omitempty"`
}

// VMPruneParams are the inputs of vm.prune.
type VMPruneParams struct {
	DryRun bool `json:"dry_run,omitempty"`
}

// VMPruneResult lists what prune removed (or would remove).
type VMPruneResult struct {
	Deleted []string          `json:"deleted"`
	Failed  map[string]string `json:"failed,omitempty"`
}

// VMKillParams are the inputs of vm.kill.
type VMKillParams struct {
	Ref    string `json:"ref"`
	Signal string `json:"signal,omitempty"` // e.g. KILL, TERM; default KILL
}

// VMSetParams change a stopped VM. Nil fields are left alone.
type VMSetParams struct {
	Ref         string `json:"ref"`
	VCPU        *int   `json:"vcpu,omitempty"`
	MemoryMiB   *int64 `json:"memory_mib,omitempty"`
	DiskSizeMiB *int64 `json:"disk_size_mib,omitempty"`
	NAT         *bool  `json:"nat,omitempty"`
}

// OperationsList is the result of daemon.operations.list.
type OperationsList struct {
	Operations []*model.Operation `json:"operations"`
}

// OperationsListParams filters daemon.operations.list.
type OperationsListParams struct {
	All bool `json:"all,omitempty"` // include finished operations
}

// ImageName names one image.
type ImageName struct {
	Name string `json:"name"`
}

// ImageBuildParams are the inputs of image.build.
type ImageBuildParams struct {
	Recipe   string   `json:"recipe"` // "debian-bookworm"
	Name     string   `json:"name,omitempty"`
	Mirror   string   `json:"mirror,omitempty"`
	Packages []string `json:"packages,omitempty"`
	Variant  string   `json:"variant,omitempty"` // default | minbase
	SizeMiB  int64    `json:"size_mib,omitempty"`
	Kernel   string   `json:"kernel,omitempty"`
	Replace  bool     `json:"replace,omitempty"`
}

// ImagePullParams are the inputs of image.pull.
type ImagePullParams struct {
	Ref      string `json:"ref"`
	Name     string `json:"name,omitempty"`
	SizeMiB  int64  `json:"size_mib,omitempty"`
	Kernel   string `json:"kernel,omitempty"`
	Insecure bool   `json:"insecure,omitempty"`
	Replace  bool   `json:"replace,omitempty"`
}

// ImageRegisterParams are the inputs of image.register.
type ImageRegisterParams struct {
	Name   string `json:"name"`
	Rootfs string `json:"rootfs"`
	Kernel string `json:"kernel,omitempty"`
}

// ImageList is the result of image.list.
type ImageList struct {
	Images []*model.Image `json:"images"`
}

// PruneParams ask for a dry run or the real thing.
type PruneParams struct {
	DryRun bool `json:"dry_run,omitempty"`
}

// KernelName names one kernel.
type KernelName struct {
	Name string `json:"name"`
}

// KernelPullParams are the inputs of kernel.pull.
type KernelPullParams struct {
	Source string `json:"source"` // "debian"
	Name   string `json:"name,omitempty"`
}

// KernelImportParams are the inputs of kernel.import.
type KernelImportParams struct {
	Name       string `json:"name"`
	Deb        string `json:"deb,omitempty"`
	Vmlinux    string `json:"vmlinux,omitempty"`
	Initrd     string `json:"initrd,omitempty"`
	ModulesDir string `json:"modules_dir,omitempty"`
}

// KernelList is the result of kernel.list.
type KernelList struct {
	Kernels []*model.Kernel `json:"kernels"`
}

// StoreStatus is the result of daemon.store.status: the
// store.MigrationStatus of the daemon's store and a line for humans.
type StoreStatus struct {
	Status int    `json:"status"`
	Detail string `json:"detail"`
	Path   string `json:"path"`
}

// SSHCredentials is the result of ssh.credentials.
type SSHCredentials struct {
	PrivateKey string   `json:"private_key"` // OpenSSH PEM
	HostKeys   []string `json:"host_keys"`   // the VM's pinned host keys, authorized_keys format
}

// VMPorts is the result of vm.ports: what the guest listens on (from the
// guest) and the VM's forwards from the host.
type VMPorts struct {
	VM        string              `json:"vm"`
	Listening []GuestPort         `json:"listening"`
	Forwards  []model.PortForward `json:"forwards"`
}

// GuestPort is one listening socket in a guest.
type GuestPort struct {
	Proto   string `json:"proto"`   // "tcp", "tcp6", "udp", "udp6"
	Address string `json:"address"` // local address ("0.0.0.0", "::", "127.0.0.1")
	Port    int    `json:"port"`
	PID     int    `json:"pid,omitempty"`
	Process string `json:"process,omitempty"`
}
