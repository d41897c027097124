// Package fakefc is a test double of Firecracker: it serves the Firecracker
// API on a unix socket and validates every request (path, method, JSON body)
// against the release's own API spec (shared/firecracker-api/*.yaml), answers
// errors shaped like Firecracker's ({"fault_message": ...}), keeps the
// pre-boot/post-boot rules (pre-boot resources are refused after
// InstanceStart), and emulates the jailer (chroot layout, --daemonize,
// privilege drop). In boot mode "qemu" InstanceStart boots the described
// guest for real through the QEMU driver, and the fake lives as long as the
// guest; in boot mode "none" it only records the configuration.
//
// The binary (cmd/fakefc) is multi-call: run as "jailer*" it is the fake
// jailer, otherwise the fake firecracker. Tests put symlinks named
// "firecracker" and "jailer" to it in a temp dir so comm checks see the real
// names.
package fakefc

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/bangerdev/banger/internal/testreq"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// SpecVersions are the releases whose API specs are shipped.
var SpecVersions = []string{"1.5.0", "1.14.1", "1.16.1"}

// Environment variables the fake reads (the jailer clears the environment,
// the fake jailer keeps these).
const (
	EnvSpecDir     = "FAKEFC_SPEC_DIR"     // directory of firecracker-vX.yaml
	EnvSpecVersion = "FAKEFC_SPEC_VERSION" // 1.5.0 | 1.14.1 | 1.16.1
	EnvBootMode    = "FAKEFC_BOOT_MODE"    // none | qemu
	EnvChroot      = "FAKEFC_CHROOT"       // set by the fake jailer: resolve guest paths inside it
	EnvQEMUAccel   = "FAKEFC_QEMU_ACCEL"   // kvm | tcg | "" (auto)
)

// Boot modes.
const (
	BootNone = "none"
	BootQEMU = "qemu"
)

// DefaultSpecDir returns $FAKEFC_SPEC_DIR, the explicit setting (the Makefile
// passes ../shared/firecracker-api); it never searches for one.
func DefaultSpecDir() (string, error) {
	d := os.Getenv(EnvSpecDir)
	if d == "" {
		return "", fmt.Errorf("no Firecracker API specs: set %s to the directory holding firecracker-vX.yaml (the Makefile passes ../shared/firecracker-api)", EnvSpecDir)
	}
	if st, err := os.Stat(d); err != nil || !st.IsDir() {
		return "", fmt.Errorf("%s=%s is not a directory of Firecracker API specs", EnvSpecDir, d)
	}
	return d, nil
}

// SpecDirForTest returns the spec directory for a test: from the explicit
// setting only (never found by walking up from the working directory).
// Without it the test is skipped with the reason, or fails in CI
// (testreq's strict mode).
func SpecDirForTest(t testing.TB) string {
	t.Helper()
	d, err := DefaultSpecDir()
	if err != nil {
		testreq.Missing(t, err.Error())
	}
	return d
}

// Config is the fake's guest description, as set through the API.
type Config struct {
	BootSource *map[string]any            `json:"boot-source,omitempty"`
	Machine    map[string]any             `json:"machine-config,omitempty"`
	Drives     map[string]map[string]any  `json:"drives,omitempty"`
	Nets       map[string]map[string]any  `json:"network-interfaces,omitempty"`
	Vsock      map[string]any             `json:"vsock,omitempty"`
	Logger     map[string]any             `json:"logger,omitempty"`
	Metrics    map[string]any             `json:"metrics,omitempty"`
	Serial     map[string]any             `json:"serial,omitempty"`
	Other      map[string]json.RawMessage `json:"other,omitempty"`
	DriveOrder []string                   `json:"-"`
	NetOrder   []string                   `json:"-"`
}

// Guest is what boot mode drives: the real guest behind the fake.
type Guest interface {
	Boot(ctx context.Context, cfg *Config) error
	CtrlAltDel(ctx context.Context) error
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
	Stop(ctx context.Context) error
	Exited() <-chan struct{}
}

