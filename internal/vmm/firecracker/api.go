package firecracker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Request bodies and answers of the Firecracker API, checked against
// shared/firecracker-api/firecracker-v{1.5.0,1.14.1,1.16.1}.yaml by the
// package tests. Optional fields are omitted when zero so every request also
// validates against the oldest spec.

// BootSource is PUT /boot-source.
type BootSource struct {
	KernelImagePath string `json:"kernel_image_path"`
	BootArgs        string `json:"boot_args,omitempty"`
	InitrdPath      string `json:"initrd_path,omitempty"`
}

// Drive is PUT /drives/{drive_id}. is_read_only and path_on_host are always
// sent (required by 1.5.0).
type Drive struct {
	DriveID      string `json:"drive_id"`
	PathOnHost   string `json:"path_on_host"`
	IsRootDevice bool   `json:"is_root_device"`
	IsReadOnly   bool   `json:"is_read_only"`
	CacheType    string `json:"cache_type,omitempty"` // Unsafe | Writeback
	IOEngine     string `json:"io_engine,omitempty"`  // Sync | Async
}

// NetworkInterface is PUT /network-interfaces/{iface_id}.
type NetworkInterface struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
	GuestMAC    string `json:"guest_mac,omitempty"`
}

// MachineConfig is PUT /machine-config.
type MachineConfig struct {
	VCPUCount       int   `json:"vcpu_count"`
	MemSizeMiB      int64 `json:"mem_size_mib"`
	SMT             *bool `json:"smt,omitempty"`
	TrackDirtyPages bool  `json:"track_dirty_pages,omitempty"`
}

// Vsock is PUT /vsock.
type Vsock struct {
	GuestCID uint32 `json:"guest_cid"`
	UDSPath  string `json:"uds_path"`
}

// Logger is PUT /logger.
type Logger struct {
	LogPath       string `json:"log_path"`
	Level         string `json:"level,omitempty"` // Error Warning Info Debug Trace Off
	ShowLevel     bool   `json:"show_level,omitempty"`
	ShowLogOrigin bool   `json:"show_log_origin,omitempty"`
}

// Metrics is PUT /metrics.
type Metrics struct {
	MetricsPath string `json:"metrics_path"`
}

// Serial is PUT /serial (Firecracker >= 1.14).
type Serial struct {
	SerialOutPath string `json:"serial_out_path,omitempty"`
}

// Action types of PUT /actions.
const (
	ActionInstanceStart  = "InstanceStart"
	ActionSendCtrlAltDel = "SendCtrlAltDel"
	ActionFlushMetrics   = "FlushMetrics"
)

// InstanceAction is PUT /actions.
type InstanceAction struct {
	ActionType string `json:"action_type"`
}

// VM states of PATCH /vm.
const (
	VMPaused  = "Paused"
	VMResumed = "Resumed"
)

// VMState is PATCH /vm.
type VMState struct {
	State string `json:"state"`
}

// SnapshotCreate is PUT /snapshot/create.
type SnapshotCreate struct {
	SnapshotType string `json:"snapshot_type,omitempty"` // Full | Diff
	SnapshotPath string `json:"snapshot_path"`
	MemFilePath  string `json:"mem_file_path"`
}

// MemoryBackend is the memory source of a snapshot load.
type MemoryBackend struct {
	BackendType string `json:"backend_type"` // File | Uffd
	BackendPath string `json:"backend_path"`
}

// NetworkOverride re-points an interface at another tap on snapshot load
// (Firecracker >= 1.14).
type NetworkOverride struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
}

// VsockOverride re-points the vsock device at another unix socket on
// snapshot load (Firecracker >= 1.16).
type VsockOverride struct {
	UDSPath string `json:"uds_path"`
}

// SnapshotLoad is PUT /snapshot/load. Set TrackDirtyPages; the client sends
// it as enable_diff_snapshots to releases before 1.14.
type SnapshotLoad struct {
	SnapshotPath        string            `json:"snapshot_path"`
	MemBackend          *MemoryBackend    `json:"mem_backend,omitempty"`
	EnableDiffSnapshots bool              `json:"enable_diff_snapshots,omitempty"`
	TrackDirtyPages     bool              `json:"track_dirty_pages,omitempty"`
	ResumeVM            bool              `json:"resume_vm,omitempty"`
	NetworkOverrides    []NetworkOverride `json:"network_overrides,omitempty"`
	VsockOverride       *VsockOverride    `json:"vsock_override,omitempty"`
}

// InstanceInfo is GET /.
type InstanceInfo struct {
	AppName    string `json:"app_name"`
	ID         string `json:"id"`
	State      string `json:"state"` // "Not started", "Running", "Paused"
	VMMVersion string `json:"vmm_version"`
}

// APIError is a refusal from the Firecracker API, carrying its
// fault_message.
type APIError struct {
	Method, Path string
	Status       int
	FaultMessage string
}

func (e *APIError) Error() string {
	msg := e.FaultMessage
	if msg == "" {
		msg = http.StatusText(e.Status)
	}
	return fmt.Sprintf("firecracker refused %s %s (%d): %s", e.Method, e.Path, e.Status, msg)
}

// ErrVersionTooOld is returned (wrapped) for requests the connected
// Firecracker release does not support.
var ErrVersionTooOld = errors.New("not supported by this firecracker release")

// Client speaks the Firecracker API over its unix socket. Set Version (from
// GET /version) so requests the release lacks are refused locally with a
// clear error; the zero Version means "newest".
type Client struct {
	Socket  string
	Version Version
	hc      *http.Client
}

