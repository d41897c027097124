package testguest

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/kernel"
)

func TestKernelArtifacts(t *testing.T) {
	a := Kernel(t)
	elfImg, err := os.ReadFile(a.Vmlinux)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(elfImg, []byte("\x7fELF")) {
		t.Fatalf("vmlinux %s is not an ELF file", a.Vmlinux)
	}
	if !strings.HasSuffix(a.ModulesDir, a.Version) {
		t.Errorf("modules dir %s does not end in version %s", a.ModulesDir, a.Version)
	}
	names, err := kernel.ListInitramfs(a.Initrd)
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(names, "\n")
	for _, want := range []string{"init", "bin/busybox", "virtio_blk.ko", "virtio_net.ko", "vmw_vsock_virtio_transport.ko"} {
		if !strings.Contains(joined, want) {
			t.Errorf("initramfs lacks %s", want)
		}
	}
	// a second call is served from the cache and returns the same paths
	if b := Kernel(t); *b != *a {
		t.Errorf("second Kernel() = %+v, want %+v", b, a)
	}
}
