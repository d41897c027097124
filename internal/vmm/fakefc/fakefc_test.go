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
