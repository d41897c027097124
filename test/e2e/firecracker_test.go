package e2e

import (
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/testreq"
	"github.com/bangerdev/banger/internal/vmm/fakefc"
	"github.com/bangerdev/banger/internal/vmm/vmmtest"
)

// TestE2EFirecrackerFakeFC runs the lifecycle with the firecracker driver
// against banger's Firecracker test double in its qemu boot mode (the
// Firecracker API, validated against the release's spec, in front of a
// real guest): create, ssh, a synced marker in /root, stop, start, marker
// kept, a daemon SIGKILL with the VM running (re-found through its
// pidfile), kill, delete, no leaks. Two boots.
func TestE2EFirecrackerFakeFC(t *testing.T) {
	testreq.E2E(t)
	t.Parallel() // runs beside TestE2EGuestClock's idle minute

	specDir := fakefc.SpecDirForTest(t)
	bin := vmmtest.FakeFC(t) + "/firecracker"
	e := newEnv(t, envOptions{TapPool: 1, Driver: "firecracker", FirecrackerBinary: bin, DaemonEnv: []string{
		fakefc.EnvBootMode + "=qemu", fakefc.EnvQEMUAccel + "=tcg", fakefc.EnvSpecDir + "=" + specDir,
	}})
	e.must("vm", "create", "--name", "fc1")
	vm := e.show("fc1")
	if vm.Driver != "firecracker" || vm.State != model.StateRunning {
		t.Fatalf("after create: %+v", vm)
	}
	if comm, _ := os.ReadFile("/proc/" + itoa(vm.Runtime.PID) + "/comm"); strings.TrimSpace(string(comm)) != "firecracker" {
		t.Fatalf("VMM pid %d is %q, not firecracker", vm.Runtime.PID, comm)
	}
	marker := "fc-" + randHex(6)
	e.mustSSH(vm.IP, "echo "+marker+" > /root/marker && sync")
	e.must("vm", "stop", "fc1")
	e.assertNoLeaks("after stop")
	e.must("vm", "start", "fc1")
	if got := e.mustSSH(vm.IP, "cat /root/marker"); got != marker {
		t.Fatalf("marker %q, want %q", got, marker)
	}
	before := e.show("fc1")
	e.stopDaemon(syscall.SIGKILL)
	e.startDaemon()
	if after := e.show("fc1"); after.State != model.StateRunning || after.Runtime.PID != before.Runtime.PID {
		t.Fatalf("after a daemon SIGKILL: %+v", after)
	}
	e.mustSSH(vm.IP, "true")
	e.must("vm", "kill", "fc1")
	e.assertNoLeaks("after kill")
	e.must("vm", "delete", "fc1")
	e.assertNoLeaks("after delete")
}
