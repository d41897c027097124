package image

import (
	"os"
	"path/filepath"
	"testing"
)

func TestHostBusyboxWantsAStaticELF(t *testing.T) {
	dir := t.TempDir()
	text := filepath.Join(dir, "busybox")
	if err := os.WriteFile(text, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	// /bin/sh is dynamically linked on every Debian host.
	if got := HostBusybox([]string{filepath.Join(dir, "missing"), text, "/bin/sh"}); got != "" {
		t.Errorf("HostBusybox = %q, want none", got)
	}
	self, err := os.Executable() // a Go test binary: static unless cgo is on
	if err != nil {
		t.Fatal(err)
	}
	if StaticELF(self) == nil {
		if got := HostBusybox([]string{text, self}); got != self {
			t.Errorf("HostBusybox = %q, want %s", got, self)
		}
	}
}
