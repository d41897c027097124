package privops

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/bangerdev/banger/internal/hostexec"
)

// DeviceMapper is the one answer to "can this host make device-mapper
// snapshots?", used by the disk strategy probe, doctor, the root side of
// CreateSnapshot and the tests alike.
//
// The answer never rests on a file's existence: dmsetup creates
// /dev/mapper/control itself on its first run, even on a kernel without
// device-mapper, so that node proves nothing. Instead both must hold:
//
//   - the running kernel lists device-mapper, as a misc device in
//     PROC/misc or as a block major in PROC/devices;
//   - `dmsetup version` reports a driver version (this needs root: it
//     talks to the driver through the control node).
//
// It returns the driver version ("4.48.0") or an error saying what is
// missing; errors wrap ErrNotSupported.
type DeviceMapper struct {
	Proc   string          // procfs mount point; "" = /proc
	Runner hostexec.Runner // runs dmsetup
}

var dmDriverVersionRE = regexp.MustCompile(`(?m)^Driver version:\s*(\S+)`)

// Status reports the driver version, or why device-mapper cannot be used.
// dmsetup runs first: opening the control node autoloads dm-mod where it
// is a module, after which the kernel lists it.
func (d DeviceMapper) Status(ctx context.Context) (driver string, err error) {
	if d.Runner == nil {
		return "", fmt.Errorf("%w: no runner for dmsetup", ErrNotSupported)
	}
	res, runErr := d.Runner.Run(ctx, hostexec.Cmd{Name: "dmsetup", Args: []string{"version"}})
	if err := d.KernelListed(); err != nil {
		return "", err
	}
	if errors.Is(runErr, hostexec.ErrNotFound) {
		return "", fmt.Errorf("%w: dmsetup is not installed (apt-get install dmsetup)", ErrNotSupported)
	}
	if runErr != nil {
		return "", fmt.Errorf("%w: dmsetup cannot talk to the device-mapper driver: %w", ErrNotSupported, runErr)
	}
	m := dmDriverVersionRE.FindSubmatch(res.Stdout)
	if m == nil {
		return "", fmt.Errorf("%w: `dmsetup version` reports no driver version", ErrNotSupported)
	}
	return string(m[1]), nil
}

// KernelListed reports whether the running kernel has registered
// device-mapper (PROC/misc or PROC/devices); it needs no privileges.
func (d DeviceMapper) KernelListed() error {
	proc := d.Proc
	if proc == "" {
		proc = "/proc"
	}
	if misc, err := os.ReadFile(filepath.Join(proc, "misc")); err == nil && procMiscHas(misc, "device-mapper") {
		return nil
	}
	if devs, err := os.ReadFile(filepath.Join(proc, "devices")); err == nil && procDevicesHasBlock(devs, "device-mapper") {
		return nil
	}
	return fmt.Errorf("%w: the kernel has no device-mapper (not listed in %s/misc or %s/devices; load dm-mod, or use the reflink/copy disk strategy)",
		ErrNotSupported, proc, proc)
}

// procMiscHas reports whether /proc/misc ("MINOR NAME" lines) lists name.
func procMiscHas(b []byte, name string) bool {
	s := bufio.NewScanner(bytes.NewReader(b))
	for s.Scan() {
		f := strings.Fields(s.Text())
		if len(f) == 2 && f[1] == name {
			return true
		}
	}
	return false
}

// procDevicesHasBlock reports whether the "Block devices:" section of
// /proc/devices lists name.
func procDevicesHasBlock(b []byte, name string) bool {
	s := bufio.NewScanner(bytes.NewReader(b))
	block := false
	for s.Scan() {
		line := strings.TrimSpace(s.Text())
		switch {
		case strings.HasSuffix(line, "devices:"):
			block = line == "Block devices:"
		case block:
			if f := strings.Fields(line); len(f) == 2 && f[1] == name {
				return true
			}
		}
	}
	return false
}
