// Package paths decides where banger keeps its files (the user-mode and
// system-mode layouts) and checks paths the root side is asked to touch:
// CheckNoSymlinks and OpenNoSymlinks refuse any path that leaves a managed
// root or passes through a symlink below it.
package paths

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// Modes of a Layout.
const (
	ModeUser   = "user"
	ModeSystem = "system"
)

// Layout is where one banger installation keeps its files.
type Layout struct {
	Mode       string // ModeUser or ModeSystem
	StateDir   string // durable state: store, disks, images, kernels, ssh key
	CacheDir   string // re-creatable downloads (OCI blobs, packages)
	RuntimeDir string // sockets, pidfiles; 0700, owned by the daemon's uid
	ConfigDir  string // config.toml
	// HelperSock is the root helper's socket ("" = DefaultHelperSocket).
	HelperSock string
}

// DefaultHelperSocket is where the root helper listens in both modes: one
// helper per host, in a root-owned directory of its own (in system mode
// bangerd-root.service's RuntimeDirectory). It is never below RuntimeDir:
// that directory belongs to the owner, and systemd gives a unit's runtime
// directory to the unit's user.
const DefaultHelperSocket = "/run/banger-root/root-helper.sock"

// HelperCacheDir is the root helper's own cache (debootstrap trees and the
// image files it builds for the owner): root's, 0711, never the owner's
// cache. In system mode it is bangerd-root.service's CacheDirectory=.
const HelperCacheDir = "/var/cache/banger-root"

// User returns the user-mode layout from the XDG base directories:
// $XDG_STATE_HOME (~/.local/state), $XDG_CACHE_HOME (~/.cache),
// $XDG_RUNTIME_DIR and $XDG_CONFIG_HOME (~/.config), each + "/banger".
// Relative XDG values are ignored, as the XDG spec requires. Without
// XDG_RUNTIME_DIR the runtime dir is /tmp/banger-<uid>, created 0700 here
// and refused unless it is a real directory owned by the current user.
func User() (Layout, error) {
	l := Layout{Mode: ModeUser}
	home, herr := os.UserHomeDir()
	dir := func(env, homeRel string) (string, error) {
		if v := os.Getenv(env); filepath.IsAbs(v) {
			return filepath.Join(v, "banger"), nil
		}
		if herr != nil || !filepath.IsAbs(home) {
			return "", fmt.Errorf("cannot place banger's files: $%s is unset and the home directory is unknown (set HOME or %s)", env, env)
		}
		return filepath.Join(home, homeRel, "banger"), nil
	}
	var err error
	if l.StateDir, err = dir("XDG_STATE_HOME", ".local/state"); err != nil {
		return Layout{}, err
	}
	if l.CacheDir, err = dir("XDG_CACHE_HOME", ".cache"); err != nil {
		return Layout{}, err
	}
	if l.ConfigDir, err = dir("XDG_CONFIG_HOME", ".config"); err != nil {
		return Layout{}, err
	}
	if v := os.Getenv("XDG_RUNTIME_DIR"); filepath.IsAbs(v) {
		l.RuntimeDir = filepath.Join(v, "banger")
	} else {
		l.RuntimeDir = filepath.Join(os.TempDir(), "banger-"+strconv.Itoa(os.Geteuid()))
		if err := os.Mkdir(l.RuntimeDir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return Layout{}, fmt.Errorf("create runtime dir: %w", err)
		}
		if err := checkPrivateDir(l.RuntimeDir, false); err != nil {
			return Layout{}, err
		}
	}
	return l, nil
}

// System returns the system-mode layout.
func System() Layout {
	return Layout{
		Mode:       ModeSystem,
		StateDir:   "/var/lib/banger",
		CacheDir:   "/var/cache/banger",
		RuntimeDir: "/run/banger",
		ConfigDir:  "/etc/banger",
	}
}

// Environment variables read by FromEnv.
const (
	EnvMode       = "BANGER_MODE"
	EnvStateDir   = "BANGER_STATE_DIR"
	EnvCacheDir   = "BANGER_CACHE_DIR"
	EnvRuntimeDir = "BANGER_RUNTIME_DIR"
	EnvConfigDir  = "BANGER_CONFIG_DIR"
	// EnvHelperSocket replaces DefaultHelperSocket (tests).
	EnvHelperSocket = "BANGER_HELPER_SOCKET"
)

