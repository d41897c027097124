package paths

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/testreq"
)

func clearEnv(t *testing.T) {
	for _, k := range []string{"XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME",
		EnvMode, EnvStateDir, EnvCacheDir, EnvRuntimeDir, EnvConfigDir} {
		t.Setenv(k, "")
	}
}

func TestUserXDG(t *testing.T) {
	clearEnv(t)
	t.Setenv("HOME", "/home/u")
	t.Setenv("XDG_STATE_HOME", "/x/state")
	t.Setenv("XDG_CACHE_HOME", "/x/cache")
	t.Setenv("XDG_RUNTIME_DIR", "/run/user/1000")
	t.Setenv("XDG_CONFIG_HOME", "relative/ignored")
	l, err := User()
	if err != nil {
		t.Fatal(err)
	}
	want := Layout{Mode: ModeUser, StateDir: "/x/state/banger", CacheDir: "/x/cache/banger",
		RuntimeDir: "/run/user/1000/banger", ConfigDir: "/home/u/.config/banger"}
	if l != want {
		t.Fatalf("User() = %+v, want %+v", l, want)
	}
}

func TestUserDefaultsAndRuntimeFallback(t *testing.T) {
	clearEnv(t)
	home := t.TempDir()
	tmp := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("TMPDIR", tmp)
	l, err := User()
	if err != nil {
		t.Fatal(err)
	}
	if l.StateDir != filepath.Join(home, ".local/state/banger") || l.CacheDir != filepath.Join(home, ".cache/banger") ||
		l.ConfigDir != filepath.Join(home, ".config/banger") {
		t.Fatalf("defaults: %+v", l)
	}
	wantRT := filepath.Join(tmp, "banger-"+strconv.Itoa(os.Geteuid()))
	if l.RuntimeDir != wantRT {
		t.Fatalf("runtime dir %s, want %s", l.RuntimeDir, wantRT)
	}
	st, err := os.Lstat(wantRT)
	if err != nil || !st.IsDir() || st.Mode().Perm() != 0o700 {
		t.Fatalf("fallback runtime dir not created 0700: %v %v", st, err)
	}

	// A pre-planted symlink or a group-writable dir is refused.
	if err := os.Remove(wantRT); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(t.TempDir(), wantRT); err != nil {
		t.Fatal(err)
	}
	if _, err := User(); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("symlinked runtime dir accepted: %v", err)
	}
	os.Remove(wantRT)
	if err := os.Mkdir(wantRT, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(wantRT, 0o777); err != nil {
		t.Fatal(err)
	}
	if _, err := User(); err == nil || !strings.Contains(err.Error(), "chmod 700") {
		t.Fatalf("world-writable runtime dir accepted: %v", err)
	}
}

func TestUserNoHome(t *testing.T) {
	clearEnv(t)
	t.Setenv("HOME", "")
	if _, err := User(); err == nil || !strings.Contains(err.Error(), "XDG_STATE_HOME") {
		t.Fatalf("want error naming XDG_STATE_HOME, got %v", err)
	}
}

func TestSystem(t *testing.T) {
	l := System()
	if l.Mode != ModeSystem || l.StateDir != "/var/lib/banger" || l.CacheDir != "/var/cache/banger" ||
		l.RuntimeDir != "/run/banger" || l.ConfigDir != "/etc/banger" {
		t.Fatalf("System() = %+v", l)
	}
	if l.DaemonSocket() != "/run/banger/bangerd.sock" || l.HelperSocket() != "/run/banger-root/root-helper.sock" ||
		l.DBPath() != "/var/lib/banger/banger.db" || l.ConfigFile() != "/etc/banger/config.toml" ||
		l.VMDir("abc") != "/var/lib/banger/vms/abc" || l.VMRuntimeDir("abc") != "/run/banger/vms/abc" ||
		l.ImagesDir() != "/var/lib/banger/images" || l.KernelsDir() != "/var/lib/banger/kernels" ||
		l.SSHDir() != "/var/lib/banger/ssh" || l.LogDir() != "/var/lib/banger/logs" ||
		l.BlobCacheDir() != "/var/cache/banger/blobs" {
		t.Fatalf("accessors wrong for %+v", l)
	}
}

