package privops

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
)

// agreePolicy is a helper policy with the defaults the in-process path
// hard-codes (tap and dm prefixes), so both paths can be compared.
func agreePolicy() *Policy {
	return &Policy{
		OwnerUID: 1000, OwnerGID: 1000,
		ManagedRoots: []string{"/var/lib/banger"},
		VMMBinaries:  map[string]string{"firecracker": "/usr/bin/firecracker"},
		BridgeName:   "br-banger", BridgeCIDR: "172.30.0.1/24",
	}
}

// TestValidatorsAgree (#16.6): the in-process (Local) and the helper
// (Policy) paths validate names with one set of rules. Before they were
// unified, Local accepted interface names of [A-Za-z0-9_.-] that the
// helper refused ([a-z0-9-]), and dm names with '+' or up to 120 bytes
// that the helper refused: the same request worked as root and failed
// through the helper (or the reverse).
func TestValidatorsAgree(t *testing.T) {
	p := agreePolicy()
	same := func(what, name string, local, helper error) {
		t.Helper()
		if (local == nil) != (helper == nil) {
			t.Errorf("%s %q: in-process says %v, helper says %v", what, clip(name), local, helper)
		}
	}
	names := []string{"bgtap1", "bgtapA", "bgtap_1", "bgtap.1", "bgtap-1", "bgtap", "bgtapp0123456789", "bgtap-", "Bgtap1",
		"bgtapp01234abcd", "bgtap0123456789", "eth0", "-bgtap", "bgtap\n", "bgtap/1", "bgtap 1"}
	for _, n := range names {
		same("tap", n, ValidateTapName(n), p.ValidateTapName("tap", n))
		same("tap spec", n, ValidateTapSpec(TapSpec{Name: n, Bridge: "br-banger", Owner: 1000, Group: 1000}),
			p.ValidateTap(TapSpec{Name: n, Bridge: "br-banger", Owner: 1000, Group: 1000}))
	}
	for _, up := range []string{"eth0", "eth0.100", "br_lan", "WLAN0", "enp0s31f6", "-x", "lo", "bgtap1"} {
		spec := BridgeSpec{Name: "br-banger", CIDR: "172.30.0.1/24", Uplink: up}
		same("uplink", up, ValidateBridgeSpec(spec), p.ValidateBridge(spec))
	}
	dm := []string{"banger-a", "banger-vms-root-0a1b2c3d", "banger-a+b", "banger-A.b_c", "banger-", "banger-a/b", "lvm-a",
		"banger-" + strings.Repeat("a", 93), "banger-" + strings.Repeat("a", 94), "banger-" + strings.Repeat("a", 113)}
	for _, n := range dm {
		same("dm", n, ValidateDMName(n), p.ValidateDMName("dm", n))
	}
	for _, d := range []string{"/dev/loop0", "/dev/loop1234567", "/dev/loop12345678", "/dev/loop", "/dev/loopx", "/dev/sda"} {
		same("loop device", d, ValidateLoopDevice(d), p.ValidateLoopDevice("dev", d))
	}
	for _, m := range []string{"abcd", "abc", "/run/banger/vms/a/firecracker.sock\x00", "--id=vm-1\x00", "a\x00bcd", strings.Repeat("m", 4097)} {
		id := ProcessIdentity{PID: 4242, Comm: "firecracker", Marker: m}
		same("signal marker", m, ValidateSignalArgs(id, syscall.SIGTERM), p.ValidateSignal(id, syscall.SIGTERM))
	}
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL, syscall.SIGSTOP, syscall.SIGCONT, syscall.SIGUSR2} {
		id := ProcessIdentity{PID: 4242, Comm: "firecracker", Marker: "abcd"}
		same("signal", fmt.Sprint(sig), ValidateSignalArgs(id, sig), p.ValidateSignal(id, sig))
	}
}

// TestGeneratedNamesAreValid: every name banger generates passes the one
// set of validators (taps from netw: prefix + hex or prefix + "p" + hex;
// the default bridge; dm names from disk: prefix + [a-z0-9_-] + hex).
func TestGeneratedNamesAreValid(t *testing.T) {
	p := agreePolicy()
	if err := p.Check(); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"bgtap0123456789", "bgtapp0a1b2c3d4", "bgtapffffffffff"} {
		if err := ValidateTapName(n); err != nil {
			t.Errorf("generated tap %s: %v", n, err)
		}
	}
	if err := ValidateIfName("br-banger"); err != nil {
		t.Error(err)
	}
	if err := ValidateDMName("banger-" + strings.Repeat("a_-", 16) + "-0a1b2c3d"); err != nil {
		t.Error(err)
	}
}