// FromEnv returns the layout selected by the environment: BANGER_MODE
// ("user", the default, or "system") picks User or System, then
// BANGER_STATE_DIR, BANGER_CACHE_DIR, BANGER_RUNTIME_DIR and
// BANGER_CONFIG_DIR (absolute paths) replace individual directories, and
// BANGER_HELPER_SOCKET the root helper's socket.
func FromEnv() (Layout, error) {
	overrides := []struct {
		env string
		dst func(*Layout) *string
	}{
		{EnvStateDir, func(l *Layout) *string { return &l.StateDir }},
		{EnvCacheDir, func(l *Layout) *string { return &l.CacheDir }},
		{EnvRuntimeDir, func(l *Layout) *string { return &l.RuntimeDir }},
		{EnvConfigDir, func(l *Layout) *string { return &l.ConfigDir }},
	}
	all := true
	for _, o := range overrides {
		v := os.Getenv(o.env)
		if v == "" {
			all = false
			continue
		}
		if !filepath.IsAbs(v) {
			return Layout{}, fmt.Errorf("%s must be an absolute path, got %q", o.env, v)
		}
	}
	var l Layout
	switch mode := os.Getenv(EnvMode); mode {
	case "", ModeUser:
		if all {
			// Everything is overridden: do not require HOME or create
			// the /tmp fallback.
			l = Layout{Mode: ModeUser}
			break
		}
		var err error
		if l, err = User(); err != nil {
			return Layout{}, err
		}
	case ModeSystem:
		l = System()
	default:
		return Layout{}, fmt.Errorf("%s must be %q or %q, got %q", EnvMode, ModeUser, ModeSystem, mode)
	}
	for _, o := range overrides {
		if v := os.Getenv(o.env); v != "" {
			*o.dst(&l) = filepath.Clean(v)
		}
	}
	if v := os.Getenv(EnvHelperSocket); v != "" {
		if !filepath.IsAbs(v) {
			return Layout{}, fmt.Errorf("%s must be an absolute path, got %q", EnvHelperSocket, v)
		}
		l.HelperSock = filepath.Clean(v)
	}
	return l, nil
}

// Ensure creates the directories the daemon writes: StateDir (0700) with
// its vms, images, kernels, ssh (0700) and logs subdirectories, CacheDir,
// and RuntimeDir (0700) with its vms subdirectory. RuntimeDir must be a
// real directory owned by the current euid; group/other permission bits on
// it are removed. ConfigDir is only read, never created. Run Ensure as the
// daemon's user: the root helper must not call it on the owner's layout.
func (l Layout) Ensure() error {
	for _, d := range []string{l.StateDir, l.CacheDir, l.RuntimeDir} {
		if !filepath.IsAbs(d) {
			return fmt.Errorf("layout directory %q is not absolute", d)
		}
	}
	mk := func(dir string, mode os.FileMode) error {
		if err := os.MkdirAll(dir, mode); err != nil {
			return fmt.Errorf("create %s: %w", dir, err)
		}
		return nil
	}
	if err := mk(filepath.Dir(l.RuntimeDir), 0o755); err != nil {
		return err
	}
	if err := os.Mkdir(l.RuntimeDir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("create runtime dir %s: %w", l.RuntimeDir, err)
	}
	if err := checkPrivateDir(l.RuntimeDir, true); err != nil {
		return err
	}
	for _, d := range []struct {
		dir  string
		mode os.FileMode
	}{
		{l.StateDir, 0o700},
		{filepath.Join(l.StateDir, "vms"), 0o700},
		{l.ImagesDir(), 0o755},
		{l.KernelsDir(), 0o755},
		{l.SSHDir(), 0o700},
		{l.LogDir(), 0o700},
		{l.CacheDir, 0o755},
		{filepath.Join(l.RuntimeDir, "vms"), 0o700},
	} {
		if err := mk(d.dir, d.mode); err != nil {
			return err
		}
	}
	return nil
}

