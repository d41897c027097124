package fakefc

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// SpecDir is the explicitly set spec directory (tests only; see SpecDirForTest).
func testSpecDir(t testing.TB) string {
	t.Helper()
	return SpecDirForTest(t)
}

func loadSpec(t testing.TB, v string) *APISpec {
	t.Helper()
	s, err := LoadAPISpec(SpecFile(testSpecDir(t), v))
	if err != nil {
		t.Fatal(err)
	}
	if s.Version != v {
		t.Fatalf("spec version %s, want %s", s.Version, v)
	}
	return s
}

func TestValidateAcceptsAndRejects(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	_ = file
	for _, v := range SpecVersions {
		s := loadSpec(t, v)
		ok := []struct{ method, path, body string }{
			{"GET", "/", ""},
			{"PUT", "/boot-source", `{"kernel_image_path":"/k","boot_args":"console=ttyS0"}`},
			{"PUT", "/drives/root", `{"drive_id":"root","path_on_host":"/d","is_root_device":true,"is_read_only":false}`},
			{"PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":512}`},
			{"PUT", "/machine-config", ``},
			{"PUT", "/actions", `{"action_type":"InstanceStart"}`},
			{"PATCH", "/vm", `{"state":"Paused"}`},
			{"PUT", "/mmds", `{"any":{"thing":[1,2]}}`},
		}
		for _, c := range ok {
			if err := s.Validate(c.method, c.path, []byte(c.body)); err != nil {
				t.Errorf("%s %s %s %s: %v", v, c.method, c.path, c.body, err)
			}
		}
		bad := []struct{ method, path, body, want string }{
			{"DELETE", "/boot-source", ``, "Invalid request method"},
			{"GET", "/nope", ``, "Invalid request method"},
			{"PUT", "/drives/", `{}`, "Invalid request method"},
			{"PUT", "/boot-source", ``, "missing request body"},
			{"PUT", "/boot-source", `{"boot_args":"x"}`, "missing field `kernel_image_path`"},
			{"PUT", "/boot-source", `{"kernel_image_path":"/k","bogus":1}`, "unknown field `bogus`"},
			{"PUT", "/boot-source", `{"kernel_image_path":5}`, "expected a string"},
			{"PUT", "/boot-source", `{"kernel_image_path":"/k"} {}`, "trailing data"},
			{"PUT", "/boot-source", `[1]`, "expected an object"},
			{"PUT", "/machine-config", `{"vcpu_count":0,"mem_size_mib":512}`, "below the minimum"},
			{"PUT", "/machine-config", `{"vcpu_count":33,"mem_size_mib":512}`, "above the maximum"},
			{"PUT", "/machine-config", `{"vcpu_count":1.5,"mem_size_mib":512}`, "expected an integer"},
			{"PUT", "/machine-config", `{"vcpu_count":"1","mem_size_mib":512}`, "expected integer"},
			{"PUT", "/actions", `{"action_type":"Reboot"}`, "unknown variant `Reboot`"},
			{"PATCH", "/vm", `{"state":true}`, "expected a string"},
			{"PUT", "/drives/root", `{"drive_id":"root","is_root_device":"yes","path_on_host":"/d","is_read_only":false}`, "expected a boolean"},
			{"PUT", "/vsock", `{"guest_cid":2,"uds_path":"/v"}`, "below the minimum"},
			{"GET", "/", `{"x":1}`, "takes no body"},
		}
		for _, c := range bad {
			err := s.Validate(c.method, c.path, []byte(c.body))
			var ve *ValidationError
			if !errors.As(err, &ve) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s %s %s %s: got %v, want %q", v, c.method, c.path, c.body, err, c.want)
			}
		}
	}
}

func TestSpecDifferencesAreVisible(t *testing.T) {
	old, newest := loadSpec(t, "1.5.0"), loadSpec(t, "1.16.1")
	// 1.5.0 requires is_read_only and path_on_host on drives; 1.16.1 does not.
	d := []byte(`{"drive_id":"root","is_root_device":true}`)
	if err := old.Validate("PUT", "/drives/root", d); err == nil {
		t.Error("1.5.0 accepted a drive without path_on_host")
	}
	if err := newest.Validate("PUT", "/drives/root", d); err != nil {
		t.Errorf("1.16.1: %v", err)
	}
	if err := old.Validate("PUT", "/serial", []byte(`{"serial_out_path":"/s"}`)); err == nil {
		t.Error("1.5.0 has no /serial")
	}
	if err := newest.Validate("PUT", "/network-interfaces/eth0", []byte(`{"iface_id":"eth0","host_dev_name":"t","mtu":1500}`)); err != nil {
		t.Errorf("1.16.1 mtu: %v", err)
	}
	if err := old.Validate("PUT", "/network-interfaces/eth0", []byte(`{"iface_id":"eth0","host_dev_name":"t","mtu":1500}`)); err == nil {
		t.Error("1.5.0 accepted mtu")
	}
}

func TestLoadAPISpecErrors(t *testing.T) {
	if _, err := LoadAPISpec(filepath.Join(t.TempDir(), "none.yaml")); err == nil {
		t.Error("missing file loaded")
	}
	p := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(p, []byte("swagger: '2.0'\npaths: {}\n"), 0o644)
	if _, err := LoadAPISpec(p); err == nil {
		t.Error("empty spec loaded")
	}
}

func FuzzValidate(f *testing.F) {
	s := loadSpec(f, "1.16.1")
	f.Add("PUT", "/drives/x", `{"drive_id":"x","is_root_device":false}`)
	f.Add("PATCH", "/vm", `{"state":"Resumed"}`)
	f.Add("PUT", "/machine-config", `{"vcpu_count":1e400,"mem_size_mib":-1}`)
	f.Fuzz(func(t *testing.T, method, path, body string) {
		_ = s.Validate(method, path, []byte(body)) // must not panic
	})
}
