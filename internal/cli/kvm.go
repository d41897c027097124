package cli

import "github.com/bangerdev/banger/internal/vmm/qemu"

// kvmProbe reports whether /dev/kvm can really run guests.
func kvmProbe() (bool, string) {
	if err := qemu.KVMUsable("/dev/kvm"); err != nil {
		return false, err.Error()
	}
	return true, ""
}