func TestFromEnv(t *testing.T) {
	clearEnv(t)
	t.Setenv("HOME", "")
	t.Setenv(EnvStateDir, "/s/")
	t.Setenv(EnvCacheDir, "/c")
	t.Setenv(EnvRuntimeDir, "/r")
	t.Setenv(EnvConfigDir, "/k")
	l, err := FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if (l != Layout{Mode: ModeUser, StateDir: "/s", CacheDir: "/c", RuntimeDir: "/r", ConfigDir: "/k"}) {
		t.Fatalf("FromEnv = %+v", l)
	}

	t.Setenv(EnvMode, "system")
	t.Setenv(EnvCacheDir, "")
	t.Setenv(EnvRuntimeDir, "")
	t.Setenv(EnvConfigDir, "")
	l, err = FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if (l != Layout{Mode: ModeSystem, StateDir: "/s", CacheDir: "/var/cache/banger", RuntimeDir: "/run/banger", ConfigDir: "/etc/banger"}) {
		t.Fatalf("FromEnv system = %+v", l)
	}

	t.Setenv(EnvMode, "root")
	if _, err := FromEnv(); err == nil || !strings.Contains(err.Error(), EnvMode) {
		t.Fatalf("bad mode accepted: %v", err)
	}
	t.Setenv(EnvMode, "")
	t.Setenv(EnvStateDir, "rel/dir")
	if _, err := FromEnv(); err == nil || !strings.Contains(err.Error(), EnvStateDir) {
		t.Fatalf("relative override accepted: %v", err)
	}
}

func TestEnsure(t *testing.T) {
	base := t.TempDir()
	l := Layout{Mode: ModeUser, StateDir: filepath.Join(base, "state"), CacheDir: filepath.Join(base, "cache"),
		RuntimeDir: filepath.Join(base, "run", "banger"), ConfigDir: filepath.Join(base, "config")}
	if err := l.Ensure(); err != nil {
		t.Fatal(err)
	}
	for dir, mode := range map[string]os.FileMode{
		l.StateDir: 0o700, l.SSHDir(): 0o700, l.RuntimeDir: 0o700, l.ImagesDir(): 0o755, l.KernelsDir(): 0o755,
		l.LogDir(): 0o700, l.CacheDir: 0o755, filepath.Join(l.StateDir, "vms"): 0o700, filepath.Join(l.RuntimeDir, "vms"): 0o700,
	} {
		st, err := os.Stat(dir)
		if err != nil {
			t.Fatal(err)
		}
		// umask may narrow modes of MkdirAll, never widen them.
		if st.Mode().Perm()&^mode != 0 {
			t.Errorf("%s mode %v, want at most %v", dir, st.Mode().Perm(), mode)
		}
	}
	if st, _ := os.Stat(l.RuntimeDir); st.Mode().Perm() != 0o700 {
		t.Errorf("runtime dir mode %v", st.Mode().Perm())
	}
	if _, err := os.Stat(l.ConfigDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Ensure created the config dir: %v", err)
	}
	// Loose permissions on our own runtime dir are repaired.
	if err := os.Chmod(l.RuntimeDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := l.Ensure(); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(l.RuntimeDir); st.Mode().Perm() != 0o700 {
		t.Errorf("runtime dir mode not repaired: %v", st.Mode().Perm())
	}
	// A symlink in place of the runtime dir is refused.
	l2 := l
	l2.RuntimeDir = filepath.Join(base, "rtlink")
	if err := os.Symlink(l.RuntimeDir, l2.RuntimeDir); err != nil {
		t.Fatal(err)
	}
	if err := l2.Ensure(); err == nil {
		t.Fatal("symlinked runtime dir accepted")
	}
}

func TestEnsureForeignOwner(t *testing.T) {
	testreq.Root(t) // chown to another uid
	base := t.TempDir()
	rt := filepath.Join(base, "rt")
	if err := os.Mkdir(rt, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(rt, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	l := Layout{StateDir: filepath.Join(base, "s"), CacheDir: filepath.Join(base, "c"), RuntimeDir: rt}
	err := l.Ensure()
	if err == nil || !strings.Contains(err.Error(), "owned by uid 65534") {
		t.Fatalf("foreign-owned runtime dir accepted: %v", err)
	}
}
