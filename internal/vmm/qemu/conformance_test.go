package qemu_test

import (
	"testing"

	"github.com/bangerdev/banger/internal/privops"
	"github.com/bangerdev/banger/internal/testguest"
	"github.com/bangerdev/banger/internal/testreq"
	"github.com/bangerdev/banger/internal/vmm"
	"github.com/bangerdev/banger/internal/vmm/qemu"
	"github.com/bangerdev/banger/internal/vmm/vmmtest"
)

// TestConformance boots the initramfs test guest under QEMU/TCG (microvm).
func TestConformance(t *testing.T) {
	testreq.E2E(t)
	art := testguest.Kernel(t)
	env := vmmtest.Env{
		Kernel: art.Vmlinuz, Initrd: art.Initrd,
		Cmdline:     "console=ttyS0 panic=1 banger.initramfs_only=1",
		Marker:      "BANGER-INITRAMFS-READY",
		LogContains: []string{"Linux version " + art.Version, "tsc_early_khz="},
		// The initramfs's PID 1 has no ACPI power-button handler.
		ShutdownExits: false,
	}
	vmmtest.Run(t, func(t *testing.T) vmm.Driver {
		d, err := qemu.New(qemu.Config{Accel: qemu.AccelTCG}, privops.NewLocal(nil, nil), nil)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}, env)
}
