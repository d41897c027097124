package privops

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/bangerdev/banger/internal/paths"
)

// Policy is what the root helper lets its owner daemon ask for: which
// objects belong to banger (bridge, tap and dm name prefixes), where the
// owner's files are (ManagedRoots), which VMM binaries may be launched and
// as whom. The Validate* methods check one operation's arguments against
// it; every refusal wraps ErrInvalidArgument and names the bad field.
//
// The checks are written against a hostile caller: a compromised owner
// daemon must not be able to make the helper touch a host interface, a
// device, a file outside the owner's directories or a process that is not
// a VMM, nor run anything but a configured VMM binary as anyone but the
// owner.
type Policy struct {
	// OwnerUID and OwnerGID are the owner daemon's ids: the only ids the
	// helper chowns to and launches VMMs as (unless the owner is root).
	OwnerUID, OwnerGID int
	// ManagedRoots are the owner's state, cache and runtime directories
	// (paths.Layout.ManagedRoots). Every path argument must be below one
	// and reach it without symlinks (paths.CheckNoSymlinks).
	ManagedRoots []string
	// VMMBinaries maps each allowed argv[0] base name (e.g.
	// "qemu-system-x86_64", "firecracker", "jailer") to its absolute path.
	// LaunchVMM accepts either form and always runs the absolute path.
	VMMBinaries map[string]string
	// BridgeName and BridgeCIDR are banger's bridge (e.g. "br-banger",
	// "172.30.0.1/24"). The bridge is the only one the helper creates or
	// deletes; VM addresses must lie inside BridgeCIDR.
	BridgeName string
	BridgeCIDR string
	// TapPrefix (default TapNamePrefix) and DMPrefix (default
	// DMNamePrefix) must start every tap and device-mapper name.
	TapPrefix string
	DMPrefix  string
	// DNSServer (ip:port) and DNSDomain (default "vm") are the only
	// resolver routing the helper installs (validate_net.go): root's own
	// config, never the request's. No DNSServer = no resolver routing.
	DNSServer string
	DNSDomain string
	// JailerChrootBase is the Firecracker jailer's chroot base: root's own
	// directory (system mode: /var/lib/banger-jail), never below a managed
	// root. A jailer's --chroot-base-dir must equal it, and PrepareJail and
	// RemoveJail work below it. "" = no jailer launches.
	JailerChrootBase string
	// SysDir is where sysfs is mounted (default /sys; tests point it
	// elsewhere).
	SysDir string
}

// Limits on launch arguments.
const (
	maxArgs     = 512
	maxArgBytes = 16 << 10
	maxEnv      = 64
)

// allowedSignals are the signals SignalVMM may send.
var allowedSignals = []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR1}

// deniedEnv are environment variables a VMM may not be given: they load
// code or data into the process from elsewhere.
var deniedEnv = []string{"GCONV_PATH", "GLIBC_TUNABLES", "HOSTALIASES", "LOCPATH", "NLSPATH", "RESOLV_HOST_CONF", "MALLOC_TRACE", "LD_"}

func invalid(field, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalidArgument, field, fmt.Sprintf(format, args...))
}

