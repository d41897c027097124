package kernel

// The banger initramfs /init contract
//
// BuildInitramfs writes a gzip-compressed newc cpio holding a static busybox,
// the kernel modules a microVM needs and /init (the script initScript below).
// /init, running as PID 1:
//
//  1. installs the busybox applets, mounts /proc, /sys and devtmpfs on /dev;
//  2. loads the modules listed in /etc/banger/modules, in that order, with
//     busybox insmod. The builder resolved them with their dependencies from
//     modules.dep (or the modules' own .modinfo when the package ships no
//     modules.dep) so every module comes after what it needs: virtio_ring
//     before virtio, virtio_pci_legacy_dev/virtio_pci_modern_dev before
//     virtio_pci, then virtio_mmio, virtio_blk, failover and net_failover
//     before virtio_net, virtio-rng, virtio_console (the guest agent's
//     virtio-serial port), vsock, vmw_vsock_virtio_transport_common,
//     vmw_vsock_virtio_transport, and ext4 with its dependencies when the
//     kernel has it as a module (the Debian cloud kernel builds ext4 in).
//     Modules built into the kernel are skipped; a module that fails to load
//     prints a warning line and boot continues;
//  3. with the kernel argument banger.initramfs_only=1 it prints the line
//     BANGER-INITRAMFS-READY to /dev/console and then idles forever without
//     a root filesystem (the VMM conformance tests use it as their serial
//     marker);
//  4. otherwise waits, bounded by banger.rootwait=SECONDS (default 30), for
//     the root device named by root= (default /dev/vda; LABEL= and UUID= are
//     resolved with findfs), mounts it with rootfstype= (default ext4),
//     rootflags= and ro/rw (default ro, as the kernel does), moves /dev into
//     it, and switch_roots into init= (default /sbin/init);
//  5. on any failure prints "BANGER-INITRAMFS: <reason>" and drops to a
//     shell on the console, or, when panic= is on the command line, powers
//     the machine off (falling back to exiting PID 1, which makes the kernel
//     panic and honour panic=).
//
// Progress lines on the console all start with "BANGER-INITRAMFS: ".

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/bangerdev/banger/internal/atomicfile"
	"github.com/bangerdev/banger/internal/progress"
)

// ReadyMarker is the console line /init prints under banger.initramfs_only=1.
const ReadyMarker = "BANGER-INITRAMFS-READY"

// DefaultModules are the modules the initramfs loads (with dependencies)
// when InitramfsOptions.Modules is nil.
var DefaultModules = []string{
	"virtio_ring", "virtio",
	"virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci",
	"virtio_mmio", "virtio_blk",
	"failover", "net_failover", "virtio_net",
	"virtio_rng", "virtio_console",
	"vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport",
	"ext4", "crc32c_generic",
}

// InitramfsOptions configures BuildInitramfs.
type InitramfsOptions struct {
	Output     string   // path of the .cpio.gz to write (atomically)
	Busybox    string   // a static busybox binary (from the mirror's busybox-static)
	ModulesDir string   // /lib/modules/<version> of the kernel; "" = no modules
	Modules    []string // nil = DefaultModules
}

// InitramfsResult says what went in.
type InitramfsResult struct {
	Modules []string // loaded by /init, in order
	Missing []string // requested but neither a module nor built in
}

// BuildInitramfs writes the initramfs described in the package comment. It
// needs no cpio binary and no privileges.
func BuildInitramfs(ctx context.Context, opts InitramfsOptions) (*InitramfsResult, error) {
	progress.Stage(ctx, "initramfs", filepath.Base(opts.Output))
	if opts.Output == "" || opts.Busybox == "" {
		return nil, errors.New("build initramfs: output and busybox paths are required")
	}
	bb, err := os.ReadFile(opts.Busybox)
	if err != nil {
		return nil, fmt.Errorf("build initramfs: busybox: %w", err)
	}
	if !bytes.HasPrefix(bb, elfMagic) {
		return nil, fmt.Errorf("build initramfs: %s is not an ELF binary", opts.Busybox)
	}
	res := &InitramfsResult{}
	type mod struct {
		rel  string
		data []byte
	}
	var mods []mod
	version := ""
	if opts.ModulesDir != "" {
		version = filepath.Base(filepath.Clean(opts.ModulesDir))
		idx, err := LoadModuleIndex(opts.ModulesDir)
		if err != nil {
			return nil, fmt.Errorf("build initramfs: %w", err)
		}
		want := opts.Modules
		if want == nil {
			want = DefaultModules
		}
		order, missing, err := idx.Resolve(want)
		if err != nil {
			return nil, fmt.Errorf("build initramfs: %w", err)
		}
		res.Missing = missing
		for _, n := range order {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			rel := idx.Files[n]
			data, err := ReadModule(filepath.Join(opts.ModulesDir, rel))
			if err != nil {
				return nil, fmt.Errorf("build initramfs: %w", err)
			}
			for _, ext := range []string{".xz", ".zst", ".gz"} {
				rel = strings.TrimSuffix(rel, ext)
			}
			mods = append(mods, mod{rel: filepath.ToSlash(rel), data: data})
			res.Modules = append(res.Modules, n)
		}
	}

	var buf bytes.Buffer
	gz, _ := gzip.NewWriterLevel(&buf, gzip.DefaultCompression)
	cw := &cpioWriter{w: gz}
	for _, d := range []string{"bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "run", "tmp", "newroot", "etc", "etc/banger", "lib", "lib/modules"} {
		cw.Dir(d, 0o755)
	}
	cw.CharDev("dev/console", 0o600, 5, 1)
	cw.CharDev("dev/null", 0o666, 1, 3)
	cw.File("bin/busybox", 0o755, bb)
	cw.Symlink("bin/sh", "busybox")
	cw.File("init", 0o755, []byte(initScript))
	var list strings.Builder
	var dep strings.Builder
	if version != "" {
		base := "lib/modules/" + version
		dirs := map[string]bool{}
		cw.Dir(base, 0o755)
		for _, m := range mods {
			for d := path.Dir(m.rel); d != "." && !dirs[d]; d = path.Dir(d) {
				dirs[d] = true
			}
		}
		sorted := make([]string, 0, len(dirs))
		for d := range dirs {
			sorted = append(sorted, d)
		}
		// parents before children: shorter paths first is enough for a tree
		sortByDepth(sorted)
		for _, d := range sorted {
			cw.Dir(base+"/"+d, 0o755)
		}
		for _, m := range mods {
			cw.File(base+"/"+m.rel, 0o644, m.data)
			list.WriteString(base + "/" + m.rel + "\n")
			dep.WriteString(m.rel + ":\n")
		}
		cw.File(base+"/modules.dep", 0o644, []byte(dep.String()))
	}
	cw.File("etc/banger/modules", 0o644, []byte(list.String()))
	if err := cw.Close(); err != nil {
		return nil, fmt.Errorf("build initramfs: %w", err)
	}
	if err := gz.Close(); err != nil {
		return nil, fmt.Errorf("build initramfs: %w", err)
	}
	if err := atomicfile.Write(opts.Output, buf.Bytes(), 0o644); err != nil {
		return nil, fmt.Errorf("build initramfs: %w", err)
	}
	return res, nil
}

