package privops

// The one set of argument validators.
//
// Every privileged operation's arguments are checked by the functions in
// this file, whichever path the request takes: Local (the in-process
// implementation, a daemon running as root, and the root helper's
// implementation) calls them first thing, and the helper's Policy.Validate*
// methods (validate.go) call the same functions and then add what only the
// helper pins from root's configuration (banger's bridge and CIDR, the
// owner's uid, the managed roots, the configured VMM binaries, the DNS
// server and domain, the jail base). So a name has one rule: there is no
// request one path accepts and the other refuses on syntax.
//
// The rules are the strictest that still admit every name banger
// generates: interfaces 1-15 bytes of [a-z0-9-] not starting with '-'
// (br-banger; taps bgtap + lowercase hex, pool taps bgtapp + hex), dm names
// banger- + at most 93 bytes of [A-Za-z0-9._-] (disk.DMName makes at most
// 64), loop devices /dev/loop + 1-7 digits.

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"unicode/utf8"
)

// TapNamePrefix is the prefix every tap banger creates or deletes must carry.
const TapNamePrefix = "bgtap"

// maxDMName is the longest device-mapper name banger uses (the kernel
// allows 127; the "-origin" helper device must fit too).
const maxDMName = 100

// checkIfName: 1-15 bytes of [a-z0-9-], not starting with '-'.
func checkIfName(field, name string) error {
	if name == "" || len(name) > 15 {
		return invalid(field, "%q must be 1-15 bytes", clip(name))
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return invalid(field, "%q may only contain [a-z0-9-]", clip(name))
		}
	}
	if name[0] == '-' {
		return invalid(field, "%q must not start with '-'", name)
	}
	return nil
}

// ValidateIfName checks an interface name: 1-15 bytes of [a-z0-9-], not
// starting with '-'.
func ValidateIfName(name string) error { return checkIfName("interface", name) }

// checkTapName: an interface name starting with prefix and longer than it.
func checkTapName(field, prefix, name string) error {
	if err := checkIfName(field, name); err != nil {
		return err
	}
	if !strings.HasPrefix(name, prefix) || len(name) == len(prefix) {
		return invalid(field, "%q must start with %q followed by an id", name, prefix)
	}
	return nil
}

// ValidateTapName checks a tap name: an interface name starting with
// TapNamePrefix followed by an id.
func ValidateTapName(name string) error { return checkTapName("tap", TapNamePrefix, name) }

// checkBridgeCIDR: an IPv4 gateway address with a /8-/30 prefix.
func checkBridgeCIDR(field, cidr string) (netip.Prefix, error) {
	pfx, err := netip.ParsePrefix(cidr)
	if err != nil || !pfx.Addr().Is4() || pfx.Bits() < 8 || pfx.Bits() > 30 || pfx.Addr() == pfx.Masked().Addr() {
		return netip.Prefix{}, invalid(field, "%q must be an IPv4 gateway address with a /8-/30 prefix, e.g. 172.30.0.1/24", clip(cidr))
	}
	return pfx, nil
}

// checkUplink: "" or an interface name that is neither the bridge nor a tap.
func checkUplink(field, uplink, bridge, tapPrefix string) error {
	if uplink == "" {
		return nil
	}
	if err := checkIfName(field, uplink); err != nil {
		return err
	}
	if uplink == bridge || strings.HasPrefix(uplink, tapPrefix) {
		return invalid(field, "%q is banger's own interface", uplink)
	}
	return nil
}

// ValidateBridgeSpec checks a BridgeSpec: an interface name without the
// tap prefix, an IPv4 gateway address with a /8-/30 prefix, an MTU of 0
// (default) or 576-65535, an uplink that is not banger's own interface.
func ValidateBridgeSpec(spec BridgeSpec) error {
	if err := checkIfName("bridge.name", spec.Name); err != nil {
		return err
	}
	if strings.HasPrefix(spec.Name, TapNamePrefix) {
		return invalid("bridge.name", "%q must not use the tap prefix %q", spec.Name, TapNamePrefix)
	}
	if _, err := checkBridgeCIDR("bridge.cidr", spec.CIDR); err != nil {
		return err
	}
	if spec.MTU != 0 && (spec.MTU < 576 || spec.MTU > 65535) {
		return invalid("bridge.mtu", "%d out of range 576-65535", spec.MTU)
	}
	return checkUplink("bridge.uplink", spec.Uplink, spec.Name, TapNamePrefix)
}

// ValidateTapSpec checks a TapSpec: a tap name, a bridge name, owner and
// group -1 (none) or an id.
func ValidateTapSpec(spec TapSpec) error {
	if err := checkTapName("tap.name", TapNamePrefix, spec.Name); err != nil {
		return err
	}
	if err := checkIfName("tap.bridge", spec.Bridge); err != nil {
		return err
	}
	if spec.Owner < -1 || spec.Group < -1 {
		return invalid("tap.owner", "owner/group %d/%d (use -1 for none)", spec.Owner, spec.Group)
	}
	return nil
}