// Check validates the policy itself (run once at helper start).
func (p *Policy) Check() error {
	var errs []error
	if p.OwnerUID < 0 || p.OwnerGID < 0 {
		errs = append(errs, fmt.Errorf("owner uid/gid %d/%d must be set", p.OwnerUID, p.OwnerGID))
	}
	if len(p.ManagedRoots) == 0 {
		errs = append(errs, errors.New("no managed roots"))
	}
	for _, r := range p.ManagedRoots {
		if !filepath.IsAbs(r) || filepath.Clean(r) != r || r == "/" {
			errs = append(errs, fmt.Errorf("managed root %q must be a clean absolute path other than /", r))
		}
	}
	if len(p.VMMBinaries) == 0 {
		errs = append(errs, errors.New("no VMM binaries configured"))
	}
	for name, path := range p.VMMBinaries {
		if name == "" || strings.ContainsRune(name, '/') {
			errs = append(errs, fmt.Errorf("VMM binary name %q must be a base name", name))
		}
		if !filepath.IsAbs(path) || filepath.Clean(path) != path {
			errs = append(errs, fmt.Errorf("VMM binary %s: path %q must be clean and absolute", name, path))
		}
	}
	if err := checkIfName("bridge name", p.BridgeName); err != nil {
		errs = append(errs, err)
	}
	if _, err := p.bridgePrefix(); err != nil {
		errs = append(errs, err)
	}
	if err := checkIfName("tap prefix", p.tapPrefix()); err != nil || len(p.tapPrefix()) > 10 || !strings.HasPrefix(p.tapPrefix(), TapNamePrefix) {
		errs = append(errs, fmt.Errorf("tap prefix %q must be 1-10 characters of [a-z0-9-] starting with %q", p.tapPrefix(), TapNamePrefix))
	}
	if strings.HasPrefix(p.BridgeName, p.tapPrefix()) {
		errs = append(errs, fmt.Errorf("bridge name %q must not start with the tap prefix %q", p.BridgeName, p.tapPrefix()))
	}
	if err := checkDMChars("dm prefix", p.dmPrefix()); err != nil || len(p.dmPrefix()) > 32 || !strings.HasPrefix(p.dmPrefix(), DMNamePrefix) {
		errs = append(errs, fmt.Errorf("dm prefix %q must be 1-32 characters of [A-Za-z0-9._-] starting with %q", p.dmPrefix(), DMNamePrefix))
	}
	errs = append(errs, p.checkDNS(), p.CheckJailBase())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("root helper policy: %w", err)
	}
	return nil
}

// CheckJailBase checks the jailer chroot base (part of Check): clean and
// absolute and neither below nor above a managed root (the owner must not
// be able to write in it, nor it hold the owner's files). "" passes.
func (p *Policy) CheckJailBase() error {
	b := p.JailerChrootBase
	if b == "" {
		return nil
	}
	if !filepath.IsAbs(b) || filepath.Clean(b) != b || b == "/" {
		return fmt.Errorf("jailer chroot base %q must be a clean absolute path other than /", b)
	}
	for _, r := range p.ManagedRoots {
		_, below := paths.Beneath(r, b)
		_, above := paths.Beneath(b, r)
		if below == nil || above == nil {
			return fmt.Errorf("jailer chroot base %s must lie outside the owner's directories (it overlaps %s): the jailer runs as root in it", b, r)
		}
	}
	return nil
}

func (p *Policy) tapPrefix() string {
	if p.TapPrefix == "" {
		return TapNamePrefix
	}
	return p.TapPrefix
}

func (p *Policy) dmPrefix() string {
	if p.DMPrefix == "" {
		return DMNamePrefix
	}
	return p.DMPrefix
}

func (p *Policy) bridgePrefix() (netip.Prefix, error) {
	return checkBridgeCIDR("bridge CIDR", p.BridgeCIDR)
}

// clip shortens hostile input for error messages.
func clip(s string) string {
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	return s
}

// ValidateBridgeName accepts only the configured bridge.
func (p *Policy) ValidateBridgeName(name string) error {
	if name != p.BridgeName {
		return invalid("bridge", "%q is not banger's bridge %q", clip(name), p.BridgeName)
	}
	return nil
}

// ValidateBridge checks EnsureBridge's spec: the configured bridge with the
// configured address, MTU 0 (default) or 576-65535.
func (p *Policy) ValidateBridge(spec BridgeSpec) error {
	if err := ValidateBridgeSpec(spec); err != nil {
		return err
	}
	if err := p.ValidateBridgeName(spec.Name); err != nil {
		return err
	}
	want, err := p.bridgePrefix()
	if err != nil {
		return invalid("bridge.cidr", "%v", err)
	}
	got, err := netip.ParsePrefix(spec.CIDR)
	if err != nil || got != want {
		return invalid("bridge.cidr", "%q is not banger's bridge address %s", clip(spec.CIDR), want)
	}
	return checkUplink("bridge.uplink", spec.Uplink, p.BridgeName, p.tapPrefix())
}

