package fakefc

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func do(t *testing.T, s *Server, method, path, body string) (int, string) {
	t.Helper()
	req := httptest.NewRequest(method, path, bytes.NewBufferString(body))
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

func TestServerLifecycleRules(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	os.WriteFile(kernel, []byte("k"), 0o644)
	var console bytes.Buffer
	s := NewServer(loadSpec(t, "1.5.0"), "vm1")
	s.Console = &console

	code, body := do(t, s, "PUT", "/actions", `{"action_type":"InstanceStart"}`)
	if code != 400 || !strings.Contains(body, "missing kernel configuration") {
		t.Fatalf("start without kernel: %d %s", code, body)
	}
	var fault map[string]string
	if err := json.Unmarshal([]byte(body), &fault); err != nil || fault["fault_message"] == "" || len(fault) != 1 {
		t.Errorf("fault shape: %s", body)
	}
	if code, body := do(t, s, "PUT", "/boot-source", `{"kernel_image_path":"/nope"}`); code != 400 || !strings.Contains(body, "kernel file cannot be opened") {
		t.Errorf("missing kernel: %d %s", code, body)
	}
	if code, body := do(t, s, "PUT", "/boot-source", `{"kernel_image_path":"`+kernel+`","extra":1}`); code != 400 || !strings.Contains(body, "unknown field `extra`") {
		t.Errorf("unknown field: %d %s", code, body)
	}
	if code, _ := do(t, s, "PUT", "/boot-source", `{"kernel_image_path":"`+kernel+`","boot_args":"console=ttyS0"}`); code != 204 {
		t.Fatalf("boot-source: %d", code)
	}
	if code, body := do(t, s, "PUT", "/drives/root", `{"drive_id":"other","path_on_host":"`+kernel+`","is_root_device":true,"is_read_only":false}`); code != 400 || !strings.Contains(body, "does not match") {
		t.Errorf("id mismatch: %d %s", code, body)
	}
	if code, _ := do(t, s, "PUT", "/drives/root", `{"drive_id":"root","path_on_host":"`+kernel+`","is_root_device":true,"is_read_only":false}`); code != 204 {
		t.Errorf("drive: %d", code)
	}
	if code, body := do(t, s, "PUT", "/drives/two", `{"drive_id":"two","path_on_host":"`+kernel+`","is_root_device":true,"is_read_only":false}`); code != 400 || !strings.Contains(body, "root block device already exists") {
		t.Errorf("second root: %d %s", code, body)
	}
	if code, body := do(t, s, "PATCH", "/vm", `{"state":"Paused"}`); code != 400 || !strings.Contains(body, "before starting") {
		t.Errorf("pause before start: %d %s", code, body)
	}
	if code, _ := do(t, s, "PUT", "/actions", `{"action_type":"InstanceStart"}`); code != 204 {
		t.Fatalf("start: %d", code)
	}
	if !strings.Contains(console.String(), `fakefc: InstanceStart id=vm1 kernel=`+kernel+` boot_args="console=ttyS0"`) {
		t.Errorf("console: %q", console.String())
	}
	for _, pre := range [][3]string{
		{"PUT", "/boot-source", `{"kernel_image_path":"` + kernel + `"}`},
		{"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128}`},
		{"PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0"}`},
		{"PUT", "/vsock", `{"guest_cid":3,"uds_path":"/v"}`},
		{"PUT", "/actions", `{"action_type":"InstanceStart"}`},
	} {
		if code, body := do(t, s, pre[0], pre[1], pre[2]); code != 400 || !strings.Contains(body, "not supported after starting") {
			t.Errorf("%s %s after start: %d %s", pre[0], pre[1], code, body)
		}
	}
	if code, _ := do(t, s, "PATCH", "/vm", `{"state":"Paused"}`); code != 204 || s.State() != "Paused" {
		t.Errorf("pause: %d %s", code, s.State())
	}
	snap := filepath.Join(dir, "snap")
	if code, _ := do(t, s, "PUT", "/snapshot/create", `{"snapshot_path":"`+snap+`","mem_file_path":"`+snap+`.mem"}`); code != 204 {
		t.Errorf("snapshot: %d", code)
	}
	if code, body := do(t, s, "GET", "/", ""); code != 200 || !strings.Contains(body, `"state":"Paused"`) || !strings.Contains(body, `"vmm_version":"1.5.0"`) {
		t.Errorf("describe: %d %s", code, body)
	}
	if code, body := do(t, s, "PUT", "/actions", `{"action_type":"FlushMetrics"}`); code != 400 || !strings.Contains(body, "not initialized") {
		t.Errorf("flush without metrics: %d %s", code, body)
	}
	want := []string{"PUT /boot-source", "PUT /drives/root", "PUT /actions", "PATCH /vm", "PUT /snapshot/create"}
	if got := s.Requests(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("accepted requests %v, want %v", got, want)
	}
}

func TestServerChrootPaths(t *testing.T) {
	chroot := t.TempDir()
	os.WriteFile(filepath.Join(chroot, "vmlinux"), []byte("k"), 0o644)
	s := NewServer(loadSpec(t, "1.16.1"), "vm1")
	s.Chroot = chroot
	if code, body := do(t, s, "PUT", "/boot-source", `{"kernel_image_path":"/vmlinux"}`); code != 204 {
		t.Errorf("jailed kernel path: %d %s", code, body)
	}
	if code, _ := do(t, s, http.MethodGet, "/version", ""); code != 200 {
		t.Errorf("version: %d", code)
	}
}

// TestServerSnapshots: create only while paused, load only before any boot
// resource, with the overrides applied and every rule of the load checked.
func TestServerSnapshots(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir) // relative drive paths resolve from the working directory, as in Firecracker
	kernel := filepath.Join(dir, "vmlinux")
	os.WriteFile(kernel, []byte("k"), 0o644)
	os.WriteFile(filepath.Join(dir, "disk-a"), []byte("a"), 0o644)
	os.Symlink("disk-a", "drive-root")
	var console bytes.Buffer
	s := NewServer(loadSpec(t, "1.14.1"), "vm1")
	s.Console = &console
	for _, r := range [][3]string{
		{"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":256}`},
		{"PUT", "/boot-source", `{"kernel_image_path":"` + kernel + `"}`},
		{"PUT", "/drives/root", `{"drive_id":"root","path_on_host":"drive-root","is_root_device":true,"is_read_only":false}`},
		{"PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap-a"}`},
		{"PUT", "/vsock", `{"guest_cid":3,"uds_path":"v.sock"}`},
	} {
		if code, body := do(t, s, r[0], r[1], r[2]); code != 204 {
			t.Fatalf("%s %s: %d %s", r[0], r[1], code, body)
		}
	}
	if code, body := do(t, s, "PATCH", "/drives/root", `{"drive_id":"root","path_on_host":"x"}`); code != 400 || !strings.Contains(body, "before starting") {
		t.Errorf("drive patch before start: %d %s", code, body)
	}
	if code, _ := do(t, s, "PUT", "/actions", `{"action_type":"InstanceStart"}`); code != 204 {
		t.Fatal("start")
	}
	state := filepath.Join(dir, "state")
	create := `{"snapshot_type":"Full","snapshot_path":"` + state + `","mem_file_path":"` + state + `.mem"}`
	if code, body := do(t, s, "PUT", "/snapshot/create", create); code != 400 || !strings.Contains(body, "must be paused") {
		t.Errorf("create while running: %d %s", code, body)
	}
	do(t, s, "PATCH", "/vm", `{"state":"Paused"}`)
	if code, body := do(t, s, "PUT", "/snapshot/create", create); code != 204 {
		t.Fatalf("create: %d %s", code, body)
	}

	load := func(extra string) string {
		return `{"snapshot_path":"` + state + `","mem_backend":{"backend_type":"File","backend_path":"` + state + `.mem"}` + extra + `}`
	}
	fresh := func(version string) *Server {
		n := NewServer(loadSpec(t, version), "vm2")
		n.Console = &console
		return n
	}
	// after a boot resource was configured
	n := fresh("1.14.1")
	do(t, n, "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":256}`)
	if code, body := do(t, n, "PUT", "/snapshot/load", load("")); code != 400 || !strings.Contains(body, "after configuring boot-specific resources") {
		t.Errorf("load after config: %d %s", code, body)
	}
	for name, c := range map[string]struct{ version, body, want string }{
		"both memory fields":    {"1.14.1", `{"snapshot_path":"` + state + `","mem_file_path":"` + state + `.mem","mem_backend":{"backend_type":"File","backend_path":"` + state + `.mem"}}`, "not both"},
		"no memory":             {"1.14.1", `{"snapshot_path":"` + state + `"}`, "missing mem_backend"},
		"uffd":                  {"1.14.1", `{"snapshot_path":"` + state + `","mem_backend":{"backend_type":"Uffd","backend_path":"/x"}}`, "not emulated"},
		"other release":         {"1.16.1", load(""), "created by firecracker 1.14.1"},
		"unknown interface":     {"1.14.1", load(`,"network_overrides":[{"iface_id":"eth1","host_dev_name":"tap-b"}]`), "no network interface"},
		"not a memory file":     {"1.14.1", `{"snapshot_path":"` + state + `","mem_backend":{"backend_type":"File","backend_path":"` + kernel + `"}}`, "not a memory file"},
		"corrupt state":         {"1.14.1", `{"snapshot_path":"` + kernel + `","mem_backend":{"backend_type":"File","backend_path":"` + state + `.mem"}}`, "not a microVM state file"},
		"override not in spec":  {"1.5.0", load(`,"network_overrides":[{"iface_id":"eth0","host_dev_name":"tap-b"}]`), "unknown field"},
		"vsock override in old": {"1.14.1", load(`,"vsock_override":{"uds_path":"/v2"}`), "unknown field"},
	} {
		if code, body := do(t, fresh(c.version), "PUT", "/snapshot/load", c.body); code != 400 || !strings.Contains(body, c.want) {
			t.Errorf("%s: %d %s", name, code, body)
		}
	}
	// a missing drive fails the load, like Firecracker's BackingFile error
	os.Remove("drive-root")
	if code, body := do(t, fresh("1.14.1"), "PUT", "/snapshot/load", load("")); code != 400 || !strings.Contains(body, "BackingFile") {
		t.Errorf("missing drive: %d %s", code, body)
	}
	os.WriteFile(filepath.Join(dir, "disk-b"), []byte("b"), 0o644)
	os.Symlink("disk-b", "drive-root")

	n = fresh("1.14.1")
	if code, body := do(t, n, "PUT", "/snapshot/load", load(`,"network_overrides":[{"iface_id":"eth0","host_dev_name":"tap-b"}]`)); code != 204 {
		t.Fatalf("load: %d %s", code, body)
	}
	if n.State() != "Paused" {
		t.Errorf("loaded without resume_vm: %s", n.State())
	}
	if code, body := do(t, n, "PUT", "/snapshot/load", load("")); code != 400 || !strings.Contains(body, "not supported after starting") {
		t.Errorf("second load: %d %s", code, body)
	}
	_, cfg := do(t, n, "GET", "/vm/config", "")
	for _, want := range []string{`"host_dev_name":"tap-b"`, `"path_on_host":"drive-root"`, `"mem_size_mib":256`, `"uds_path":"v.sock"`} {
		if !strings.Contains(cfg, want) {
			t.Errorf("restored config lacks %s: %s", want, cfg)
		}
	}
	if code, _ := do(t, n, "PATCH", "/vm", `{"state":"Resumed"}`); code != 204 || n.State() != "Running" {
		t.Errorf("resume after load: %d %s", code, n.State())
	}
	if !strings.Contains(console.String(), "fakefc: snapshot loaded id=vm2") || !strings.Contains(console.String(), "nets=[eth0=tap-b]") {
		t.Errorf("console: %s", console.String())
	}
}
