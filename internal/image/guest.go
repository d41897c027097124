package image

// Guest contract: what every banger image (built, pulled or not registered)
// contains, and what the VM lifecycle must provide. The daemon relies on it
// when it boots a VM; change both sides together.
//
// Boot
//   - Kernel command line: `console=ttyS0 root=/dev/vda rw` plus, for
//     pulled images, `init=/usr/lib/banger/init`. That script exists in every
//     image: when the image has systemd it execs systemd (so it is also safe
//     for built images), otherwise it is a small PID 1 that mounts /proc,
//     /sys, /dev, /run, mounts /root, runs the network and host-key steps,
//     starts sshd and a serial getty, and reaps children.
//   - On QEMU microvm under TCG the driver adds `tsc_early_khz=<the host's
//     TSC rate in kHz> tsc=reliable` (internal/vmm/qemu/tsc.go: the guest's
//     TSC runs at the host's rate and is its only good clocksource).
//   - /etc/banger/image.env records INIT= (the init to use), SYSTEMD=0|1 and
//     SSHD=present|first-boot|absent.
//
// Disks
//   - /dev/vda: the root filesystem (a copy-on-write view of the image).
//   - /dev/vdb: the VM's work disk, mounted on /root by
//     banger-workdisk.service (systemd images, see boot.go) or by banger's
//     init. /etc/fstab keeps the line
//     `/dev/vdb /root ext4 defaults,nofail,x-systemd.device-timeout=120s 0 2`
//     for `mount /root` by hand; systemd's root.mount is masked. The daemon creates it seeded from the image's
//     /usr/share/banger/work-seed (a copy of the image's /root, taken at
//     build time), e.g. with ext4.Extract + ext4.Build.
//
// Network (written per VM by the daemon into the root disk, never mounted)
//   - /etc/banger/network.env, lines KEY=VALUE:
//     ADDRESS=172.30.0.5/24  GATEWAY=172.30.0.1  DNS=172.30.0.1  MAC=02:...
//     (DNS may list several servers separated by commas or spaces).
//   - Fallback: kernel arguments banger.ip=ADDR/PREFIX banger.gw=GW
//     banger.dns=DNS[,DNS] banger.mac=MAC.
//   - /usr/lib/banger/banger-network (systemd: banger-network.service,
//     oneshot, Before=ssh.service network.target) brings lo up, finds the
//     interface with MAC (else eth0, else the first non-loopback one), sets
//     the address and default route with `ip` (or busybox ip from
//     /usr/lib/banger/busybox) and writes /etc/resolv.conf.
//   - /etc/hostname and /etc/hosts: "banger" by default; the daemon
//     overwrites them with the VM name.
//
// ssh
//   - /etc/ssh/sshd_config.d/banger.conf: PermitRootLogin prohibit-password,
//     PasswordAuthentication no, AuthorizedKeysFile .ssh/authorized_keys
//     /etc/ssh/banger_authorized_keys, UseDNS no, ClientAlive* keep-alives,
//     HostKey /etc/ssh/ssh_host_ed25519_key.
//   - No host keys are baked into an image. The daemon writes a per-VM
//     /etc/ssh/ssh_host_ed25519_key (0600) and .pub (0644). Only when none
//     exists, banger-hostkeys(.service), ordered before ssh, generates an
//     ed25519 key (ed25519 only: RSA generation costs seconds under TCG).
//   - Authorized keys: /root/.ssh/authorized_keys on the work disk, or
//     /etc/ssh/banger_authorized_keys on the root disk.
//   - Images without sshd (pulled ones) get /usr/lib/banger/install-sshd,
//     run at first boot (banger-install-sshd.service or banger's init): it
//     installs openssh-server with apt, apk, dnf/yum/microdnf, pacman or
//     zypper according to /etc/os-release. It needs network access to the
//     distribution's mirrors, i.e. a VM created with --nat.
//
// Clock
//   - The guest's wall clock starts from the RTC (QEMU: host time, UTC) and
//     the daemon sets it from the host through the agent after every boot
//     and then every minute (vm.Manager.SyncClock / KeepClocks); images
//     need no time daemon (nothing in a guest can reach a time server).
//
// Power
//   - /usr/lib/banger/poweroff: syncs, then asks PID 1 to power off
//     (systemctl poweroff, or SIGUSR2 to banger's init). Without ACPI
//     (Firecracker, qemu microvm without acpi) or with banger.poweroff=reset
//     on the kernel command line, the last step is a reset instead
//     (systemd: /usr/lib/systemd/system-shutdown/banger-poweroff), which the
//     VMM turns into an exit (firecracker exits on reset; run qemu with
//     -no-reboot).
//   - systemd images: serial-getty@ttyS0 enabled; units that only wait or
//     are useless in a VM are masked (see maskedUnits and BootMasks);
//     ssh.service is started early (DefaultDependencies=no, after network,
//     host keys, the /root mount and the /tmp cleanup). The boot path is
//     described in boot.go and written per VM before every boot
//     (BootBatch).

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/bangerdev/banger/internal/ext4"
)