// ValidateTapName checks a tap name with the one rule (ValidateTapName)
// and the policy's tap prefix.
func (p *Policy) ValidateTapName(field, name string) error {
	return checkTapName(field, p.tapPrefix(), name)
}

// ValidateTap checks CreateTap's spec: a banger tap on banger's bridge,
// owned by the owner (or -1, no owner).
func (p *Policy) ValidateTap(spec TapSpec) error {
	if err := ValidateTapSpec(spec); err != nil {
		return err
	}
	if err := p.ValidateTapName("tap.name", spec.Name); err != nil {
		return err
	}
	if spec.Bridge != p.BridgeName {
		return invalid("tap.bridge", "%q is not banger's bridge %q", clip(spec.Bridge), p.BridgeName)
	}
	if spec.Owner != -1 && spec.Owner != p.OwnerUID {
		return invalid("tap.owner", "uid %d is not the owner (%d) or -1", spec.Owner, p.OwnerUID)
	}
	if spec.Group != -1 && spec.Group != p.OwnerGID {
		return invalid("tap.group", "gid %d is not the owner's (%d) or -1", spec.Group, p.OwnerGID)
	}
	return nil
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := (uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// ValidatePath checks that path is clean, absolute, below a managed root
// and reaches it without symlinks (paths.CheckNoSymlinks). With mustExist
// the final component must exist too.
func (p *Policy) ValidatePath(field, path string, mustExist bool) error {
	if err := checkCleanPath(field, path); err != nil {
		return err
	}
	var lastErr error
	for _, root := range p.ManagedRoots {
		if _, err := paths.Beneath(root, path); err != nil {
			continue
		}
		if err := paths.CheckNoSymlinks(root, path); err != nil {
			lastErr = err
			continue
		}
		if mustExist {
			if _, err := lstat(path); err != nil {
				return invalid(field, "%s: %v", path, err)
			}
		}
		return nil
	}
	if lastErr != nil {
		return fmt.Errorf("%w: %s: %w", ErrInvalidArgument, field, lastErr)
	}
	return invalid(field, "%s is not inside banger's directories (%s)", clip(path), strings.Join(p.ManagedRoots, ", "))
}

// ValidateLoop checks AttachLoop's spec: an existing regular file below a
// managed root.
func (p *Policy) ValidateLoop(spec LoopSpec) error {
	if err := p.ValidatePath("loop.file", spec.File, true); err != nil {
		return err
	}
	return ValidateLoopSpec(spec)
}

// ValidateLoopDevice accepts /dev/loopN only, and only while it is free or
// backed by a file below a managed root (its backing file in sysfs): a loop
// device of someone else's (after a host reboot the same number may be
// anybody's) is never detached or used as a snapshot device.
func (p *Policy) ValidateLoopDevice(field, dev string) error {
	if err := checkLoopDevice(field, dev); err != nil {
		return err
	}
	n := strings.TrimPrefix(dev, "/dev/loop")
	sys := p.SysDir
	if sys == "" {
		sys = "/sys"
	}
	b, err := os.ReadFile(filepath.Join(sys, "block", "loop"+n, "loop", "backing_file"))
	if err != nil {
		return nil // not attached: nothing of anyone's to touch
	}
	backing := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), " (deleted)")
	for _, root := range p.ManagedRoots {
		if _, err := paths.Beneath(root, backing); err == nil {
			return nil
		}
	}
	return invalid(field, "%s is backed by %s, which is not banger's (not below %s)", dev, clip(backing), strings.Join(p.ManagedRoots, ", "))
}

// ValidateDMName checks a device-mapper name: the dm prefix followed by an
// id, at most 100 bytes of [A-Za-z0-9._-].
func (p *Policy) ValidateDMName(field, name string) error {
	return checkDMName(field, p.dmPrefix(), name)
}