// ValidateResolverSpec checks a ResolverSpec: a bridge name and, when
// enabling, a DNS server ip:port and a DNS domain ("~vm" and "vm." name
// the domain "vm").
func ValidateResolverSpec(spec ResolverSpec) error {
	if err := checkIfName("resolver.bridge", spec.Bridge); err != nil {
		return err
	}
	if !spec.Enable {
		return nil
	}
	if ap, err := netip.ParseAddrPort(spec.Server); err != nil || ap.Port() == 0 {
		return invalid("resolver.server", "%q must be ip:port", clip(spec.Server))
	}
	return checkDNSDomain("resolver.domain", strings.TrimSuffix(strings.TrimPrefix(spec.Domain, "~"), "."))
}

// ValidateVMNetSpec checks a VMNetSpec: a unicast IPv4 address, a locally
// administered unicast MAC, a tap and a bridge name, allow_lan only with
// nat.
func ValidateVMNetSpec(spec VMNetSpec) error {
	ip, err := netip.ParseAddr(spec.VMIP)
	if err != nil || !ip.Is4() || ip.IsUnspecified() || ip.IsMulticast() || ip.IsLoopback() {
		return invalid("vmnet.vm_ip", "%q must be a unicast IPv4 address", clip(spec.VMIP))
	}
	if err := checkVMMAC("vmnet.mac", spec.MAC); err != nil {
		return err
	}
	if err := checkTapName("vmnet.tap", TapNamePrefix, spec.Tap); err != nil {
		return err
	}
	if err := checkIfName("vmnet.bridge", spec.Bridge); err != nil {
		return err
	}
	if spec.AllowLAN && !spec.NAT {
		return invalid("vmnet.allow_lan", "allow_lan needs nat (a VM without NAT never leaves the bridge)")
	}
	return nil
}

// checkCleanPath: a clean absolute path of valid UTF-8 without NUL, CR or
// LF.
func checkCleanPath(field, path string) error {
	if path == "" {
		return invalid(field, "empty path")
	}
	if !utf8.ValidString(path) || strings.ContainsAny(path, "\x00\n\r") {
		return invalid(field, "%q contains control bytes", clip(path))
	}
	if !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return invalid(field, "%q must be a clean absolute path", clip(path))
	}
	return nil
}

// ValidateLoopSpec checks a LoopSpec: a clean absolute path naming a
// regular file (not a symlink).
func ValidateLoopSpec(spec LoopSpec) error {
	if err := checkCleanPath("loop.file", spec.File); err != nil {
		return err
	}
	st, err := os.Lstat(spec.File)
	if err != nil {
		return invalid("loop.file", "%v", err)
	}
	if !st.Mode().IsRegular() {
		return invalid("loop.file", "%s is not a regular file", spec.File)
	}
	return nil
}

// checkLoopDevice: /dev/loop followed by 1-7 digits.
func checkLoopDevice(field, dev string) error {
	n, ok := strings.CutPrefix(dev, "/dev/loop")
	if !ok || n == "" || len(n) > 7 {
		return invalid(field, "%q is not a loop device (want /dev/loopN)", clip(dev))
	}
	for i := 0; i < len(n); i++ {
		if n[i] < '0' || n[i] > '9' {
			return invalid(field, "%q is not a loop device (want /dev/loopN)", clip(dev))
		}
	}
	return nil
}

// ValidateLoopDevice checks that dev names a loop device node (/dev/loopN).
func ValidateLoopDevice(dev string) error { return checkLoopDevice("device", dev) }

// checkDMChars: one or more of [A-Za-z0-9._-].
func checkDMChars(field, name string) error {
	if name == "" {
		return invalid(field, "empty")
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return invalid(field, "%q may only contain [A-Za-z0-9._-]", clip(name))
		}
	}
	return nil
}

// checkDMName: prefix followed by an id, at most maxDMName bytes of
// [A-Za-z0-9._-].
func checkDMName(field, prefix, name string) error {
	if err := checkDMChars(field, name); err != nil {
		return err
	}
	if len(name) > maxDMName {
		return invalid(field, "%q is longer than %d bytes", clip(name), maxDMName)
	}
	if !strings.HasPrefix(name, prefix) || len(name) == len(prefix) {
		return invalid(field, "%q must start with %q followed by an id", name, prefix)
	}
	return nil
}

// ValidateDMName checks a device-mapper name banger may own: DMNamePrefix
// followed by an id, at most 100 bytes of [A-Za-z0-9._-].
func ValidateDMName(name string) error { return checkDMName("dm name", DMNamePrefix, name) }

// ValidateSnapshotSpec checks a SnapshotSpec: a banger dm name, two
// distinct loop devices, a positive size in whole 512-byte sectors.
func ValidateSnapshotSpec(spec SnapshotSpec) error {
	if err := checkDMName("snapshot.name", DMNamePrefix, spec.Name); err != nil {
		return err
	}
	if err := checkLoopDevice("snapshot.origin", spec.Origin); err != nil {
		return err
	}
	if err := checkLoopDevice("snapshot.cow", spec.COW); err != nil {
		return err
	}
	if spec.Origin == spec.COW {
		return invalid("snapshot.cow", "same device as the origin (%s)", spec.Origin)
	}
	if spec.SizeBytes <= 0 || spec.SizeBytes%512 != 0 {
		return invalid("snapshot.size_bytes", "%d must be a positive multiple of 512", spec.SizeBytes)
	}
	return nil
}

