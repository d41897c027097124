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
// Snapshots: PATCH /vm pauses and resumes the guest (QMP stop/cont); PUT
// /snapshot/create (only while paused) writes the QEMU migration stream of
// the guest to snapshot_path (boot mode none: a one-line stand-in) and a
// small JSON header to mem_file_path, since the stream already holds the
// memory: the release, whether a guest was saved, and the configuration
// (machine, boot source, drives, NICs, vsock) as Firecracker's state file
// would record it. PUT /snapshot/load (only before any boot resource is
// configured) reads both back, refuses another release's snapshot, applies
// network_overrides and vsock_override, checks that every recorded drive
// path opens (relative paths from the fake's working directory, as
// Firecracker does), and starts QEMU from the stream with those devices;
// resume_vm false leaves it paused. Unlike Firecracker, QEMU needs the
// recorded kernel file at restore too.
//
// Vsock (boot mode qemu): a configured vsock device (PUT /vsock, and the
// snapshot's device with vsock_override applied on load) is emulated as
// Firecracker's hybrid vsock: the fake binds uds_path (relative paths from
// its working directory, like the drives) when the guest starts or is
// restored, answers "CONNECT <port>\n" with "OK <host port>\n" and bridges
// the connection to a virtio-serial port it adds to the QEMU guest, named
// after the guest program that serves the port (DefaultVsockPorts: banger's
// agent, port 1024, on org.banger.agent.0). Other ports are closed without
// an answer, as Firecracker closes a port nothing listens on. See vsock.go
// for what differs from Firecracker.
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
	EnvTrace       = "FAKEFC_TRACE"        // file to append every request to ("STATUS METHOD PATH BODY" lines)
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
	Save(ctx context.Context, statePath string) error
	Restore(ctx context.Context, cfg *Config, statePath string) error
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
	// Trace, when set, gets one line per request: status, method, path
	// and the body as sent.
	Trace io.Writer

	traceMu sync.Mutex

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

