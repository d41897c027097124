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
//   - no /run/nologin (NologinTmpfilesMask): logins are not held back
//     until systemd-user-sessions runs, late in boot.
//   - BootMasks and BootGeneratorMasks: units and generators that do
//     nothing useful in a banger guest and cost an exec each early in boot
//     (see the lists); modprobe@.service and systemd-modules-load.service
//     are skipped by a condition when the image has no modules for the
//     running kernel; udevd runs at nice 19 (see udevNiceDropIn).

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
//   - sys-kernel-debug, sys-kernel-tracing and dev-hugepages mounts:
//     debugfs, tracefs and hugetlbfs, for kernel debugging and huge
//     pages; `mount -t debugfs none /sys/kernel/debug` by hand still works.
var BootMasks = []string{
	"systemd-remount-fs.service", "systemd-sysusers.service",
	"root.mount",
	"getty-static.service",
	"systemd-update-utmp.service", "systemd-update-utmp-runlevel.service",
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
// The configuration test (ExecStartPre=sshd -t) is dropped: banger writes
// the configuration, and a bad one fails `sshd -D` just the same; it was an
// extra exec of sshd on the path.
const sshEarlyDropIn = `[Unit]
DefaultDependencies=no
Wants=banger-network.service banger-hostkeys.service banger-workdisk.service
After=banger-network.service banger-hostkeys.service banger-workdisk.service root.mount systemd-tmpfiles-setup.service
Before=shutdown.target
Conflicts=shutdown.target

[Service]
ExecStartPre=
`

var networkUnit = unit("banger guest network (static address from /etc/banger/network.env)",
	"DefaultDependencies=no",
	"After=systemd-journald.socket",
	"Before=network-pre.target network.target ssh.service shutdown.target",
	"Wants=network.target",
	"Conflicts=shutdown.target",
	"", "[Service]", "Type=oneshot", "RemainAfterExit=yes", "ExecStart=/usr/lib/banger/banger-network",
	"", "[Install]", "WantedBy=multi-user.target")

// BootGeneratorMasks are systemd generators masked in every VM: each is an
// exec (0.15–0.3 s under TCG) before systemd queues the first job, and
// none has anything to find in a banger guest (no LUKS, dm-verity or
// dm-integrity volumes, no GPT partitions: the disks are bare ext4; no
// hibernation image; no offline update; the serial getty is enabled
// explicitly). fstab, sysv, rc-local, run and debug generators stay: they
// serve the user's own configuration.
var BootGeneratorMasks = []string{
	"systemd-cryptsetup-generator", "systemd-gpt-auto-generator", "systemd-hibernate-resume-generator",
	"systemd-integritysetup-generator", "systemd-veritysetup-generator", "systemd-system-update-generator",
	"systemd-getty-generator",
}

// noModulesDropIn skips a module-loading unit, without an exec, when the
// image has no modules for the running kernel (%v): banger's kernels carry
// their modules in the initramfs, so in most images modprobe@*.service and
// systemd-modules-load.service have nothing to load.
const noModulesDropIn = `# banger: nothing to load without modules for the running kernel.
[Unit]
ConditionPathExists=/lib/modules/%v/modules.dep
`

// udevNiceDropIn: nothing on the way to sshd needs udev (the work disk is
// mounted from devtmpfs, the network step finds the NIC by MAC), but udevd
// and its coldplug workers compete with it for the one emulated vCPU; at
// nice 19 they run in the time the boot leaves idle.
const udevNiceDropIn = `# banger: udev is off the path to ssh; let it use the idle time.
[Service]
Nice=19
`

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
	for _, u := range []string{"modprobe@.service", "systemd-modules-load.service"} {
		b.Mkdir(sd+"/"+u+".d", 0o755, 0, 0)
		b.WriteFile(sd+"/"+u+".d/banger.conf", []byte(noModulesDropIn), 0o644, 0, 0)
	}
	b.Mkdir(sd+"/systemd-udevd.service.d", 0o755, 0, 0)
	b.WriteFile(sd+"/systemd-udevd.service.d/banger.conf", []byte(udevNiceDropIn), 0o644, 0, 0)
	b.Mkdir("/etc/systemd/system-generators", 0o755, 0, 0)
	for _, g := range BootGeneratorMasks {
		b.Symlink("/etc/systemd/system-generators/"+g, "/dev/null")
	}
	b.Mkdir("/etc/tmpfiles.d", 0o755, 0, 0)
	b.Symlink(NologinTmpfilesMask, "/dev/null")
}

// NologinTmpfilesMask masks systemd's tmpfiles entry that creates
// /run/nologin at boot ("System is booting up. Unprivileged users are not
// permitted to log in yet"), removed by systemd-user-sessions late in
// boot. sshd now answers long before that, and pam_nologin would print the
// message into the first commands' output (and refuse non-root users); a
// sandbox has no reason to hold logins back while systemd finishes.
const NologinTmpfilesMask = "/etc/tmpfiles.d/systemd-nologin.conf"