// Server is the fake Firecracker API.
type Server struct {
	Spec    *APISpec
	ID      string
	Chroot  string    // "" = not jailed
	Console io.Writer // the "serial console" (stdout)
	Guest   Guest     // nil in boot mode none
	Log     *slog.Logger
	// Exit is called when the VMM should exit (guest reboot/poweroff).
	Exit func(code int)

	mu      sync.Mutex
	state   string // "Not started", "Running", "Paused"
	cfg     Config
	log     []string // "METHOD PATH" of accepted requests
	counter int
}

// NewServer returns a fake for spec.
func NewServer(spec *APISpec, id string) *Server {
	return &Server{Spec: spec, ID: id, Console: io.Discard, state: "Not started",
		cfg: Config{Drives: map[string]map[string]any{}, Nets: map[string]map[string]any{}, Other: map[string]json.RawMessage{}},
		Log: slog.New(slog.DiscardHandler), Exit: func(int) {}}
}

// Requests returns the accepted requests so far ("PUT /boot-source", ...).
func (s *Server) Requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.log...)
}

// State returns the instance state.
func (s *Server) State() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state
}

func fault(w http.ResponseWriter, status int, format string, args ...any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"fault_message": fmt.Sprintf(format, args...)})
}

func reply(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_ = json.NewEncoder(w).Encode(v)
}

// preBootOnly are the resources Firecracker refuses after InstanceStart.
var preBootOnly = map[string]bool{
	"putGuestBootSource": true, "putGuestDriveByID": true, "putGuestNetworkInterfaceByID": true,
	"putMachineConfiguration": true, "patchMachineConfiguration": true, "putGuestVsock": true,
	"putCpuConfiguration": true, "putMmdsConfig": true, "putEntropyDevice": true, "putBalloon": true,
	"loadSnapshot": true, "putSerialDevice": true, "putGuestPmemByID": true, "putMemoryHotplug": true,
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		fault(w, http.StatusBadRequest, "cannot read body: %v", err)
		return
	}
	if err := s.Spec.Validate(r.Method, r.URL.Path, body); err != nil {
		s.Log.Warn("request refused by spec", "method", r.Method, "path", r.URL.Path, "err", err)
		fault(w, http.StatusBadRequest, "%v", err)
		return
	}
	opID, params, _ := s.Spec.Match(r.Method, r.URL.Path)
	var obj map[string]any
	if len(strings.TrimSpace(string(body))) > 0 {
		_ = json.Unmarshal(body, &obj)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != "Not started" && preBootOnly[opID] {
		fault(w, http.StatusBadRequest, "The requested operation is not supported after starting the microVM.")
		return
	}
	if status, msg := s.apply(r.Context(), opID, params, obj, body, w); status != 0 {
		if status >= 400 {
			fault(w, status, "%s", msg)
		}
		return
	}
	s.log = append(s.log, r.Method+" "+r.URL.Path)
	w.WriteHeader(http.StatusNoContent)
}

// hostPath maps a path as the (jailed) VMM sees it to the host.
func (s *Server) hostPath(p string) string {
	if s.Chroot == "" || p == "" {
		return p
	}
	return filepath.Join(s.Chroot, p)
}

func str(obj map[string]any, k string) string {
	v, _ := obj[k].(string)
	return v
}