// GuestContract is the version of this contract. Bump it whenever the
// guest side changes in a way a booted guest keeps (scripts, units, paths):
// VM templates (saved, booted guests) are keyed by it and rebuilt.
const GuestContract = 3

// GuestNetworkEnv is the path of the per-VM network file the daemon writes.
const GuestNetworkEnv = "/etc/banger/network.env"

// GuestInit is the init every banger image carries (see the contract above).
const GuestInit = "/usr/lib/banger/init"

// GuestWorkSeed is the copy of the image's /root that seeds work disks.
const GuestWorkSeed = "/usr/share/banger/work-seed"

// GuestHostKey is where the daemon injects the per-VM ssh host key.
const GuestHostKey = "/etc/ssh/ssh_host_ed25519_key"

// GuestAuthorizedKeys is the root-disk authorized_keys file sshd also reads.
const GuestAuthorizedKeys = "/etc/ssh/banger_authorized_keys"

// GuestPoweroff is the command the daemon runs over ssh to stop a VM.
const GuestPoweroff = "/usr/lib/banger/poweroff"

// NetworkEnv renders /etc/banger/network.env for a VM.
func NetworkEnv(address, gateway, dns, mac string) []byte {
	var b strings.Builder
	for _, kv := range [][2]string{{"ADDRESS", address}, {"GATEWAY", gateway}, {"DNS", dns}, {"MAC", mac}} {
		if kv[1] != "" {
			fmt.Fprintf(&b, "%s=%s\n", kv[0], kv[1])
		}
	}
	return []byte(b.String())
}

// maskedUnits are masked (symlinked to /dev/null) in systemd images: timers
// and services that only cost boot time or wait for things a banger VM
// does not have.
var maskedUnits = []string{
	"apt-daily.service", "apt-daily.timer", "apt-daily-upgrade.service", "apt-daily-upgrade.timer",
	"e2scrub_all.service", "e2scrub_all.timer", "e2scrub_reap.service",
	"systemd-timesyncd.service", "getty@tty1.service", "fstrim.service", "fstrim.timer",
	"man-db.service", "man-db.timer", "dpkg-db-backup.service", "dpkg-db-backup.timer",
	"systemd-networkd-wait-online.service", "systemd-udev-settle.service", "networking.service",
	"systemd-firstboot.service", "ldconfig.service", "systemd-hwdb-update.service",
	"systemd-journal-catalog-update.service", "systemd-update-done.service",
	"systemd-pstore.service", "logrotate.timer", "motd-news.timer",
}

const sshdDropIn = `# banger: key-only root login; see /usr/lib/banger and banger's docs.
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile .ssh/authorized_keys /etc/ssh/banger_authorized_keys
UseDNS no
ClientAliveInterval 15
ClientAliveCountMax 4
HostKey /etc/ssh/ssh_host_ed25519_key
`

