package cli

import (
	"strings"

	"github.com/bangerdev/banger/internal/vmm/qemu"
)

// kvmProber returns a probe reporting whether guests can really use KVM:
// the device answers KVM_CREATE_VM and runs a guest instruction, and qemu
// itself can create a KVM machine (the same decision the qemu driver makes).
func kvmProber(qemuBinary, machine string) func() (bool, string) {
	return func() (bool, string) {
		if qemu.PVMDevice("/sys/module") {
			return false, qemu.ErrPVM.Error()
		}
		d, err := qemu.New(qemu.Config{Binary: qemuBinary, Machine: machine}, nil, nil)
		if err != nil {
			if e := qemu.KVMUsable("/dev/kvm"); e != nil {
				return false, e.Error()
			}
			return true, ""
		}
		accel, why := d.Accel()
		// Keep qemu's own complaint, not its whole command line.
		if i := strings.LastIndex(why, "exit status"); i >= 0 {
			why = "qemu cannot use it: " + why[i:]
		}
		if len(why) > 200 {
			why = why[:200] + "…"
		}
		return accel == qemu.AccelKVM, strings.TrimSpace(why)
	}
}
