package firecracker

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/bangerdev/banger/internal/vmm/fakefc"
)

// validatingServer answers 204 to requests that validate against spec and
// 400 with a fault_message otherwise, recording the bodies it saw.
func validatingServer(t *testing.T, spec *fakefc.APISpec) (string, *[]string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "fcapi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []string
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		seen = append(seen, r.Method+" "+r.URL.Path+" "+string(body))
		mu.Unlock()
		if err := spec.Validate(r.Method, r.URL.Path, body); err != nil {
			w.WriteHeader(400)
			_, _ = io.WriteString(w, `{"fault_message":"`+strings.ReplaceAll(err.Error(), `"`, `'`)+`"}`)
			return
		}
		switch r.URL.Path {
		case "/":
			_, _ = io.WriteString(w, `{"app_name":"Firecracker","id":"x","state":"Running","vmm_version":"`+spec.Version+`"}`)
		case "/version":
			_, _ = io.WriteString(w, `{"firecracker_version":"`+spec.Version+`"}`)
		default:
			w.WriteHeader(204)
		}
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return sock, &seen
}

func specDir(t *testing.T) string {
	t.Helper()
	return fakefc.SpecDirForTest(t)
}

// TestEveryRequestValidatesAgainstEverySpec sends every request the driver
// can send, with every optional field the driver may set, to a server that
// validates against each shipped spec.
func TestEveryRequestValidatesAgainstEverySpec(t *testing.T) {
	smt := false
	requests := map[string]func(context.Context, *Client) error{
		"describe": func(ctx context.Context, c *Client) error { _, err := c.Describe(ctx); return err },
		"version":  func(ctx context.Context, c *Client) error { _, err := c.GetVersion(ctx); return err },
		"boot-source": func(ctx context.Context, c *Client) error {
			return c.PutBootSource(ctx, BootSource{KernelImagePath: "/k", BootArgs: "console=ttyS0", InitrdPath: "/i"})
		},
		"boot-source-min": func(ctx context.Context, c *Client) error {
			return c.PutBootSource(ctx, BootSource{KernelImagePath: "/k"})
		},
		"drive-root": func(ctx context.Context, c *Client) error {
			return c.PutDrive(ctx, Drive{DriveID: "root", PathOnHost: "/r", IsRootDevice: true})
		},
		"drive-ro-options": func(ctx context.Context, c *Client) error {
			return c.PutDrive(ctx, Drive{DriveID: "seed", PathOnHost: "/s", IsReadOnly: true, CacheType: "Writeback", IOEngine: "Async"})
		},
		"network": func(ctx context.Context, c *Client) error {
			return c.PutNetworkInterface(ctx, NetworkInterface{IfaceID: "eth0", HostDevName: "tap0", GuestMAC: "02:fc:00:00:00:02"})
		},
		"network-min": func(ctx context.Context, c *Client) error {
			return c.PutNetworkInterface(ctx, NetworkInterface{IfaceID: "eth0", HostDevName: "tap0"})
		},
		"machine-config": func(ctx context.Context, c *Client) error {
			return c.PutMachineConfig(ctx, MachineConfig{VCPUCount: 2, MemSizeMiB: 1024, SMT: &smt, TrackDirtyPages: true})
		},
		"vsock": func(ctx context.Context, c *Client) error {
			return c.PutVsock(ctx, Vsock{GuestCID: 3, UDSPath: "/v.sock"})
		},
		"logger": func(ctx context.Context, c *Client) error {
			return c.PutLogger(ctx, Logger{LogPath: "/l", Level: "Debug", ShowLevel: true, ShowLogOrigin: true})
		},
		"metrics":        func(ctx context.Context, c *Client) error { return c.PutMetrics(ctx, Metrics{MetricsPath: "/m"}) },
		"instance-start": func(ctx context.Context, c *Client) error { return c.Action(ctx, ActionInstanceStart) },
		"ctrl-alt-del":   func(ctx context.Context, c *Client) error { return c.Action(ctx, ActionSendCtrlAltDel) },
		"flush-metrics":  func(ctx context.Context, c *Client) error { return c.Action(ctx, ActionFlushMetrics) },
		"pause":          func(ctx context.Context, c *Client) error { return c.PatchVM(ctx, VMPaused) },
		"resume":         func(ctx context.Context, c *Client) error { return c.PatchVM(ctx, VMResumed) },
		"snapshot-create": func(ctx context.Context, c *Client) error {
			return c.CreateSnapshot(ctx, SnapshotCreate{SnapshotType: "Full", SnapshotPath: "/s", MemFilePath: "/m"})
		},
		"snapshot-diff": func(ctx context.Context, c *Client) error {
			return c.CreateSnapshot(ctx, SnapshotCreate{SnapshotType: "Diff", SnapshotPath: "/s", MemFilePath: "/m"})
		},
		"snapshot-load": func(ctx context.Context, c *Client) error {
			return c.LoadSnapshot(ctx, SnapshotLoad{SnapshotPath: "/s", MemBackend: &MemoryBackend{BackendType: "File", BackendPath: "/m"}, TrackDirtyPages: true, ResumeVM: true})
		},
		"snapshot-load-overrides": func(ctx context.Context, c *Client) error {
			err := c.LoadSnapshot(ctx, SnapshotLoad{SnapshotPath: "/s", MemBackend: &MemoryBackend{BackendType: "File", BackendPath: "/m"}, NetworkOverrides: []NetworkOverride{{IfaceID: "eth0", HostDevName: "tap1"}}})
			if errors.Is(err, ErrVersionTooOld) && !c.Version.AtLeast(V1_14_1) {
				return nil // refused locally by version detection
			}
			return err
		},
		"snapshot-load-vsock-override": func(ctx context.Context, c *Client) error {
			err := c.LoadSnapshot(ctx, SnapshotLoad{SnapshotPath: "/s", MemBackend: &MemoryBackend{BackendType: "File", BackendPath: "/m"}, ResumeVM: true, VsockOverride: &VsockOverride{UDSPath: "/v.sock"}})
			if errors.Is(err, ErrVersionTooOld) && !c.Version.AtLeast(V1_16_1) {
				return nil // refused locally by version detection
			}
			return err
		},
		"serial": func(ctx context.Context, c *Client) error {
			err := c.PutSerial(ctx, Serial{SerialOutPath: "/serial.log"})
			if errors.Is(err, ErrVersionTooOld) && !c.Version.AtLeast(V1_14_1) {
				return nil
			}
			return err
		},
	}
	for _, v := range fakefc.SpecVersions {
		spec, err := fakefc.LoadAPISpec(fakefc.SpecFile(specDir(t), v))
		if err != nil {
			t.Fatal(err)
		}
		sock, seen := validatingServer(t, spec)
		c := NewClient(sock)
		c.Version, _ = ParseVersion(v)
		for name, req := range requests {
			if err := req(context.Background(), c); err != nil {
				t.Errorf("spec %s: %s: %v", v, name, err)
			}
		}
		if v == "1.5.0" {
			found := false
			for _, s := range *seen {
				if strings.HasPrefix(s, "PUT /snapshot/load") && strings.Contains(s, `"enable_diff_snapshots":true`) {
					found = true
				}
			}
			if !found {
				t.Errorf("1.5.0: dirty page tracking not sent as enable_diff_snapshots: %v", *seen)
			}
		}
	}
}

func TestAPIErrorCarriesFaultMessage(t *testing.T) {
	spec, err := fakefc.LoadAPISpec(fakefc.SpecFile(specDir(t), "1.16.1"))
	if err != nil {
		t.Fatal(err)
	}
	sock, _ := validatingServer(t, spec)
	c := NewClient(sock)
	err = c.Do(context.Background(), http.MethodPut, "/boot-source", map[string]any{"kernel_image_path": "/k", "bogus": true}, nil)
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != 400 || !strings.Contains(ae.FaultMessage, "unknown field `bogus`") {
		t.Fatalf("err = %#v", err)
	}
	if !strings.Contains(err.Error(), "firecracker refused PUT /boot-source (400): ") {
		t.Errorf("message: %v", err)
	}
	if _, err := NewClient(filepath.Join(t.TempDir(), "none.sock")).Describe(context.Background()); err == nil {
		t.Error("describe on missing socket succeeded")
	}
}