const networkScript = `#!/bin/sh
# banger-network: static network of a banger guest.
# Reads /etc/banger/network.env (ADDRESS GATEWAY DNS MAC, written by the
# banger daemon), else the kernel arguments banger.ip= banger.gw=
# banger.dns= banger.mac=.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ADDRESS= GATEWAY= DNS= MAC=
if [ -r /etc/banger/network.env ]; then
	while IFS='=' read -r k v; do
		v=$(printf '%s' "$v" | tr -d '"'"'"' \r')
		case $k in
		ADDRESS) ADDRESS=$v ;; GATEWAY) GATEWAY=$v ;; DNS) DNS=$v ;; MAC) MAC=$v ;;
		esac
	done < /etc/banger/network.env
fi
for a in $(cat /proc/cmdline 2>/dev/null); do
	case $a in
	banger.ip=*) [ -n "$ADDRESS" ] || ADDRESS=${a#banger.ip=} ;;
	banger.gw=*) [ -n "$GATEWAY" ] || GATEWAY=${a#banger.gw=} ;;
	banger.dns=*) [ -n "$DNS" ] || DNS=${a#banger.dns=} ;;
	banger.mac=*) [ -n "$MAC" ] || MAC=${a#banger.mac=} ;;
	esac
done
if command -v ip >/dev/null 2>&1; then IP=ip
elif [ -x /usr/lib/banger/busybox ]; then IP="/usr/lib/banger/busybox ip"
else echo "banger-network: no ip tool in this image" >&2; exit 1; fi
$IP link set lo up
[ -n "$ADDRESS" ] || { echo "banger-network: no address (no /etc/banger/network.env, no banger.ip=)" >&2; exit 1; }
mac=$(printf '%s' "$MAC" | tr 'A-F' 'a-f')
IFACE=
i=0
while [ $i -lt 50 ]; do
	for d in /sys/class/net/*; do
		n=${d##*/}
		[ "$n" = lo ] && continue
		if [ -n "$mac" ]; then
			[ "$(cat "$d/address" 2>/dev/null)" = "$mac" ] && IFACE=$n
		elif [ "$n" = eth0 ] || [ -z "$IFACE" ]; then
			IFACE=$n
		fi
	done
	[ -n "$IFACE" ] && break
	i=$((i+1)); sleep 0.1
done
[ -n "$IFACE" ] || { echo "banger-network: no network interface${mac:+ with MAC $mac}" >&2; exit 1; }
$IP link set dev "$IFACE" up
$IP addr flush dev "$IFACE" 2>/dev/null
$IP addr add "$ADDRESS" dev "$IFACE" || exit 1
if [ -n "$GATEWAY" ]; then $IP route replace default via "$GATEWAY" dev "$IFACE" || exit 1; fi
if [ -n "$DNS" ]; then
	[ -L /etc/resolv.conf ] && rm -f /etc/resolv.conf
	{ for s in $(printf '%s' "$DNS" | tr ',' ' '); do echo "nameserver $s"; done; } > /etc/resolv.conf.banger &&
		mv -f /etc/resolv.conf.banger /etc/resolv.conf
fi
h=$(cat /etc/hostname 2>/dev/null)
if [ -n "$h" ] && ! grep -q "[[:space:]]$h\([[:space:]]\|\$\)" /etc/hosts 2>/dev/null; then
	echo "127.0.1.1	$h" >> /etc/hosts
fi
echo "banger-network: $IFACE $ADDRESS${GATEWAY:+ via $GATEWAY}${DNS:+ dns $DNS}"
`

const hostkeysScript = `#!/bin/sh
# banger-hostkeys: the daemon injects /etc/ssh/ssh_host_ed25519_key per VM;
# only when it did not, generate one here (ed25519 only: fast under emulation).
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
[ -s /etc/ssh/ssh_host_ed25519_key ] && exit 0
command -v ssh-keygen >/dev/null 2>&1 || exit 0
mkdir -p /etc/ssh
ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key
`

