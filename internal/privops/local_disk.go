package privops

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/bangerdev/banger/internal/hostexec"
)

// DMNamePrefix is carried by every device-mapper name banger creates;
// CreateSnapshot and RemoveSnapshot refuse any other name.
const DMNamePrefix = "banger-"

// dmOriginSuffix names the helper device that extends an origin with zeros
// when a snapshot is asked to be larger than its origin.
const dmOriginSuffix = "-origin"

// dmMaxName is the kernel's DM_NAME_LEN (128) minus the terminating NUL.
const dmMaxName = 127

// AttachLoop attaches spec.File to the first free loop device
// (`losetup --find --show [--read-only] FILE`) and returns the device path.
func (l *Local) AttachLoop(ctx context.Context, spec LoopSpec) (string, error) {
	if err := ValidateLoopSpec(spec); err != nil {
		return "", err
	}
	// The file is opened once, below the managed roots without symlinks,
	// and losetup attaches that open file (through /proc/PID/fd/N), so a
	// path swapped after the check can never attach something else.
	flags := unix.O_RDWR
	if spec.ReadOnly {
		flags = unix.O_RDONLY
	}
	f, err := openBeneath(l.Roots, spec.File, flags|unix.O_NOFOLLOW, 0)
	if err != nil {
		return "", fmt.Errorf("attach loop for %s: %w", spec.File, err)
	}
	defer f.Close()
	if st, err := checkSingleLink(f); err != nil {
		return "", fmt.Errorf("attach loop: %w", err)
	} else if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return "", fmt.Errorf("attach loop: %w: %s is not a regular file", ErrInvalidArgument, spec.File)
	}
	args := []string{"--find", "--show"}
	if spec.ReadOnly {
		args = append(args, "--read-only")
	}
	args = append(args, fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), f.Fd()))
	res, err := l.Runner.Run(ctx, hostexec.Cmd{Name: "losetup", Args: args})
	if err != nil {
		if errors.Is(err, hostexec.ErrNotFound) {
			return "", fmt.Errorf("attach loop for %s: %w: %w (install util-linux)", spec.File, ErrNotSupported, err)
		}
		return "", fmt.Errorf("attach loop for %s: %w", spec.File, err)
	}
	dev := strings.TrimSpace(string(res.Stdout))
	if ValidateLoopDevice(dev) != nil {
		return "", fmt.Errorf("attach loop for %s: losetup printed %q, not a loop device", spec.File, dev)
	}
	l.Logger.DebugContext(ctx, "loop attached", "device", dev, "file", spec.File, "read_only", spec.ReadOnly)
	return dev, nil
}

// DetachLoop detaches device (`losetup --detach DEV`). A device that is not
// attached, or does not exist, is not an error. A device still held open
// (e.g. by a dm table) is marked to free itself on last close by the kernel.
func (l *Local) DetachLoop(ctx context.Context, device string) error {
	if err := ValidateLoopDevice(device); err != nil {
		return err
	}
	_, err := l.Runner.Run(ctx, hostexec.Cmd{Name: "losetup", Args: []string{"--detach", device}})
	if err == nil {
		l.Logger.DebugContext(ctx, "loop detached", "device", device)
		return nil
	}
	var ee *hostexec.ExitError
	if errors.As(err, &ee) && (strings.Contains(ee.Stderr, "No such device or address") ||
		strings.Contains(ee.Stderr, "No such file or directory") || strings.Contains(ee.Stderr, "No such device")) {
		return nil // not attached (ENXIO) or no such node: already gone
	}
	if errors.Is(err, hostexec.ErrNotFound) {
		return fmt.Errorf("detach loop %s: %w: %w (install util-linux)", device, ErrNotSupported, err)
	}
	return fmt.Errorf("detach loop %s: %w", device, err)
}

// CreateSnapshot creates the device-mapper snapshot spec.Name over
// spec.Origin with spec.COW as a persistent exception store in 4 KiB chunks:
//
//	dmsetup create NAME --table "0 SECTORS snapshot ORIGIN COW P 8"
//
// and returns /dev/mapper/NAME. When spec.SizeBytes is larger than the
// origin, the origin is first extended with zeros by a helper device
// NAME-origin (linear origin + zero target), which RemoveSnapshot removes
// too. It returns an error wrapping ErrNotSupported when the kernel has no
// device-mapper or dmsetup is not installed.
func (l *Local) CreateSnapshot(ctx context.Context, spec SnapshotSpec) (string, error) {
	return l.createSnapshot(ctx, spec, func() error {
		_, err := DeviceMapper{Runner: l.Runner}.Status(ctx)
		return err
	})
}

