package agent

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// EnvBinary overrides where the daemon takes the agent binary from.
const EnvBinary = "BANGER_AGENT_BIN"

// BinaryName is the agent's file name beside banger's binaries.
const BinaryName = "banger-agent"

// FindBinary returns the banger-agent the daemon installs into VMs: $BANGER_AGENT_BIN
// when set, else the one beside exe (the daemon's executable; `make build`
// puts both in bin/), else PREFIX/lib/banger/banger-agent for an exe in
// PREFIX/bin (`make install`). The file must be a static ELF executable:
// guests have no libc banger could rely on.
func FindBinary(exe string) (string, error) {
	if p := os.Getenv(EnvBinary); p != "" {
		return p, CheckBinary(p)
	}
	dir := filepath.Dir(exe)
	cands := []string{filepath.Join(dir, BinaryName), filepath.Join(dir, "..", "lib", "banger", BinaryName)}
	var errs []error
	for _, p := range cands {
		err := CheckBinary(p)
		if err == nil {
			return filepath.Clean(p), nil
		}
		errs = append(errs, err)
	}
	return "", fmt.Errorf("no guest agent binary (looked for %s and %s; set %s): %w", cands[0], filepath.Clean(cands[1]), EnvBinary, errors.Join(errs...))
}

// CheckBinary checks that p is a static ELF executable.
func CheckBinary(p string) error {
	f, err := elf.Open(p)
	if err != nil {
		return fmt.Errorf("agent binary %s: %w", p, err)
	}
	defer f.Close()
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return fmt.Errorf("agent binary %s: not an executable", p)
	}
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("agent binary %s is dynamically linked: build it with CGO_ENABLED=0", p)
		}
	}
	return nil
}