const installSSHDScript = `#!/bin/sh
# banger install-sshd: this image came without sshd; install openssh-server
# with the distribution's package manager. Needs network access to the
# distribution's mirrors: create the VM with --nat.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
for s in /usr/sbin/sshd /usr/bin/sshd /sbin/sshd; do [ -x "$s" ] && exit 0; done
ID= ID_LIKE=
[ -r /etc/os-release ] && . /etc/os-release
echo "banger: installing openssh-server for ${ID:-unknown} (needs --nat)" >&2
case " $ID $ID_LIKE " in
*" debian "*|*" ubuntu "*)
	export DEBIAN_FRONTEND=noninteractive
	apt-get update && apt-get install -y --no-install-recommends openssh-server ;;
*" alpine "*)
	apk add --no-cache openssh-server openssh-keygen ;;
*" fedora "*|*" rhel "*|*" centos "*|*" rocky "*|*" almalinux "*|*" amzn "*)
	if command -v dnf >/dev/null 2>&1; then dnf install -y openssh-server
	elif command -v microdnf >/dev/null 2>&1; then microdnf install -y openssh-server
	else yum install -y openssh-server; fi ;;
*" arch "*)
	pacman -Sy --noconfirm openssh ;;
*" opensuse"*|*" suse "*|*" sles "*)
	zypper --non-interactive install openssh-server || zypper --non-interactive install openssh ;;
*)
	echo "banger: unknown distribution ${ID:-?}: install an ssh server in the image" >&2; exit 1 ;;
esac || exit 1
if [ -f /etc/ssh/sshd_config ] && ! grep -q '^Include /etc/ssh/sshd_config.d' /etc/ssh/sshd_config; then
	{ echo 'Include /etc/ssh/sshd_config.d/*.conf'; cat /etc/ssh/sshd_config; } > /etc/ssh/sshd_config.banger &&
		mv -f /etc/ssh/sshd_config.banger /etc/ssh/sshd_config
fi
/usr/lib/banger/banger-hostkeys
if [ -d /run/systemd/system ]; then
	systemctl start ssh.service 2>/dev/null || systemctl start sshd.service
fi
exit 0
`

const initScript = `#!/bin/sh
# banger init: PID 1 of banger guests without systemd (and a pass-through to
# systemd for images that have it). See banger's guest contract.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
for s in /lib/systemd/systemd /usr/lib/systemd/systemd; do
	[ -x "$s" ] && exec "$s" "$@"
done
say() { echo "banger-init: $*" > /dev/console 2>/dev/null || echo "banger-init: $*"; }
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sysfs /sys 2>/dev/null
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm /run /tmp
mount -t devpts -o gid=5,mode=620 devpts /dev/pts 2>/dev/null
mount -t tmpfs -o mode=1777 tmpfs /dev/shm 2>/dev/null
mount -t tmpfs -o mode=755 tmpfs /run 2>/dev/null
mount -o remount,rw / 2>/dev/null
if [ -s /etc/hostname ]; then cat /etc/hostname > /proc/sys/kernel/hostname; else echo banger > /proc/sys/kernel/hostname; fi
if [ -b /dev/vdb ]; then
	mount -t ext4 -o defaults /dev/vdb /root 2>/dev/null || say "cannot mount /dev/vdb on /root"
fi
/usr/lib/banger/banger-network 2>&1 | while read -r l; do say "$l"; done
/usr/lib/banger/banger-hostkeys
[ -x /usr/lib/banger/install-sshd ] && /usr/lib/banger/install-sshd 2>&1 | while read -r l; do say "$l"; done
SSHD=
for s in /usr/sbin/sshd /usr/bin/sshd /sbin/sshd; do [ -x "$s" ] && SSHD=$s && break; done
if [ -n "$SSHD" ]; then
	mkdir -p /run/sshd /var/empty && chmod 0755 /run/sshd
	"$SSHD" -E /run/sshd.log && say "sshd started"
else
	say "no sshd in this image"
fi
if [ -x /usr/lib/banger/banger-agent ]; then
	( while :; do /usr/lib/banger/banger-agent >>/run/banger-agent.log 2>&1; sleep 1; done ) &
fi
(
	while :; do
		if command -v agetty >/dev/null 2>&1; then agetty -L 115200 ttyS0 vt100
		elif command -v getty >/dev/null 2>&1; then getty -L 115200 ttyS0 vt100
		else sleep 3600; fi
		sleep 1
	done
) &
down() {
	say "shutting down ($1)"
	kill -TERM -1 2>/dev/null; sleep 1; kill -KILL -1 2>/dev/null
	sync
	umount /root 2>/dev/null
	mount -o remount,ro / 2>/dev/null
	sync
	if [ "$1" = poweroff ] && [ -d /sys/firmware/acpi ] && ! grep -q 'banger.poweroff=reset' /proc/cmdline; then
		echo o > /proc/sysrq-trigger
	fi
	echo b > /proc/sysrq-trigger
	sleep 5
}
# busybox: poweroff sends SIGUSR2, halt SIGUSR1, reboot SIGTERM
trap 'down poweroff' USR2 USR1
trap 'down reboot' TERM INT
while :; do wait; sleep 1; done
`