// checkPrivateDir refuses dir unless it is a directory (not a symlink)
// owned by the current euid. With fix, group/other permission bits are
// cleared; without, they are an error.
func checkPrivateDir(dir string, fix bool) error {
	st, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("runtime dir: %w", err)
	}
	if st.Mode()&os.ModeSymlink != 0 || !st.IsDir() {
		return fmt.Errorf("runtime dir %s is not a directory (%s): remove it, or set %s", dir, st.Mode().Type(), EnvRuntimeDir)
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("runtime dir %s: cannot read its owner", dir)
	}
	if euid := os.Geteuid(); int(sys.Uid) != euid {
		return fmt.Errorf("runtime dir %s is owned by uid %d, not by you (uid %d): remove it, or set %s to a directory of yours", dir, sys.Uid, euid, EnvRuntimeDir)
	}
	if st.Mode().Perm()&0o077 != 0 {
		if !fix {
			return fmt.Errorf("runtime dir %s has mode %v, want 0700: chmod 700 %s", dir, st.Mode().Perm(), dir)
		}
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("make runtime dir %s private: %w", dir, err)
		}
	}
	return nil
}

// DaemonSocket is the owner daemon's RPC socket.
func (l Layout) DaemonSocket() string { return filepath.Join(l.RuntimeDir, "bangerd.sock") }

// HelperSocket is the root helper's RPC socket (DefaultHelperSocket unless
// the layout says otherwise).
func (l Layout) HelperSocket() string {
	if l.HelperSock != "" {
		return l.HelperSock
	}
	return DefaultHelperSocket
}

// DBPath is the state store.
func (l Layout) DBPath() string { return filepath.Join(l.StateDir, "banger.db") }

// ConfigFile is config.toml.
func (l Layout) ConfigFile() string { return filepath.Join(l.ConfigDir, "config.toml") }

// VMDir holds one VM's disks. id must be a VM id (no separators).
func (l Layout) VMDir(id string) string { return filepath.Join(l.StateDir, "vms", id) }

// VMRuntimeDir holds one VM's sockets and pidfiles.
func (l Layout) VMRuntimeDir(id string) string { return filepath.Join(l.RuntimeDir, "vms", id) }

// TemplatesDir holds VM templates (internal/template).
func (l Layout) TemplatesDir() string { return filepath.Join(l.StateDir, "templates") }

// ImagesDir is the image store.
func (l Layout) ImagesDir() string { return filepath.Join(l.StateDir, "images") }

// KernelsDir is the kernel store.
func (l Layout) KernelsDir() string { return filepath.Join(l.StateDir, "kernels") }

// SSHDir holds banger's ssh key and known_hosts.
func (l Layout) SSHDir() string { return filepath.Join(l.StateDir, "ssh") }

// KnownHostsPath is banger's own known_hosts file (guest host keys).
func (l Layout) KnownHostsPath() string { return filepath.Join(l.SSHDir(), "known_hosts") }

// SSHConfigPath is the ssh_config file the daemon keeps current with one
// block per VM; `banger ssh-config --install` includes it from ~/.ssh/config.
func (l Layout) SSHConfigPath() string { return filepath.Join(l.SSHDir(), "config") }

// LogDir holds daemon and VMM logs.
func (l Layout) LogDir() string { return filepath.Join(l.StateDir, "logs") }

// BlobCacheDir holds downloaded OCI blobs and packages (prunable).
func (l Layout) BlobCacheDir() string { return filepath.Join(l.CacheDir, "blobs") }

// SystemJailerChrootBase is the Firecracker jailer's chroot base in system
// mode: root's own directory (0711), outside the owner's state, so the root
// jailer never creates or chowns anything in a tree the owner can write.
const SystemJailerChrootBase = "/var/lib/banger-jail"

// JailerChrootBase is where the Firecracker jailer builds its chroots:
// SystemJailerChrootBase in system mode; in user mode StateDir/jail, which
// only a daemon that itself runs as root uses (the root helper refuses a
// base below the owner's directories).
func (l Layout) JailerChrootBase() string {
	if l.Mode == ModeSystem {
		return SystemJailerChrootBase
	}
	return filepath.Join(l.StateDir, "jail")
}

// ManagedRoots are the directories the root helper may touch on the
// owner's behalf (state, cache, runtime).
func (l Layout) ManagedRoots() []string {
	return []string{l.StateDir, l.CacheDir, l.RuntimeDir}
}
