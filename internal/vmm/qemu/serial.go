package qemu

import (
	"strconv"

	"github.com/bangerdev/banger/internal/vmm"
)

// serialPortArgs returns the virtio-serial controller and one
// virtserialport per spec.SerialPorts entry, each backed by a unix socket
// QEMU listens on (server=on, wait=off: the guest boots without a host
// connection; a host connection replaces none, it waits for the previous
// one to close).
func serialPortArgs(spec vmm.Spec, machine string) []string {
	if len(spec.SerialPorts) == 0 {
		return nil
	}
	ctrl := "virtio-serial-pci"
	if machine == MachineMicrovm {
		ctrl = "virtio-serial-device"
	}
	a := []string{"-device", ctrl + ",id=vser0,max_ports=" + strconv.Itoa(len(spec.SerialPorts)+1)}
	for i, p := range spec.SerialPorts {
		id := "port" + strconv.Itoa(i)
		a = append(a,
			"-chardev", "socket,id="+id+",path="+qemuValue(p.Socket)+",server=on,wait=off",
			"-device", "virtserialport,bus=vser0.0,nr="+strconv.Itoa(i+1)+",chardev="+id+",name="+qemuValue(p.Name),
		)
	}
	return a
}