// ValidateSnapshot checks CreateSnapshot's spec: a banger dm name, two
// distinct loop devices, a positive size in whole 512-byte sectors.
func (p *Policy) ValidateSnapshot(spec SnapshotSpec) error {
	if err := ValidateSnapshotSpec(spec); err != nil {
		return err
	}
	if err := p.ValidateDMName("snapshot.name", spec.Name); err != nil {
		return err
	}
	if err := p.ValidateLoopDevice("snapshot.origin", spec.Origin); err != nil {
		return err
	}
	if err := p.ValidateLoopDevice("snapshot.cow", spec.COW); err != nil {
		return err
	}
	return nil
}

// resolveVMM maps argv[0] (a configured base name, or a configured absolute
// path) to the configured name and absolute path.
func (p *Policy) resolveVMM(argv0 string) (name, path string, ok bool) {
	if abs, found := p.VMMBinaries[argv0]; found {
		return argv0, abs, true
	}
	for n, abs := range p.VMMBinaries {
		if argv0 == abs {
			return n, abs, true
		}
	}
	return "", "", false
}

func isJailer(name string) bool { return strings.HasPrefix(name, "jailer") }

// ValidateLaunch checks LaunchVMM's spec and returns it with argv[0]
// replaced by the configured absolute path: argv[0] must be a configured
// VMM binary, no argument empty or holding NUL, the working dir, log and
// pid file below managed roots without symlinks, the environment free of
// loader variables. Unless the owner is root, the VMM must run as the
// owner; the jailer (which drops privileges itself) must be started as
// root with --uid/--gid of the owner, an --exec-file that is a configured
// firecracker and a --chroot-base-dir below a managed root.
func (p *Policy) ValidateLaunch(spec LaunchSpec) (LaunchSpec, error) {
	if err := ValidateLaunchSpec(spec); err != nil {
		return spec, err
	}
	name, abs, ok := p.resolveVMM(spec.Argv[0])
	if !ok {
		return spec, invalid("launch.argv[0]", "%q is not a configured VMM binary (allowed: %s)", clip(spec.Argv[0]), strings.Join(p.vmmNames(), ", "))
	}
	if err := p.ValidatePath("launch.dir", spec.Dir, true); err != nil {
		return spec, err
	}
	if err := p.ValidatePath("launch.log_path", spec.LogPath, false); err != nil {
		return spec, err
	}
	if spec.PIDFile != "" {
		if err := p.ValidatePath("launch.pid_file", spec.PIDFile, false); err != nil {
			return spec, err
		}
	}
	if isJailer(name) {
		if err := p.validateJailer(spec); err != nil {
			return spec, err
		}
	} else if err := p.validateCreds(spec.UID, spec.GID); err != nil {
		return spec, err
	}
	out := spec
	out.Argv = slices.Clone(spec.Argv)
	out.Argv[0] = abs
	out.Env = slices.Clone(spec.Env)
	return out, nil
}

