package disk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/privops"
)

// Probe picks the best strategy this host can run for disks kept in dir,
// and says why in a sentence for `banger doctor`:
//
//   - dm when the daemon runs as root, the kernel lists device-mapper,
//     loop devices exist, `dmsetup version` reports a driver version and
//     ops is given (see privops.DeviceMapper);
//   - reflink when a FICLONE between two scratch files in dir works;
//   - copy otherwise.
//
// Probe leaves nothing behind in dir.
func Probe(ctx context.Context, dir string, ops privops.Ops, r hostexec.Runner) (choice Strategy, reason string) {
	return prober{proc: "/proc", dev: "/dev", euid: os.Geteuid()}.probe(ctx, dir, ops, r)
}

// DMStatus reports whether the dm strategy can run here: nil with a detail
// (the driver version) when it can, the reason when it cannot.
func DMStatus(ctx context.Context, ops privops.Ops, r hostexec.Runner) (detail string, err error) {
	return prober{proc: "/proc", dev: "/dev", euid: os.Geteuid()}.dmUsable(ctx, ops, r)
}

type prober struct {
	proc, dev string // procfs and devtmpfs mount points
	euid      int
}

func (p prober) probe(ctx context.Context, dir string, ops privops.Ops, r hostexec.Runner) (Strategy, string) {
	driver, dmErr := p.dmUsable(ctx, ops, r)
	if dmErr == nil {
		return DM, "device-mapper snapshots: " + driver + "; disk creation cost does not depend on image size"
	}
	fsName, rlErr := reflinkWorks(dir)
	if rlErr == nil {
		return Reflink, fmt.Sprintf("reflink clones: FICLONE works in %s (%s); device-mapper not used: %v", dir, fsName, dmErr)
	}
	return Copy, fmt.Sprintf("sparse copy (cost grows with the image's data): device-mapper not usable: %v; no reflink in %s (%s): %v. "+
		"Put banger's state dir on btrfs or xfs (reflink=1) for constant-time disks", dmErr, dir, fsName, rlErr)
}

// dmUsable reports whether the dm strategy can run, with the driver
// version. The kernel check and the driver query are
// privops.DeviceMapper's, the one answer banger uses everywhere.
func (p prober) dmUsable(ctx context.Context, ops privops.Ops, r hostexec.Runner) (string, error) {
	if ops == nil {
		return "", errors.New("no privileged operations available")
	}
	if p.euid != 0 {
		// The daemon itself reads and writes the snapshot device
		// (debugfs, the VMM opens it): an owner daemon cannot.
		return "", errors.New("the daemon does not run as root, and device-mapper devices are root's")
	}
	driver, err := privops.DeviceMapper{Proc: p.proc, Runner: r}.Status(ctx)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(filepath.Join(p.dev, "loop-control")); err != nil {
		return "", errors.New("no loop devices (/dev/loop-control missing; load the loop module)")
	}
	return "driver " + driver, nil
}

// reflinkWorks clones a scratch file in dir and names dir's filesystem.
func reflinkWorks(dir string) (fsName string, err error) {
	fsName = FilesystemName(dir)
	src, err := os.CreateTemp(dir, ".banger-reflink-probe-*")
	if err != nil {
		return fsName, err
	}
	defer func() { _ = src.Close(); _ = os.Remove(src.Name()) }()
	if _, err := src.Write(make([]byte, 4096)); err != nil {
		return fsName, err
	}
	if err := src.Sync(); err != nil {
		return fsName, err
	}
	dst, err := os.CreateTemp(dir, ".banger-reflink-probe-*")
	if err != nil {
		return fsName, err
	}
	defer func() { _ = dst.Close(); _ = os.Remove(dst.Name()) }()
	return fsName, clone(dst, src)
}

// FilesystemName names the filesystem dir lives on ("btrfs", "xfs",
// "ext4", "tmpfs", "overlayfs", else "filesystem 0x<magic>"), for
// messages and reports.
func FilesystemName(dir string) string {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return "unknown filesystem"
	}
	switch int64(st.Type) {
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.EXT4_SUPER_MAGIC:
		return "ext4"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlayfs"
	default:
		return fmt.Sprintf("filesystem 0x%x", st.Type)
	}
}
