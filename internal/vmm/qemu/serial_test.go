package qemu

import (
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/vmm"
)

func TestArgsSerialPorts(t *testing.T) {
	spec := testSpec("/run/b/vm1")
	spec.SerialPorts = []vmm.SerialPort{{Name: "org.banger.agent.0", Socket: "/run/b/vm1/agent,x.sock"}}
	for machine, ctrl := range map[string]string{MachineMicrovm: "virtio-serial-device", MachineQ35: "virtio-serial-pci"} {
		line := strings.Join(Args("qemu-system-x86_64", spec, machine, AccelTCG, testTSCKHz), " ")
		want := " -device " + ctrl + ",id=vser0,max_ports=2" +
			" -chardev socket,id=port0,path=/run/b/vm1/agent,,x.sock,server=on,wait=off" +
			" -device virtserialport,bus=vser0.0,nr=1,chardev=port0,name=org.banger.agent.0 -qmp "
		if !strings.Contains(line, want) {
			t.Errorf("%s: missing\n%s\nin\n%s", machine, want, line)
		}
	}
	spec.SerialPorts = nil
	if line := strings.Join(Args("qemu-system-x86_64", spec, MachineMicrovm, AccelTCG, testTSCKHz), " "); strings.Contains(line, "virtio-serial") {
		t.Errorf("serial controller without ports: %s", line)
	}
}

func TestSpecValidateSerialPorts(t *testing.T) {
	spec := testSpec("/run/b/vm1")
	spec.SerialPorts = []vmm.SerialPort{{Name: "bad name", Socket: "rel.sock"}}
	err := spec.Validate()
	if err == nil || !strings.Contains(err.Error(), "serial port name") || !strings.Contains(err.Error(), "absolute path") {
		t.Fatalf("Validate = %v", err)
	}
}