// NewClient returns a client for the API socket at path.
func NewClient(path string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		DisableKeepAlives: true,
	}
	return &Client{Socket: path, hc: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

func (c *Client) level() Version {
	if c.Version.IsZero() {
		return NewestTested
	}
	return FeatureLevel(c.Version)
}

func (c *Client) requireLevel(what string, min Version) error {
	if !c.level().AtLeast(min) {
		return fmt.Errorf("%s needs firecracker >= %s, found %s: %w", what, min, c.Version, ErrVersionTooOld)
	}
	return nil
}

// Do sends one request. body (when non-nil) is JSON-encoded; a 2xx answer is
// decoded into out (when non-nil); anything else becomes an *APIError.
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("firecracker %s %s: %w", method, path, err)
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, rd)
	if err != nil {
		return fmt.Errorf("firecracker %s %s: %w", method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("firecracker %s %s via %s: %w", method, path, c.Socket, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 != 2 {
		var fault struct {
			FaultMessage string `json:"fault_message"`
		}
		if json.Unmarshal(data, &fault) != nil || fault.FaultMessage == "" {
			fault.FaultMessage = strings.TrimSpace(string(data))
		}
		return &APIError{Method: method, Path: path, Status: resp.StatusCode, FaultMessage: fault.FaultMessage}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("firecracker %s %s: decode %q: %w", method, path, truncate(string(data), 200), err)
		}
	}
	return nil
}

// Describe is GET /.
func (c *Client) Describe(ctx context.Context) (InstanceInfo, error) {
	var info InstanceInfo
	err := c.Do(ctx, http.MethodGet, "/", nil, &info)
	return info, err
}

// GetVersion is GET /version.
func (c *Client) GetVersion(ctx context.Context) (Version, error) {
	var v struct {
		FirecrackerVersion string `json:"firecracker_version"`
	}
	if err := c.Do(ctx, http.MethodGet, "/version", nil, &v); err != nil {
		return Version{}, err
	}
	return ParseVersion(v.FirecrackerVersion)
}

// PutBootSource is PUT /boot-source.
func (c *Client) PutBootSource(ctx context.Context, b BootSource) error {
	return c.Do(ctx, http.MethodPut, "/boot-source", b, nil)
}

// PutDrive is PUT /drives/{drive_id}.
func (c *Client) PutDrive(ctx context.Context, d Drive) error {
	return c.Do(ctx, http.MethodPut, "/drives/"+url.PathEscape(d.DriveID), d, nil)
}

// PutNetworkInterface is PUT /network-interfaces/{iface_id}.
func (c *Client) PutNetworkInterface(ctx context.Context, n NetworkInterface) error {
	return c.Do(ctx, http.MethodPut, "/network-interfaces/"+url.PathEscape(n.IfaceID), n, nil)
}

// PutMachineConfig is PUT /machine-config.
func (c *Client) PutMachineConfig(ctx context.Context, m MachineConfig) error {
	return c.Do(ctx, http.MethodPut, "/machine-config", m, nil)
}

// PutVsock is PUT /vsock.
func (c *Client) PutVsock(ctx context.Context, v Vsock) error {
	return c.Do(ctx, http.MethodPut, "/vsock", v, nil)
}

// PutLogger is PUT /logger.
func (c *Client) PutLogger(ctx context.Context, l Logger) error {
	return c.Do(ctx, http.MethodPut, "/logger", l, nil)
}

// PutMetrics is PUT /metrics.
func (c *Client) PutMetrics(ctx context.Context, m Metrics) error {
	return c.Do(ctx, http.MethodPut, "/metrics", m, nil)
}

// PutSerial is PUT /serial; refused locally before 1.14.
func (c *Client) PutSerial(ctx context.Context, s Serial) error {
	if err := c.requireLevel("PUT /serial", V1_14_1); err != nil {
		return err
	}
	return c.Do(ctx, http.MethodPut, "/serial", s, nil)
}

// Action is PUT /actions.
func (c *Client) Action(ctx context.Context, actionType string) error {
	return c.Do(ctx, http.MethodPut, "/actions", InstanceAction{ActionType: actionType}, nil)
}

// PatchVM is PATCH /vm (Paused or Resumed).
func (c *Client) PatchVM(ctx context.Context, state string) error {
	return c.Do(ctx, http.MethodPatch, "/vm", VMState{State: state}, nil)
}

// CreateSnapshot is PUT /snapshot/create (the VM must be paused).
func (c *Client) CreateSnapshot(ctx context.Context, s SnapshotCreate) error {
	return c.Do(ctx, http.MethodPut, "/snapshot/create", s, nil)
}

// LoadSnapshot is PUT /snapshot/load. On releases before 1.14 dirty-page
// tracking is sent as enable_diff_snapshots and network overrides are
// refused; a vsock override is refused before 1.16.
func (c *Client) LoadSnapshot(ctx context.Context, s SnapshotLoad) error {
	if len(s.NetworkOverrides) > 0 {
		if err := c.requireLevel("snapshot load with network overrides", V1_14_1); err != nil {
			return err
		}
	}
	if s.VsockOverride != nil {
		if err := c.requireLevel("snapshot load with a vsock override", V1_16_1); err != nil {
			return err
		}
	}
	if !c.level().AtLeast(V1_14_1) && s.TrackDirtyPages {
		s.TrackDirtyPages, s.EnableDiffSnapshots = false, true
	}
	return c.Do(ctx, http.MethodPut, "/snapshot/load", s, nil)
}
