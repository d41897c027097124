package daemon

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"syscall"
	"testing"

	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/paths"
)

func TestParseSignal(t *testing.T) {
	for in, want := range map[string]syscall.Signal{
		"": syscall.SIGKILL, "KILL": syscall.SIGKILL, "sigterm": syscall.SIGTERM, "Term": syscall.SIGTERM,
		"9": syscall.SIGKILL, "15": syscall.SIGTERM, "HUP": syscall.SIGHUP, " INT ": syscall.SIGINT, "USR1": syscall.SIGUSR1,
	} {
		got, err := ParseSignal(in)
		if err != nil || got != want {
			t.Errorf("ParseSignal(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"0", "65", "-1", "NOPE", "SIG", "KILLX"} {
		if _, err := ParseSignal(bad); err == nil {
			t.Errorf("ParseSignal(%q) accepted", bad)
		}
	}
}

func FuzzParseSignal(f *testing.F) {
	for _, s := range []string{"KILL", "9", "sigterm", "", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sig, err := ParseSignal(s)
		if err == nil && (sig < 1 || sig > 64) {
			t.Fatalf("ParseSignal(%q) = %d", s, sig)
		}
	})
}

func TestHostResolvers(t *testing.T) {
	p := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(p, []byte("# x\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nsearch example\nnameserver ::1\nnameserver 192.168.1.1 # home\nnameserver bogus\n"), 0o644)
	if got := hostResolvers(p); !reflect.DeepEqual(got, []string{"10.0.0.2", "192.168.1.1"}) {
		t.Fatalf("got %v", got)
	}
	if got := hostResolvers(filepath.Join(t.TempDir(), "missing")); got != nil {
		t.Fatalf("missing file: %v", got)
	}
}

func TestEnvWithPrefix(t *testing.T) {
	env := []string{"HOME=/root", "FAKEFC_BOOT_MODE=qemu", "PATH=/bin", "FAKEFC_X=1"}
	if got := envWithPrefix(env, "FAKEFC_"); !reflect.DeepEqual(got, []string{"FAKEFC_BOOT_MODE=qemu", "FAKEFC_X=1", "PATH=/bin"}) {
		t.Fatalf("got %v", got)
	}
	if got := envWithPrefix([]string{"PATH=/bin"}, "FAKEFC_"); got != nil {
		t.Fatalf("no match: %v", got)
	}
}

func TestCrashHookOnlyParsesOpStep(t *testing.T) {
	for _, spec := range []string{"", "create", "create:", " "} {
		if crashHook(spec) != nil {
			t.Errorf("crashHook(%q) is set", spec)
		}
	}
	h := crashHook("create:vmm")
	if h == nil {
		t.Fatal("no hook")
	}
	if err := h(context.Background(), "id", "start", "vmm"); err != nil {
		t.Fatal(err)
	}
}

func TestJailerWantedByDefaultInSystemMode(t *testing.T) {
	def := config.Defaults(config.HostInfo{CPUs: 2, MemoryBytes: 4 << 30})
	if w, ex := jailerWanted(paths.ModeSystem, def); !w || ex {
		t.Errorf("system mode default: want %v explicit %v", w, ex)
	}
	if w, _ := jailerWanted(paths.ModeUser, def); w {
		t.Error("user mode jails by default")
	}
	off := config.Defaults(config.HostInfo{CPUs: 2, MemoryBytes: 4 << 30})
	off.Provenance["firecracker.use_jailer"] = "/etc/banger/config.toml"
	if w, ex := jailerWanted(paths.ModeSystem, off); w || !ex {
		t.Errorf("use_jailer = false in system mode: want %v explicit %v", w, ex)
	}
	on := config.Defaults(config.HostInfo{CPUs: 2, MemoryBytes: 4 << 30})
	on.Firecracker.UseJailer = true
	on.Provenance["firecracker.use_jailer"] = "/home/u/.config/banger/config.toml"
	if w, ex := jailerWanted(paths.ModeUser, on); !w || !ex {
		t.Errorf("use_jailer = true in user mode: want %v explicit %v", w, ex)
	}
}