func (p *Policy) vmmNames() []string {
	var names []string
	for n := range p.VMMBinaries {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// validateCreds: the VMM runs as the owner; a root owner may also keep
// root (-1/-1 or 0/0).
func (p *Policy) validateCreds(uid, gid int) error {
	if uid == p.OwnerUID && gid == p.OwnerGID {
		return nil
	}
	if p.OwnerUID == 0 && uid == -1 && gid == -1 {
		return nil
	}
	return invalid("launch.uid", "uid/gid %d/%d: the VMM must run as the owner (%d/%d)", uid, gid, p.OwnerUID, p.OwnerGID)
}

// validateJailer checks the jailer's own options (those before "--").
func (p *Policy) validateJailer(spec LaunchSpec) error {
	if spec.UID != -1 && spec.UID != 0 || spec.GID != -1 && spec.GID != 0 {
		if err := p.validateCreds(spec.UID, spec.GID); err != nil {
			return invalid("launch.uid", "the jailer starts as root and drops to --uid/--gid itself; got uid/gid %d/%d", spec.UID, spec.GID)
		}
	}
	opts := map[string][]string{}
	args := spec.Argv[1:]
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			break
		}
		if !strings.HasPrefix(a, "--") {
			return invalid("launch.argv", "unexpected jailer argument %q", clip(a))
		}
		key, val, hasVal := strings.Cut(a[2:], "=")
		switch key {
		case "daemonize", "new-pid-ns":
			if hasVal {
				return invalid("launch.argv", "jailer flag --%s takes no value", key)
			}
			continue
		}
		if !hasVal {
			if i+1 >= len(args) {
				return invalid("launch.argv", "jailer option --%s has no value", key)
			}
			i++
			val = args[i]
		}
		opts[key] = append(opts[key], val)
	}
	one := func(key string) (string, error) {
		v := opts[key]
		if len(v) != 1 {
			return "", invalid("launch.argv", "jailer needs exactly one --%s (got %d)", key, len(v))
		}
		return v[0], nil
	}
	for _, k := range []string{"uid", "gid"} {
		v, err := one(k)
		if err != nil {
			return err
		}
		want := p.OwnerUID
		if k == "gid" {
			want = p.OwnerGID
		}
		if n, err := strconv.Atoi(v); err != nil || n != want {
			return invalid("launch.argv", "jailer --%s %q must be the owner's %d", k, clip(v), want)
		}
	}
	exe, err := one("exec-file")
	if err != nil {
		return err
	}
	if n, _, ok := p.resolveVMM(exe); !ok || !strings.HasPrefix(n, "firecracker") {
		return invalid("launch.argv", "jailer --exec-file %q is not a configured firecracker", clip(exe))
	}
	base, err := one("chroot-base-dir")
	if err != nil {
		return err
	}
	if p.JailerChrootBase == "" {
		return invalid("launch.argv", "the root helper has no jailer chroot base configured: jailer mode needs system mode")
	}
	if base != p.JailerChrootBase {
		return invalid("launch.argv", "jailer --chroot-base-dir %q must be root's jailer chroot base %s", clip(base), p.JailerChrootBase)
	}
	for k := range opts {
		switch k {
		case "id", "uid", "gid", "exec-file", "chroot-base-dir", "netns", "cgroup", "cgroup-version", "resource-limit":
		default:
			return invalid("launch.argv", "jailer option --%s is not allowed", clip(k))
		}
	}
	for _, v := range opts["netns"] {
		// Exactly /run/netns/NAME: a clean path, one plain name (no "..":
		// /run/netns/../../proc/1/ns/net is the host's namespace).
		name, ok := strings.CutPrefix(v, "/run/netns/")
		if !ok {
			name, ok = strings.CutPrefix(v, "/var/run/netns/")
		}
		if !ok || filepath.Clean(v) != v || !jailerNameRE.MatchString(name) || name == "." || name == ".." {
			return invalid("launch.argv", "jailer --netns %q must be /run/netns/NAME", clip(v))
		}
	}
	for _, v := range opts["cgroup"] {
		key, val, ok := strings.Cut(v, "=")
		if !ok || !slices.Contains(jailerCgroupKeys, key) || !jailerCgroupValueRE.MatchString(val) {
			return invalid("launch.argv", "jailer --cgroup %q: want KEY=VALUE with KEY one of %s and a plain value", clip(v), strings.Join(jailerCgroupKeys, ", "))
		}
	}
	for _, v := range opts["cgroup-version"] {
		if v != "1" && v != "2" {
			return invalid("launch.argv", "jailer --cgroup-version %q must be 1 or 2", clip(v))
		}
	}
	for _, v := range opts["resource-limit"] {
		key, val, ok := strings.Cut(v, "=")
		if n, err := strconv.ParseUint(val, 10, 64); !ok || (key != "fsize" && key != "no-file") || err != nil || n == 0 {
			return invalid("launch.argv", "jailer --resource-limit %q must be fsize=N or no-file=N", clip(v))
		}
	}
	if id, err := one("id"); err != nil {
		return err
	} else if checkJailerID("launch.argv --id", id) != nil {
		return invalid("launch.argv", "jailer --id %q must be 1-64 bytes of [A-Za-z0-9-]", clip(id))
	}
	return nil
}

