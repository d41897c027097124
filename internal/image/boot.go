package image

// Guest contract, the systemd boot path (see the contract at the top of
// guest.go). Written by BootBatch into every VM's root disk before each
// boot (and into systemd images when they are built), so images made by an
// older banger boot the same way without a rebuild.
//
// Under TCG with one vCPU a boot is CPU-bound: every exec and every unit
// costs wall-clock time on the way to sshd. The path is:
//
//   - /root: banger-workdisk.service (DefaultDependencies=no, pulled in by
//     local-fs.target) mounts /dev/vdb on /root straight from devtmpfs
//     (the initramfs loaded virtio_blk, so the node exists before systemd
//     starts) instead of fstab's root.mount, which waits for udev to
//     announce dev-vdb.device (seconds under emulation) and runs
//     systemd-fsck@dev-vdb first. root.mount is masked so the fstab line
//     (kept for banger's own init and older daemons) never makes a second,
//     waiting mount job; systemd still tracks the mount as root.mount.
//     nofail is kept: without /dev/vdb /root stays on the root disk, and a
//     work disk that does not mount is checked (e2fsck -p) and mounted once
//     more. There is no boot-time fsck: the work disk is ext4 with a
//     journal, and every banger stop leaves it clean (the fast stop
//     remounts read-only with sysrq u before the reset; a graceful stop
//     unmounts), so after a crash the journal replay at mount time covers
//     it, as for the root disk, which was never fsck'd at boot.
//   - ssh.service (drop-in ssh.service.d/banger.conf): no default
//     dependencies; after the network, the host key, the work disk and
//     systemd-tmpfiles-setup (which empties /tmp at boot: a command started
//     over ssh before it would lose its files).
//   - banger-network.service: ordered only after journald's socket, not
//     after systemd-udevd: the network step finds the interface by its MAC
//     over netlink and waits for it, so it need not wait for udev.
//   - bootMasks: units that do nothing useful in a banger guest and cost
//     an exec each early in boot (see the list).

import (
	"github.com/bangerdev/banger/internal/ext4"
)

// GuestWorkDiskUnit mounts the work disk on /root (see above).
const GuestWorkDiskUnit = "/etc/systemd/system/banger-workdisk.service"

// GuestWorkDiskScript is the script GuestWorkDiskUnit runs.
const GuestWorkDiskScript = "/usr/lib/banger/banger-workdisk"

// BootMasks are units masked in every VM (by the image, and per VM for
// images built before): on a banger guest they do nothing, and each costs
// an exec (about a second of emulated time on one vCPU) early in boot.
//
//   - systemd-remount-fs applies fstab's options for / and the API
//     filesystems; banger's fstab has no / line (the kernel mounts / rw).
//   - systemd-sysusers only creates the system users the packages already
//     created when they were installed; it runs at every boot because
//     systemd-update-done (masked) never marks /etc as updated.
//   - root.mount is fstab's /root line, replaced by banger-workdisk.service.
//   - getty-static starts gettys on tty2–tty6 (a VM has no VGA console;
//     the serial getty on ttyS0 stays).
//   - systemd-update-utmp(-runlevel) records boots and runlevels in wtmp;
//     nothing in a VM reads them.
//   - modprobe@*: the modules they load are either built into the kernel
//     or absent from the image (banger's kernels carry their modules in
//     the initramfs); the kernel still loads modules on demand.
//   - sys-kernel-debug, sys-kernel-tracing and dev-hugepages mounts:
//     debugfs, tracefs and hugetlbfs, for kernel debugging and huge
//     pages; `mount -t debugfs none /sys/kernel/debug` by hand still works.
var BootMasks = []string{
	"systemd-remount-fs.service", "systemd-sysusers.service",
	"root.mount",
	"getty-static.service",
	"systemd-update-utmp.service", "systemd-update-utmp-runlevel.service",
	"modprobe@configfs.service", "modprobe@dm_mod.service", "modprobe@drm.service",
	"modprobe@fuse.service", "modprobe@loop.service",
	"sys-kernel-debug.mount", "sys-kernel-tracing.mount", "dev-hugepages.mount",
}