var vmmBinaryRE = regexp.MustCompile(`^(qemu-system-[A-Za-z0-9_]+|(firecracker|jailer)([-._][A-Za-z0-9._-]+)?)$`)

// ValidateLaunchSpec checks a LaunchSpec: argv[0] a VMM binary
// (qemu-system-*, firecracker*, jailer*), at most 512 arguments, none empty
// or holding NUL or longer than 16 KiB; working dir, log and pid file clean
// absolute paths; uid/gid both -1 (keep) or both >= 0; at most 64
// environment entries of KEY=VALUE, none of them a loader variable (LD_*,
// GCONV_PATH ...).
func ValidateLaunchSpec(spec LaunchSpec) error {
	if len(spec.Argv) == 0 {
		return invalid("launch.argv", "empty")
	}
	if len(spec.Argv) > maxArgs {
		return invalid("launch.argv", "%d arguments (at most %d)", len(spec.Argv), maxArgs)
	}
	if !vmmBinaryRE.MatchString(filepath.Base(spec.Argv[0])) {
		return invalid("launch.argv[0]", "%q is not a VMM binary (qemu-system-*, firecracker, jailer)", clip(spec.Argv[0]))
	}
	for i, a := range spec.Argv {
		if a == "" {
			return invalid(fmt.Sprintf("launch.argv[%d]", i), "empty argument")
		}
		if len(a) > maxArgBytes || strings.ContainsRune(a, 0) {
			return invalid(fmt.Sprintf("launch.argv[%d]", i), "longer than %d bytes or holds a NUL byte", maxArgBytes)
		}
	}
	if err := checkCleanPath("launch.dir", spec.Dir); err != nil {
		return err
	}
	if err := checkCleanPath("launch.log_path", spec.LogPath); err != nil {
		return err
	}
	if spec.PIDFile != "" {
		if err := checkCleanPath("launch.pid_file", spec.PIDFile); err != nil {
			return err
		}
	}
	if spec.UID < -1 || spec.GID < -1 || (spec.UID == -1) != (spec.GID == -1) {
		return invalid("launch.uid", "uid/gid %d/%d: both -1 (keep) or both >= 0", spec.UID, spec.GID)
	}
	if len(spec.Env) > maxEnv {
		return invalid("launch.env", "%d entries (at most %d)", len(spec.Env), maxEnv)
	}
	for i, e := range spec.Env {
		k, _, ok := strings.Cut(e, "=")
		if !ok || !envKey(k) || strings.ContainsRune(e, 0) || len(e) > maxArgBytes {
			return invalid(fmt.Sprintf("launch.env[%d]", i), "%q is not KEY=VALUE", clip(e))
		}
		for _, d := range deniedEnv {
			if k == d || (strings.HasSuffix(d, "_") && strings.HasPrefix(k, d)) {
				return invalid(fmt.Sprintf("launch.env[%d]", i), "%s may not be set for a VMM", k)
			}
		}
	}
	return nil
}

func envKey(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c == '_' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// ValidateSignalArgs checks SignalVMM's arguments: pid > 1; a marker of
// 4-4096 bytes with a NUL at most as its last byte (drivers end a marker
// with NUL to match a whole command-line argument); one of SIGTERM,
// SIGKILL, SIGINT, SIGHUP, SIGUSR1.
func ValidateSignalArgs(id ProcessIdentity, sig syscall.Signal) error {
	if id.PID <= 1 {
		return invalid("signal.pid", "%d (must be > 1)", id.PID)
	}
	m := id.Marker
	if len(m) < 4 || len(m) > 4096 || strings.ContainsRune(strings.TrimSuffix(m, "\x00"), 0) {
		return invalid("signal.marker", "%q must be 4-4096 bytes, a NUL only at its end (the VM's unique socket path or id)", clip(m))
	}
	if len(id.Comm) > 4096 || strings.ContainsRune(id.Comm, 0) {
		return invalid("signal.comm", "%q is not a program name", clip(id.Comm))
	}
	if !slices.Contains(allowedSignals, sig) {
		return invalid("signal", "%d is not one of SIGTERM, SIGKILL, SIGINT, SIGHUP, SIGUSR1", int(sig))
	}
	return nil
}

// ValidateChownArgs checks ChownPath's arguments: a clean absolute path
// and uid/gid >= 0.
func ValidateChownArgs(path string, uid, gid int) error {
	if err := checkCleanPath("chown.path", path); err != nil {
		return err
	}
	if uid < 0 || gid < 0 {
		return invalid("chown.uid", "uid/gid %d/%d must be >= 0", uid, gid)
	}
	return nil
}