// apply performs one validated operation. It returns (0, "") for 204, a
// status >= 400 and message for a fault, or 200 when it already replied.
func (s *Server) apply(ctx context.Context, opID string, params map[string]string, obj map[string]any, body []byte, w http.ResponseWriter) (int, string) {
	switch opID {
	case "describeInstance":
		reply(w, map[string]string{"app_name": "Firecracker", "id": s.ID, "state": s.state, "vmm_version": s.Spec.Version})
		return 200, ""
	case "getFirecrackerVersion":
		reply(w, map[string]string{"firecracker_version": s.Spec.Version})
		return 200, ""
	case "getMachineConfiguration":
		mc := map[string]any{"vcpu_count": 1, "mem_size_mib": 128, "smt": false}
		for k, v := range s.cfg.Machine {
			mc[k] = v
		}
		reply(w, mc)
		return 200, ""
	case "getExportVmConfig":
		reply(w, s.cfg)
		return 200, ""
	case "putGuestBootSource":
		if _, err := os.Stat(s.hostPath(str(obj, "kernel_image_path"))); err != nil {
			return 400, fmt.Sprintf("The kernel file cannot be opened: %v", err)
		}
		if p := str(obj, "initrd_path"); p != "" {
			if _, err := os.Stat(s.hostPath(p)); err != nil {
				return 400, fmt.Sprintf("The initrd file cannot be opened due to invalid permissions or path: %v", err)
			}
		}
		s.cfg.BootSource = &obj
	case "putGuestDriveByID":
		id := params["drive_id"]
		if str(obj, "drive_id") != id {
			return 400, "The id from the path does not match the id from the body!"
		}
		if p := str(obj, "path_on_host"); p != "" {
			if _, err := os.Stat(s.hostPath(p)); err != nil {
				return 400, fmt.Sprintf("Unable to create the block device: BackingFile(%v)", err)
			}
		}
		if root, _ := obj["is_root_device"].(bool); root {
			for other, d := range s.cfg.Drives {
				if r, _ := d["is_root_device"].(bool); r && other != id {
					return 400, "A root block device already exists!"
				}
			}
		}
		if _, ok := s.cfg.Drives[id]; !ok {
			s.cfg.DriveOrder = append(s.cfg.DriveOrder, id)
		}
		s.cfg.Drives[id] = obj
	case "putGuestNetworkInterfaceByID":
		id := params["iface_id"]
		if str(obj, "iface_id") != id {
			return 400, "The id from the path does not match the id from the body!"
		}
		if n := str(obj, "host_dev_name"); len(n) > 15 {
			return 400, fmt.Sprintf("Could not create the network device: Open tap device failed: Invalid TAP name %s", n)
		}
		if _, ok := s.cfg.Nets[id]; !ok {
			s.cfg.NetOrder = append(s.cfg.NetOrder, id)
		}
		s.cfg.Nets[id] = obj
	case "putMachineConfiguration", "patchMachineConfiguration":
		if s.cfg.Machine == nil || opID == "putMachineConfiguration" {
			s.cfg.Machine = map[string]any{}
		}
		for k, v := range obj {
			s.cfg.Machine[k] = v
		}
	case "putGuestVsock":
		s.cfg.Vsock = obj
	case "putLogger":
		if s.cfg.Logger != nil {
			return 400, "Logger: the logger can be initialized only once"
		}
		if p := str(obj, "log_path"); p != "" {
			f, err := os.OpenFile(s.hostPath(p), os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				return 400, fmt.Sprintf("Logger: failed to open log file: %v", err)
			}
			fmt.Fprintf(f, "fakefc: logger configured at level %s\n", str(obj, "level"))
			f.Close()
		}
		s.cfg.Logger = obj
	case "putMetrics":
		if s.cfg.Metrics != nil {
			return 400, "Reinitialization of metrics not allowed."
		}
		f, err := os.OpenFile(s.hostPath(str(obj, "metrics_path")), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return 400, fmt.Sprintf("Metrics: failed to open metrics file: %v", err)
		}
		f.Close()
		s.cfg.Metrics = obj
	case "putSerialDevice":
		s.cfg.Serial = obj
	case "createSyncAction":
		return s.action(ctx, str(obj, "action_type"))
	case "patchVm":
		return s.patchVM(ctx, str(obj, "state"))
	case "createSnapshot":
		if s.state != "Paused" {
			return 400, "Create snapshot error: The microVM must be paused."
		}
		for _, k := range []string{"snapshot_path", "mem_file_path"} {
			if err := os.WriteFile(s.hostPath(str(obj, k)), []byte("fakefc snapshot\n"), 0o600); err != nil {
				return 400, fmt.Sprintf("Create snapshot error: %v", err)
			}
		}
	case "loadSnapshot":
		if s.cfg.BootSource != nil || len(s.cfg.Drives) > 0 || s.cfg.Machine != nil {
			return 400, "Loading a microVM snapshot not allowed after configuring boot-specific resources."
		}
		if _, err := os.Stat(s.hostPath(str(obj, "snapshot_path"))); err != nil {
			return 400, fmt.Sprintf("Load snapshot error: %v", err)
		}
		s.state = "Paused"
		if resume, _ := obj["resume_vm"].(bool); resume {
			s.state = "Running"
		}
	default:
		s.cfg.Other[opID] = json.RawMessage(body)
	}
	return 0, ""
}