func sortByDepth(dirs []string) {
	depth := func(s string) int { return strings.Count(s, "/") }
	for i := 1; i < len(dirs); i++ {
		for j := i; j > 0 && (depth(dirs[j]) < depth(dirs[j-1]) || depth(dirs[j]) == depth(dirs[j-1]) && dirs[j] < dirs[j-1]); j-- {
			dirs[j], dirs[j-1] = dirs[j-1], dirs[j]
		}
	}
}

// ListInitramfs returns the entry names of a (gzip-compressed or plain)
// newc initramfs, in archive order.
func ListInitramfs(p string) ([]string, error) {
	var names []string
	err := WalkInitramfs(p, func(e CpioEntry) error {
		names = append(names, e.Name)
		return nil
	})
	return names, err
}

// WalkInitramfs calls fn for every entry of a (gzip-compressed or plain)
// newc initramfs.
func WalkInitramfs(p string, fn func(CpioEntry) error) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	var r io.Reader = f
	head := make([]byte, 2)
	if _, err := io.ReadFull(f, head); err != nil {
		return fmt.Errorf("read initramfs %s: %w", p, err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	if head[0] == 0x1f && head[1] == 0x8b {
		gz, err := gzip.NewReader(f)
		if err != nil {
			return fmt.Errorf("read initramfs %s: %w", p, err)
		}
		defer gz.Close()
		r = gz
	}
	if err := readCpio(r, fn); err != nil {
		return fmt.Errorf("read initramfs %s: %w", p, err)
	}
	return nil
}

// initScript is /init; see the contract at the top of this file.
const initScript = `#!/bin/sh
# banger initramfs /init (contract: internal/kernel/initramfs.go)
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

say() { echo "BANGER-INITRAMFS: $*" > /dev/console; }
PANIC=
fail() {
	say "$*"
	if [ -n "$PANIC" ]; then
		sync
		poweroff -f
		sleep 2
		exit 1
	fi
	say "dropping to a shell"
	exec sh </dev/console >/dev/console 2>&1
}

ROOT=/dev/vda FSTYPE=ext4 FLAGS= MODE=ro INIT=/sbin/init ONLY=0 WAIT=30
for a in $(cat /proc/cmdline); do
	case "$a" in
	root=*) ROOT=${a#root=} ;;
	rootfstype=*) FSTYPE=${a#rootfstype=} ;;
	rootflags=*) FLAGS=${a#rootflags=} ;;
	ro) MODE=ro ;;
	rw) MODE=rw ;;
	init=*) INIT=${a#init=} ;;
	panic=*) PANIC=${a#panic=} ;;
	banger.initramfs_only=1) ONLY=1 ;;
	banger.rootwait=*) WAIT=${a#banger.rootwait=} ;;
	esac
done

while read -r m; do
	[ -n "$m" ] || continue
	insmod "$m" 2>/dev/null || say "warning: insmod $m failed"
done < /etc/banger/modules

if [ "$ONLY" = 1 ]; then
	echo BANGER-INITRAMFS-READY > /dev/console
	while :; do sleep 3600; done
fi

i=0
max=$((WAIT * 20))
dev=
while :; do
	case "$ROOT" in
	LABEL=*|UUID=*) dev=$(findfs "$ROOT" 2>/dev/null) ;;
	*) dev=$ROOT ;;
	esac
	[ -n "$dev" ] && [ -b "$dev" ] && break
	i=$((i + 1))
	[ "$i" -ge "$max" ] && fail "root device $ROOT did not appear within ${WAIT}s"
	sleep 0.05
done

opts=$MODE
[ -n "$FLAGS" ] && opts=$opts,$FLAGS
mount -t "$FSTYPE" -o "$opts" "$dev" /newroot || fail "cannot mount $dev ($FSTYPE, $opts) on /newroot"
[ -e "/newroot$INIT" ] || [ -L "/newroot$INIT" ] || fail "init $INIT not found on $dev"
mkdir -p /newroot/dev 2>/dev/null
mount --move /dev /newroot/dev || umount /dev
umount /sys /proc
exec switch_root /newroot "$INIT"
fail "switch_root to $INIT failed"
`
