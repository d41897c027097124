package image

import (
	"debug/elf"
	"fmt"
	"os"
)

// HostBusyboxPaths are where HostBusybox looks (Debian's busybox-static
// installs /bin/busybox, /usr/bin/busybox after the /usr merge).
var HostBusyboxPaths = []string{"/usr/bin/busybox", "/bin/busybox"}

// HostBusybox returns the first static busybox among paths, "" when there
// is none. Store.Busybox takes it: a pulled image without `ip` (most
// container images) needs it to configure its network.
func HostBusybox(paths []string) string {
	for _, p := range paths {
		if StaticELF(p) == nil {
			return p
		}
	}
	return ""
}

// StaticELF checks that p is a statically linked ELF executable (it runs
// in any guest, whatever its libc).
func StaticELF(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	e, err := elf.NewFile(f)
	if err != nil {
		return fmt.Errorf("%s: not an ELF executable: %w", p, err)
	}
	if e.Type != elf.ET_EXEC && e.Type != elf.ET_DYN {
		return fmt.Errorf("%s: not an ELF executable", p)
	}
	for _, prog := range e.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("%s: dynamically linked (install busybox-static)", p)
		}
	}
	return nil
}