// statusWriter remembers the status of a response.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		fault(w, http.StatusBadRequest, "cannot read body: %v", err)
		return
	}
	if s.Trace != nil {
		sw := &statusWriter{ResponseWriter: w}
		w = sw
		defer func() {
			s.traceMu.Lock()
			defer s.traceMu.Unlock()
			line := strings.Join(strings.Fields(string(body)), " ")
			fmt.Fprintf(s.Trace, "%d %s %s %s\n", sw.status, r.Method, r.URL.Path, line)
		}()
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

// hostPath maps a path as the (jailed) VMM sees it to the host: inside
// the chroot, or relative to the working directory.
func (s *Server) hostPath(p string) string {
	if p == "" {
		return p
	}
	if s.Chroot == "" {
		if abs, err := filepath.Abs(p); err == nil {
			return abs
		}
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
		if err := s.createSnapshot(ctx, s.hostPath(str(obj, "snapshot_path")), s.hostPath(str(obj, "mem_file_path"))); err != nil {
			return 400, fmt.Sprintf("Create snapshot error: %v", err)
		}
	case "loadSnapshot":
		if s.cfg.BootSource != nil || len(s.cfg.Drives) > 0 || s.cfg.Machine != nil || len(s.cfg.Nets) > 0 || s.cfg.Vsock != nil {
			return 400, "Loading a microVM snapshot not allowed after configuring boot-specific resources."
		}
		if err := s.loadSnapshot(ctx, obj); err != nil {
			return 400, fmt.Sprintf("Load snapshot error: %v", err)
		}
	case "patchGuestDriveByID", "patchGuestNetworkInterfaceByID":
		if s.state == "Not started" {
			return 400, "The requested operation is not supported before starting the microVM."
		}
		s.cfg.Other[opID] = json.RawMessage(body)
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

// Snapshot files of the fake (see the package doc).
const (
	fakeStateLine  = "fakefc state (boot mode none)\n"
	snapshotMagic  = "fakefc-snapshot-v1"
	qemuStateMagic = "QEVM" // QEMU_VM_FILE_MAGIC, the first bytes of a migration stream
)

// snapshotHeader is what the fake writes to mem_file_path.
type snapshotHeader struct {
	Magic       string   `json:"magic"`
	SpecVersion string   `json:"spec_version"`
	Guest       bool     `json:"guest"` // snapshot_path holds a QEMU migration stream
	Config      Config   `json:"config"`
	DriveOrder  []string `json:"drive_order"`
	NetOrder    []string `json:"net_order"`
}

// createSnapshot writes the state (QEMU's migration stream, or a stand-in)
// and the header; Firecracker truncates existing files, so does the fake.
// On failure neither file is left.
func (s *Server) createSnapshot(ctx context.Context, statePath, memPath string) error {
	for _, p := range []string{statePath, memPath} {
		if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	var err error
	if s.Guest != nil {
		err = s.Guest.Save(ctx, statePath)
	} else {
		err = os.WriteFile(statePath, []byte(fakeStateLine), 0o600)
	}
	if err == nil {
		var hdr []byte
		hdr, err = json.Marshal(snapshotHeader{Magic: snapshotMagic, SpecVersion: s.Spec.Version, Guest: s.Guest != nil,
			Config: s.cfg, DriveOrder: s.cfg.DriveOrder, NetOrder: s.cfg.NetOrder})
		if err == nil {
			err = os.WriteFile(memPath, hdr, 0o600)
		}
	}
	if err != nil {
		_ = os.Remove(statePath)
		_ = os.Remove(memPath)
		return err
	}
	fmt.Fprintf(s.console(), "fakefc: snapshot created id=%s state=%s mem=%s\n", s.ID, statePath, memPath)
	return nil
}

// loadSnapshot restores a snapshot written by createSnapshot with the
// request's overrides (the caller checked the state).
func (s *Server) loadSnapshot(ctx context.Context, obj map[string]any) error {
	memPath := str(obj, "mem_file_path")
	mb, hasBackend := obj["mem_backend"].(map[string]any)
	switch {
	case hasBackend && memPath != "":
		return fmt.Errorf("either mem_backend or mem_file_path must be present, not both")
	case hasBackend:
		if t := str(mb, "backend_type"); t != "File" {
			return fmt.Errorf("memory backend %s is not emulated by fakefc", t)
		}
		memPath = str(mb, "backend_path")
	case memPath == "":
		return fmt.Errorf("missing mem_backend")
	}
	data, err := os.ReadFile(s.hostPath(memPath))
	if err != nil {
		return fmt.Errorf("cannot open the memory file: %w", err)
	}
	var hdr snapshotHeader
	if json.Unmarshal(data, &hdr) != nil || hdr.Magic != snapshotMagic {
		return fmt.Errorf("%s is not a memory file written by fakefc", memPath)
	}
	if hdr.SpecVersion != s.Spec.Version {
		return fmt.Errorf("the snapshot was created by firecracker %s and cannot be loaded by %s", hdr.SpecVersion, s.Spec.Version)
	}
	statePath := s.hostPath(str(obj, "snapshot_path"))
	head := make([]byte, len(fakeStateLine))
	f, err := os.Open(statePath)
	if err != nil {
		return fmt.Errorf("cannot open the snapshot file: %w", err)
	}
	n, _ := f.Read(head)
	f.Close()
	head = head[:n]
	if want := []byte(fakeStateLine); hdr.Guest {
		want = []byte(qemuStateMagic)
		if len(head) < len(want) || string(head[:len(want)]) != string(want) {
			return fmt.Errorf("%s is not a microVM state file", statePath)
		}
	} else if string(head) != string(want) {
		return fmt.Errorf("%s is not a microVM state file", statePath)
	}
	if hdr.Guest && s.Guest == nil {
		return fmt.Errorf("the snapshot holds a running guest; this fake has boot mode none")
	}
	cfg := hdr.Config
	cfg.DriveOrder, cfg.NetOrder = hdr.DriveOrder, hdr.NetOrder
	if cfg.Drives == nil {
		cfg.Drives = map[string]map[string]any{}
	}
	if cfg.Nets == nil {
		cfg.Nets = map[string]map[string]any{}
	}
	if cfg.Other == nil {
		cfg.Other = map[string]json.RawMessage{}
	}
	cfg.Logger, cfg.Metrics = s.cfg.Logger, s.cfg.Metrics
	overrides, _ := obj["network_overrides"].([]any)
	for _, o := range overrides {
		ov, _ := o.(map[string]any)
		id, tap := str(ov, "iface_id"), str(ov, "host_dev_name")
		n, ok := cfg.Nets[id]
		if !ok {
			return fmt.Errorf("network override: the snapshot has no network interface %q", id)
		}
		if len(tap) > 15 {
			return fmt.Errorf("network override: Invalid TAP name %s", tap)
		}
		n["host_dev_name"] = tap
	}
	if vo, ok := obj["vsock_override"].(map[string]any); ok {
		if cfg.Vsock == nil {
			return fmt.Errorf("vsock override: the snapshot has no vsock device")
		}
		cfg.Vsock["uds_path"] = str(vo, "uds_path")
	}
	for _, id := range cfg.DriveOrder {
		if _, err := os.Stat(s.hostPath(str(cfg.Drives[id], "path_on_host"))); err != nil {
			return fmt.Errorf("block device %s: BackingFile(%v)", id, err)
		}
	}
	resume, _ := obj["resume_vm"].(bool)
	if s.Guest != nil {
		if err := s.Guest.Restore(ctx, &cfg, statePath); err != nil {
			return err
		}
		if !resume {
			if err := s.Guest.Pause(ctx); err != nil {
				return err
			}
		}
	}
	s.cfg = cfg
	s.state = "Paused"
	if resume {
		s.state = "Running"
	}
	var taps []string
	for _, id := range cfg.NetOrder {
		taps = append(taps, id+"="+str(cfg.Nets[id], "host_dev_name"))
	}
	fmt.Fprintf(s.console(), "fakefc: snapshot loaded id=%s state=%s vcpus=%v mem_mib=%v drives=%d nets=%v resumed=%v\n",
		s.ID, statePath, cfg.Machine["vcpu_count"], cfg.Machine["mem_size_mib"], len(cfg.Drives), taps, resume)
	return nil
}