const poweroffScript = `#!/bin/sh
# banger poweroff: flush disks, then power the VM off.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
sync
if [ -d /run/systemd/system ]; then
	exec systemctl poweroff
fi
kill -USR2 1
`

const shutdownHook = `#!/bin/sh
# banger: systemd runs this just before the final power-off. Without ACPI
# (Firecracker, qemu microvm) a power-off only halts the CPU and the VMM
# keeps running; a reset makes the VMM exit instead. Filesystems are already
# unmounted or read-only here.
case "$1" in poweroff|halt) ;; *) exit 0 ;; esac
if [ ! -d /sys/firmware/acpi ] || grep -q 'banger.poweroff=reset' /proc/cmdline; then
	echo b > /proc/sysrq-trigger
fi
exit 0
`

func unit(desc string, lines ...string) string {
	return "[Unit]\nDescription=" + desc + "\n" + strings.Join(lines, "\n") + "\n"
}

var hostkeysUnit = unit("banger: ssh host key when the daemon injected none",
	"DefaultDependencies=no",
	"ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key",
	"After=systemd-remount-fs.service",
	"Before=ssh.service shutdown.target",
	"Conflicts=shutdown.target",
	"", "[Service]", "Type=oneshot", "RemainAfterExit=yes", "ExecStart=/usr/lib/banger/banger-hostkeys",
	"", "[Install]", "WantedBy=multi-user.target")

var installSSHDUnit = unit("banger: install openssh-server on first boot (needs --nat)",
	"ConditionPathExists=!/usr/sbin/sshd",
	"Wants=network-online.target",
	"After=banger-network.service network-online.target",
	"", "[Service]", "Type=oneshot", "RemainAfterExit=yes", "TimeoutStartSec=15min", "ExecStart=/usr/lib/banger/install-sshd",
	"", "[Install]", "WantedBy=multi-user.target")

// FstabWorkDeviceTimeout is how long systemd waits for /dev/vdb before
// booting without /root on the work disk (fstab's x-systemd.device-timeout).
// It is generous on purpose: under TCG emulation on a busy host udev
// announces /dev/vdb seconds after systemd starts waiting for it (5 s and
// 30 s were both too short), and ssh waits for the /root mount anyway, so a
// present disk costs nothing extra. Since GuestContract 3 systemd guests
// mount /root with banger-workdisk.service and never wait for the device
// (boot.go); the line stays for `mount /root` and older daemons.
const FstabWorkDeviceTimeout = "120s"

const fstab = `# banger: / is mounted by the kernel (root=/dev/vda rw).
# /root lives on the VM's work disk.
/dev/vdb /root ext4 defaults,nofail,x-systemd.device-timeout=` + FstabWorkDeviceTimeout + ` 0 2
`

const hostsFile = `127.0.0.1	localhost
127.0.1.1	banger
::1	localhost ip6-localhost ip6-loopback
ff02::1	ip6-allnodes
ff02::2	ip6-allrouters
`

// guestFacts is what guestBatch needs to know about the tree being
// converted.
type guestFacts struct {
	Source  string // recorded in image.env
	Systemd bool   // the image boots systemd
	SSHD    bool   // /usr/sbin/sshd (or equivalent) is present
	HasIP   bool   // an ip tool is present
	Busybox string // host path of a static busybox to add when !HasIP ("" = none)
	// MetaOf, when set, gives the real owner and mode of a tree path
	// (relative, no leading slash) when the tree's own are not (a tree
	// staged without root).
	MetaOf func(rel string) (uid, gid int, mode os.FileMode, ok bool)
}

