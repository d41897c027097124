// Command fakefc is banger's Firecracker test double (see internal/vmm/fakefc):
// the Firecracker API on a unix socket, validated against the release's API
// spec, with an optional real guest booted through QEMU. Invoked through a
// link named "jailer" it emulates the jailer.
//
//	fakefc --api-sock /run/vm/fc.sock --id vm1 --spec-version 1.14.1 --boot-mode qemu
package main

import (
	"os"

	"github.com/bangerdev/banger/internal/vmm/fakefc"
)

func main() { os.Exit(fakefc.Main(os.Args)) }