func (l *Local) createSnapshot(ctx context.Context, spec SnapshotSpec, supported func() error) (dev string, err error) {
	if err := ValidateSnapshotSpec(spec); err != nil {
		return "", err
	}
	if err := supported(); err != nil {
		return "", fmt.Errorf("create snapshot %s: %w", spec.Name, err)
	}
	sectors := spec.SizeBytes / 512
	originSectors, err := l.blockSectors(ctx, spec.Origin)
	if err != nil {
		return "", fmt.Errorf("create snapshot %s: %w", spec.Name, err)
	}
	origin := spec.Origin
	var undo []string // dm names to remove on failure, in creation order
	defer func() {
		if err == nil {
			return
		}
		cleanup := context.WithoutCancel(ctx)
		for i := len(undo) - 1; i >= 0; i-- {
			if rerr := l.dmRemove(cleanup, undo[i]); rerr != nil {
				err = errors.Join(err, fmt.Errorf("undo: %w", rerr))
			}
		}
	}()
	if sectors > originSectors {
		grown := spec.Name + dmOriginSuffix
		table := fmt.Sprintf("0 %d linear %s 0\n%d %d zero\n", originSectors, spec.Origin, originSectors, sectors-originSectors)
		// Read-only: the origin loop is read-only and a writable table
		// would open it for writing; the snapshot only reads its origin.
		if err := l.dmsetup(ctx, "create-readonly", grown, table); err != nil {
			return "", fmt.Errorf("create snapshot %s: extend origin: %w", spec.Name, err)
		}
		undo = append(undo, grown)
		origin = "/dev/mapper/" + grown
	}
	table := fmt.Sprintf("0 %d snapshot %s %s P 8", sectors, origin, spec.COW)
	if err := l.dmsetup(ctx, "create", spec.Name, table); err != nil {
		return "", fmt.Errorf("create snapshot %s: %w", spec.Name, err)
	}
	undo = append(undo, spec.Name)
	// Without udev nothing else creates the node; mknodes is a no-op when
	// it exists already.
	if err := l.dmsetup(ctx, "mknodes", spec.Name, ""); err != nil {
		return "", fmt.Errorf("create snapshot %s: %w", spec.Name, err)
	}
	dev = "/dev/mapper/" + spec.Name
	l.Logger.DebugContext(ctx, "snapshot created", "device", dev, "origin", spec.Origin, "cow", spec.COW, "sectors", sectors)
	return dev, nil
}

// RemoveSnapshot removes the snapshot name and its NAME-origin helper device
// if there is one. Devices that do not exist, or a kernel without
// device-mapper, are not errors.
func (l *Local) RemoveSnapshot(ctx context.Context, name string) error {
	return l.removeSnapshot(ctx, name, DeviceMapper{}.KernelListed)
}

func (l *Local) removeSnapshot(ctx context.Context, name string, supported func() error) error {
	if err := ValidateDMName(name); err != nil {
		return err
	}
	if supported() != nil {
		return nil // no device-mapper: nothing can exist
	}
	var errs []error
	for _, n := range []string{name, name + dmOriginSuffix} {
		if err := l.dmRemove(ctx, n); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove snapshot %s: %w", name, err)
	}
	l.Logger.DebugContext(ctx, "snapshot removed", "name", name)
	return nil
}

// dmRemove removes one dm device; a missing device is not an error.
func (l *Local) dmRemove(ctx context.Context, name string) error {
	err := l.dmsetup(ctx, "remove", name, "")
	var ee *hostexec.ExitError
	if errors.As(err, &ee) && (strings.Contains(ee.Stderr, "No such device or address") ||
		strings.Contains(ee.Stderr, "not found") || strings.Contains(ee.Stderr, "does not exist")) {
		return nil
	}
	return err
}

// dmsetup runs one dmsetup verb on name ("create-readonly" is create with
// --readonly). A table for create goes in with --table when it is one
// line, on stdin otherwise.
func (l *Local) dmsetup(ctx context.Context, verb, name, table string) error {
	cmd := hostexec.Cmd{Name: "dmsetup"}
	switch verb {
	case "create", "create-readonly":
		cmd.Args = []string{"create"}
		if verb == "create-readonly" {
			cmd.Args = append(cmd.Args, "--readonly")
		}
		if strings.Count(strings.TrimSuffix(table, "\n"), "\n") == 0 {
			cmd.Args = append(cmd.Args, name, "--table", table)
		} else {
			cmd.Args = append(cmd.Args, name)
			cmd.Stdin = strings.NewReader(table)
		}
	case "remove":
		cmd.Args = []string{"remove", "--retry", name}
	default:
		cmd.Args = []string{verb, name}
	}
	_, err := l.Runner.Run(ctx, cmd)
	if err == nil {
		return nil
	}
	if errors.Is(err, hostexec.ErrNotFound) {
		return fmt.Errorf("dmsetup %s %s: %w: %w (install dmsetup)", verb, name, ErrNotSupported, err)
	}
	var ee *hostexec.ExitError
	if errors.As(err, &ee) && strings.Contains(ee.Stderr, "Failure to communicate with kernel device-mapper driver") {
		return fmt.Errorf("dmsetup %s %s: %w: %w", verb, name, ErrNotSupported, err)
	}
	return fmt.Errorf("dmsetup %s %s: %w", verb, name, err)
}

// blockSectors returns the size of a block device in 512-byte sectors
// (`blockdev --getsz DEV`).
func (l *Local) blockSectors(ctx context.Context, dev string) (int64, error) {
	res, err := l.Runner.Run(ctx, hostexec.Cmd{Name: "blockdev", Args: []string{"--getsz", dev}})
	if err != nil {
		return 0, fmt.Errorf("size of %s: %w", dev, err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(res.Stdout)), 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("size of %s: blockdev printed %q", dev, strings.TrimSpace(string(res.Stdout)))
	}
	return n, nil
}