const workDiskScript = `#!/bin/sh
# banger-workdisk: mount the VM's work disk (/dev/vdb) on /root without
# waiting for udev (see banger's guest contract). nofail: without the disk,
# /root stays on the root disk.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
if [ ! -b /dev/vdb ]; then
	echo "banger-workdisk: no /dev/vdb; /root stays on the root disk"
	exit 0
fi
mount -t ext4 -o defaults /dev/vdb /root && exit 0
echo "banger-workdisk: /dev/vdb does not mount; checking it" >&2
e2fsck -p /dev/vdb
[ $? -lt 4 ] || echo "banger-workdisk: e2fsck could not repair /dev/vdb" >&2
mount -t ext4 -o defaults /dev/vdb /root
`

var workDiskUnit = unit("banger: mount the work disk on /root (straight from devtmpfs, no udev wait)",
	"DefaultDependencies=no",
	"ConditionPathIsMountPoint=!/root",
	"After=systemd-journald.socket",
	"Before=local-fs.target ssh.service shutdown.target",
	"Conflicts=shutdown.target",
	"", "[Service]", "Type=oneshot", "RemainAfterExit=yes", "ExecStart="+GuestWorkDiskScript,
	"", "[Install]", "WantedBy=local-fs.target")

// ssh.service starts as soon as the network, a host key, /root and the
// boot-time cleanup of /tmp are done, without waiting for
// sysinit/basic.target (see the contract above).
const sshEarlyDropIn = `[Unit]
DefaultDependencies=no
Wants=banger-network.service banger-hostkeys.service banger-workdisk.service
After=banger-network.service banger-hostkeys.service banger-workdisk.service root.mount systemd-tmpfiles-setup.service
Before=shutdown.target
Conflicts=shutdown.target
`

var networkUnit = unit("banger guest network (static address from /etc/banger/network.env)",
	"DefaultDependencies=no",
	"After=systemd-journald.socket",
	"Before=network-pre.target network.target ssh.service shutdown.target",
	"Wants=network.target",
	"Conflicts=shutdown.target",
	"", "[Service]", "Type=oneshot", "RemainAfterExit=yes", "ExecStart=/usr/lib/banger/banger-network",
	"", "[Install]", "WantedBy=multi-user.target")

// BootBatch adds the systemd boot path to a root disk (see the contract
// above): the work disk unit and its script, the early ssh drop-in, the
// network unit and the masks. It is harmless on images without systemd
// (banger's init mounts /root itself and never reads these files).
func BootBatch(b *ext4.Batch) {
	sd := "/etc/systemd/system"
	b.Mkdir("/usr/lib/banger", 0o755, 0, 0)
	b.WriteFile(GuestWorkDiskScript, []byte(workDiskScript), 0o755, 0, 0)
	b.Mkdir(sd, 0o755, 0, 0)
	b.WriteFile(GuestWorkDiskUnit, []byte(workDiskUnit), 0o644, 0, 0)
	b.Mkdir(sd+"/local-fs.target.wants", 0o755, 0, 0)
	b.Symlink(sd+"/local-fs.target.wants/banger-workdisk.service", GuestWorkDiskUnit)
	b.WriteFile(sd+"/banger-network.service", []byte(networkUnit), 0o644, 0, 0)
	b.Mkdir(sd+"/multi-user.target.wants", 0o755, 0, 0)
	b.Symlink(sd+"/multi-user.target.wants/banger-network.service", sd+"/banger-network.service")
	b.Mkdir(sd+"/ssh.service.d", 0o755, 0, 0)
	b.WriteFile(sd+"/ssh.service.d/banger.conf", []byte(sshEarlyDropIn), 0o644, 0, 0)
	for _, u := range BootMasks {
		b.Symlink(sd+"/"+u, "/dev/null")
	}
}