// inspectTree gathers guestFacts from an unpacked root tree.
func inspectTree(root string) guestFacts {
	exists := func(ps ...string) bool {
		for _, p := range ps {
			if st, err := os.Lstat(filepath.Join(root, p)); err == nil && !st.IsDir() {
				return true
			}
			// usrmerge: /sbin -> usr/sbin etc. are symlinks in the tree
			if st, err := os.Stat(filepath.Join(root, "usr", strings.TrimPrefix(p, "/"))); err == nil && !st.IsDir() && !strings.HasPrefix(p, "/usr/") {
				return true
			}
		}
		return false
	}
	return guestFacts{
		Systemd: exists("/lib/systemd/systemd", "/usr/lib/systemd/systemd"),
		SSHD:    exists("/usr/sbin/sshd", "/usr/bin/sshd", "/sbin/sshd"),
		HasIP:   exists("/sbin/ip", "/bin/ip", "/usr/sbin/ip", "/usr/bin/ip"),
	}
}

// guestBatch adds banger's guest pieces to b (see the contract at the top
// of this file). tree is the host directory the image was built from; its
// /root is copied to the work seed.
func guestBatch(b *ext4.Batch, tree string, f guestFacts) error {
	dir := func(p string) { b.Mkdir(p, 0o755, 0, 0) }
	file := func(p, data string, mode os.FileMode) { b.WriteFile(p, []byte(data), mode, 0, 0) }

	dir("/usr/lib/banger")
	dir("/etc/banger")
	file("/usr/lib/banger/banger-network", networkScript, 0o755)
	file("/usr/lib/banger/banger-hostkeys", hostkeysScript, 0o755)
	file("/usr/lib/banger/init", initScript, 0o755)
	file("/usr/lib/banger/poweroff", poweroffScript, 0o755)
	init := "/usr/lib/banger/init"
	if f.Systemd {
		init = "/lib/systemd/systemd"
	}
	sshd := "present"
	if !f.SSHD {
		sshd = "first-boot"
		file("/usr/lib/banger/install-sshd", installSSHDScript, 0o755)
	}
	file("/etc/banger/image.env", fmt.Sprintf("SOURCE=%s\nINIT=%s\nSYSTEMD=%d\nSSHD=%s\n", shellSafe(f.Source), init, b2i(f.Systemd), sshd), 0o644)
	if !f.HasIP && f.Busybox != "" {
		data, err := os.ReadFile(f.Busybox)
		if err != nil {
			return fmt.Errorf("busybox for the guest: %w", err)
		}
		b.WriteFile("/usr/lib/banger/busybox", data, 0o755, 0, 0)
	}

	dir("/etc/ssh")
	dir("/etc/ssh/sshd_config.d")
	file("/etc/ssh/sshd_config.d/banger.conf", sshdDropIn, 0o644)
	for _, t := range []string{"rsa", "ecdsa", "ed25519", "dsa"} {
		b.Remove("/etc/ssh/ssh_host_" + t + "_key")
		b.Remove("/etc/ssh/ssh_host_" + t + "_key.pub")
	}
	file("/etc/hostname", "banger\n", 0o644)
	file("/etc/hosts", hostsFile, 0o644)
	file("/etc/fstab", fstab, 0o644)
	b.Mkdir("/root", 0o700, 0, 0)

	if f.Systemd {
		sd := "/etc/systemd/system"
		dir(sd)
		BootBatch(b) // the network unit, the work disk, ssh's ordering, BootMasks
		file(sd+"/banger-hostkeys.service", hostkeysUnit, 0o644)
		b.Symlink(sd+"/multi-user.target.wants/banger-hostkeys.service", sd+"/banger-hostkeys.service")
		if !f.SSHD {
			file(sd+"/banger-install-sshd.service", installSSHDUnit, 0o644)
			b.Symlink(sd+"/multi-user.target.wants/banger-install-sshd.service", sd+"/banger-install-sshd.service")
		}
		dir(sd + "/getty.target.wants")
		b.Symlink(sd+"/getty.target.wants/serial-getty@ttyS0.service", "/lib/systemd/system/serial-getty@.service")
		for _, u := range maskedUnits {
			b.Symlink(sd+"/"+u, "/dev/null")
		}
		dir("/usr/lib/systemd/system-shutdown")
		file("/usr/lib/systemd/system-shutdown/banger-poweroff", shutdownHook, 0o755)
		// Per-VM machine id, generated at boot (systemd-firstboot is masked).
		if _, err := os.Lstat(filepath.Join(tree, "etc/machine-id")); err == nil {
			file("/etc/machine-id", "", 0o444)
		}
	}
	return seedBatch(b, filepath.Join(tree, "root"), GuestWorkSeed, f.MetaOf)
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func shellSafe(s string) string {
	return strings.Map(func(r rune) rune {
		if r < ' ' || r == '\'' || r == '"' || r == '\\' || r == '`' || r == '$' {
			return '_'
		}
		return r
	}, s)
}

// maxSeedBytes bounds the work seed: /root of an image is normally a few
// dotfiles.
const maxSeedBytes = 64 << 20

// seedBatch copies the host tree src (an image's /root) to dst in the
// image, keeping modes and owners; special files are skipped.
func seedBatch(b *ext4.Batch, src, dst string, metaOf func(string) (int, int, os.FileMode, bool)) error {
	st, err := os.Lstat(src)
	if err != nil || !st.IsDir() {
		b.Mkdir(dst, 0o700, 0, 0)
		return nil
	}
	type item struct {
		rel  string
		info fs.FileInfo
	}
	var items []item
	var total int64
	err = filepath.Walk(src, func(p string, info fs.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		items = append(items, item{rel, info})
		if info.Mode().IsRegular() {
			total += info.Size()
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("work seed: %w", err)
	}
	if total > maxSeedBytes {
		return fmt.Errorf("work seed: the image's /root holds %d bytes, more than %d", total, maxSeedBytes)
	}
	sort.Slice(items, func(i, j int) bool { return items[i].rel < items[j].rel })
	for _, it := range items {
		p := dst
		if it.rel != "." {
			p = dst + "/" + filepath.ToSlash(it.rel)
		}
		if err := ext4.CheckPath(p); err != nil {
			continue // unrepresentable names are left out of the seed
		}
		uid, gid := owner(it.info)
		mode := it.info.Mode()
		if metaOf != nil {
			key := "root"
			if it.rel != "." {
				key += "/" + filepath.ToSlash(it.rel)
			}
			if u, g, m, ok := metaOf(key); ok {
				uid, gid, mode = u, g, mode.Type()|unixToFileMode(uint32(m))
			} else {
				uid, gid = 0, 0
			}
		}
		switch {
		case mode.IsDir():
			b.Mkdir(p, mode&(os.ModePerm|os.ModeSetgid|os.ModeSticky), uid, gid)
		case mode.IsRegular():
			data, err := os.ReadFile(filepath.Join(src, it.rel))
			if err != nil {
				return fmt.Errorf("work seed: %w", err)
			}
			b.WriteFile(p, data, mode&(os.ModePerm|os.ModeSetuid|os.ModeSetgid|os.ModeSticky), uid, gid)
		case mode&os.ModeSymlink != 0:
			if t, err := os.Readlink(filepath.Join(src, it.rel)); err == nil && t != "" {
				b.Symlink(p, t)
			}
		}
	}
	return nil
}

func unixToFileMode(m uint32) os.FileMode {
	fm := os.FileMode(m & 0o777)
	if m&0o4000 != 0 {
		fm |= os.ModeSetuid
	}
	if m&0o2000 != 0 {
		fm |= os.ModeSetgid
	}
	if m&0o1000 != 0 {
		fm |= os.ModeSticky
	}
	return fm
}

func owner(info fs.FileInfo) (int, int) {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return int(st.Uid), int(st.Gid)
	}
	return 0, 0
}