var (
	jailerNameRE        = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
	jailerCgroupValueRE = regexp.MustCompile(`^[0-9a-z ,:.-]{1,64}$`)
	// jailerCgroupKeys are the cgroup files the jailer may set (v1 and v2).
	jailerCgroupKeys = []string{"cpu.max", "cpu.weight", "cpu.shares", "cpu.cfs_quota_us", "cpu.cfs_period_us",
		"cpuset.cpus", "cpuset.mems", "memory.max", "memory.high", "memory.limit_in_bytes", "pids.max", "io.weight"}
)

// ValidateSignal checks SignalVMM's arguments: pid > 1, a marker of at
// least 4 bytes, a Comm that is one of the configured VMM binaries (so the
// helper only ever signals VMMs), and one of SIGTERM, SIGKILL, SIGINT,
// SIGHUP, SIGUSR1.
func (p *Policy) ValidateSignal(id ProcessIdentity, sig syscall.Signal) error {
	if err := ValidateSignalArgs(id, sig); err != nil {
		return err
	}
	comm := ProcessComm(id.Comm)
	found := false
	for n, abs := range p.VMMBinaries {
		if id.Comm != "" && (comm == ProcessComm(n) || comm == ProcessComm(abs)) {
			found = true
			break
		}
	}
	if !found {
		return invalid("signal.comm", "%q is not a configured VMM binary (allowed: %s)", clip(id.Comm), strings.Join(p.vmmNames(), ", "))
	}
	return nil
}

// ValidateChown checks ChownPath's arguments: an existing path below a
// managed root, reached without symlinks (and not itself one), given to
// the owner's uid and gid.
func (p *Policy) ValidateChown(path string, uid, gid int) error {
	if err := ValidateChownArgs(path, uid, gid); err != nil {
		return err
	}
	if err := p.ValidatePath("chown.path", path, true); err != nil {
		return err
	}
	if uid != p.OwnerUID || gid != p.OwnerGID {
		return invalid("chown.uid", "%d/%d: paths may only be given to the owner (%d/%d)", uid, gid, p.OwnerUID, p.OwnerGID)
	}
	return nil
}

// ValidateJail checks PrepareJail's spec: a jail base is configured, the
// spec is well formed (ValidateJailSpec), the exec name is a configured
// firecracker's, the VMM is the owner, and every source is a file below a
// managed root reached without symlinks or a banger device-mapper device.
func (p *Policy) ValidateJail(spec JailSpec) error {
	if err := p.ValidateRemoveJail(spec); err != nil {
		return err
	}
	if err := ValidateJailSpec(spec); err != nil {
		return err
	}
	if spec.UID != p.OwnerUID || spec.GID != p.OwnerGID {
		return invalid("jail.uid", "uid/gid %d/%d: the jail is the owner's (%d/%d)", spec.UID, spec.GID, p.OwnerUID, p.OwnerGID)
	}
	for i, f := range spec.Files {
		field := fmt.Sprintf("jail.files[%d].source", i)
		if name, ok := strings.CutPrefix(f.Source, "/dev/mapper/"); ok {
			if err := p.ValidateDMName(field, name); err != nil {
				return err
			}
			continue
		}
		if err := p.ValidatePath(field, f.Source, true); err != nil {
			return err
		}
	}
	return nil
}

// ValidateRemoveJail checks RemoveJail's spec: a jail base is configured,
// the exec name is a configured firecracker's and the id the jailer's.
func (p *Policy) ValidateRemoveJail(spec JailSpec) error {
	if p.JailerChrootBase == "" {
		return invalid("jail", "the root helper has no jailer chroot base configured: jailer mode needs system mode")
	}
	if err := checkJailerName("jail.exec_name", spec.ExecName); err != nil {
		return err
	}
	found := false
	for n, abs := range p.VMMBinaries {
		if strings.HasPrefix(n, "firecracker") && (n == spec.ExecName || filepath.Base(abs) == spec.ExecName) {
			found = true
		}
	}
	if !found {
		return invalid("jail.exec_name", "%q is not a configured firecracker", clip(spec.ExecName))
	}
	return checkJailerID("jail.id", spec.ID)
}

func lstat(path string) (os.FileInfo, error) { return os.Lstat(path) }