func (s *Server) action(ctx context.Context, kind string) (int, string) {
	switch kind {
	case "InstanceStart":
		if s.state != "Not started" {
			return 400, "The requested operation is not supported after starting the microVM."
		}
		if s.cfg.BootSource == nil {
			return 400, "Cannot start microvm that was not configured: missing kernel configuration."
		}
		bs := *s.cfg.BootSource
		fmt.Fprintf(s.console(), "fakefc: InstanceStart id=%s kernel=%s boot_args=%q vcpus=%v mem_mib=%v drives=%d nets=%d\n",
			s.ID, str(bs, "kernel_image_path"), str(bs, "boot_args"), s.cfg.Machine["vcpu_count"], s.cfg.Machine["mem_size_mib"], len(s.cfg.Drives), len(s.cfg.Nets))
		if s.Guest != nil {
			if err := s.Guest.Boot(ctx, &s.cfg); err != nil {
				return 400, fmt.Sprintf("Start microvm error: %v", err)
			}
		}
		s.state = "Running"
	case "SendCtrlAltDel":
		if s.state == "Not started" {
			return 400, "The requested operation is not supported before starting the microVM."
		}
		if s.Guest != nil {
			if err := s.Guest.CtrlAltDel(ctx); err != nil {
				return 400, err.Error()
			}
			return 0, ""
		}
		// No guest: behave like a guest that reboots on Ctrl-Alt-Del, which
		// makes Firecracker exit.
		fmt.Fprintln(s.console(), "fakefc: guest rebooting after Ctrl-Alt-Del; exiting")
		go func() { time.Sleep(50 * time.Millisecond); s.Exit(0) }()
	case "FlushMetrics":
		if s.cfg.Metrics == nil {
			return 400, "Failed to write metrics: Metrics system was not initialized."
		}
		f, err := os.OpenFile(s.hostPath(str(s.cfg.Metrics, "metrics_path")), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return 400, fmt.Sprintf("Failed to write metrics: %v", err)
		}
		s.counter++
		fmt.Fprintf(f, "{\"utc_timestamp_ms\":%d,\"fakefc\":{\"flushes\":%d}}\n", time.Now().UnixMilli(), s.counter)
		f.Close()
	}
	return 0, ""
}

func (s *Server) patchVM(ctx context.Context, state string) (int, string) {
	if s.state == "Not started" {
		return 400, "The requested operation is not supported before starting the microVM."
	}
	var err error
	switch state {
	case "Paused":
		if s.Guest != nil {
			err = s.Guest.Pause(ctx)
		}
	case "Resumed":
		if s.Guest != nil {
			err = s.Guest.Resume(ctx)
		}
		state = "Running"
	}
	if err != nil {
		return 400, err.Error()
	}
	s.state = state
	return 0, ""
}

func (s *Server) console() io.Writer {
	if s.Console == nil {
		return io.Discard
	}
	return s.Console
}
