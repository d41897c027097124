package kernel_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/debmirror"
	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/kernel"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/testguest"
	"github.com/bangerdev/banger/internal/testreq"
)

type mapCatalog struct {
	mu sync.Mutex
	m  map[string]*model.Kernel
}

func (c *mapCatalog) PutKernel(_ context.Context, k *model.Kernel) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m[k.Name] = k
	return nil
}
func (c *mapCatalog) GetKernel(_ context.Context, n string) (*model.Kernel, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if k, ok := c.m[n]; ok {
		return k, nil
	}
	return nil, model.ErrNotFound
}
func (c *mapCatalog) ListKernels(context.Context) ([]*model.Kernel, error) { return nil, nil }
func (c *mapCatalog) DeleteKernel(_ context.Context, n string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, n)
	return nil
}

// wantInitramfsModules are the module files the Debian cloud kernel's
// initramfs must carry (it builds ext4 in).
var wantInitramfsModules = []string{"virtio_ring.ko", "virtio.ko", "virtio_pci.ko", "virtio_mmio.ko", "virtio_blk.ko",
	"failover.ko", "net_failover.ko", "virtio_net.ko", "virtio-rng.ko", "vsock.ko",
	"vmw_vsock_virtio_transport_common.ko", "vmw_vsock_virtio_transport.ko"}

// TestPullDebianFromMirror runs `kernel pull debian` for real against the
// host's mirror (InRelease checked with gpgv and debian-archive-keyring;
// .debs cached by hash between runs).
func TestPullDebianFromMirror(t *testing.T) {
	testreq.Tools(t, "gpgv")
	m, err := debmirror.FromHost("", hostexec.Real{}, testreq.CacheDir(t, "debmirror"))
	if err != nil {
		t.Fatal(err)
	}
	s := &kernel.Store{Dir: t.TempDir(), Catalog: &mapCatalog{m: map[string]*model.Kernel{}}, Mirror: m, Runner: hostexec.Real{}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	k, err := s.Pull(ctx, "debian")
	if err != nil {
		t.Fatalf("pull from %s: %v", m.URL, err)
	}
	t.Logf("pulled %s (%s) in %s", k.Version, k.Source, time.Since(start).Round(time.Millisecond))
	if !strings.HasPrefix(k.Source, "debian:linux-image-") || !strings.HasSuffix(k.Version, "-cloud-amd64") {
		t.Errorf("record %+v", k)
	}
	img, err := os.ReadFile(k.Vmlinux)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(img, []byte("\x7fELF")) || !kernel.HasPVHNote(img) {
		t.Error("vmlinux is not an ELF with a PVH note")
	}
	names, err := kernel.ListInitramfs(k.Initrd)
	if err != nil {
		t.Fatal(err)
	}
	var loaded []string
	for _, n := range names {
		if strings.HasSuffix(n, ".ko") {
			loaded = append(loaded, filepath.Base(n))
		}
	}
	for _, w := range wantInitramfsModules {
		if !slices.Contains(loaded, w) {
			t.Errorf("initramfs lacks %s (has %v)", w, loaded)
		}
	}
	man, err := s.Manifest(ctx, "debian")
	if err != nil || len(man.Files) < 4 || man.Files["vmlinux"] == "" {
		t.Errorf("manifest %+v, %v", man, err)
	}
}

// --- end to end: boot the artifacts under QEMU/TCG ---

type qemuRun struct {
	cmd     *exec.Cmd
	console string
	done    chan struct{} // closed when qemu exited
}

func startQEMU(t *testing.T, a *testguest.Artifacts, appendArgs string, extra ...string) *qemuRun {
	t.Helper()
	console := filepath.Join(t.TempDir(), "console.log")
	args := append([]string{"-M", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "512",
		"-display", "none", "-monitor", "none", "-no-reboot", "-serial", "file:" + console,
		"-kernel", a.Vmlinuz, "-initrd", a.Initrd, "-append", "console=ttyS0 " + appendArgs}, extra...)
	cmd := exec.Command("qemu-system-x86_64", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := &qemuRun{cmd: cmd, console: console, done: make(chan struct{})}
	go func() { cmd.Wait(); close(r.done) }()
	t.Cleanup(func() {
		select {
		case <-r.done:
		default:
			cmd.Process.Kill()
			<-r.done
		}
		if t.Failed() {
			out, _ := os.ReadFile(console)
			t.Logf("qemu stderr: %s\nconsole:\n%s", stderr.String(), out)
		}
	})
	return r
}

// waitFor waits for a console line containing marker; exited reports
// whether qemu ended.
func (r *qemuRun) waitFor(t *testing.T, marker string, timeout time.Duration) (found bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		out, _ := os.ReadFile(r.console)
		if bytes.Contains(out, []byte(marker)) {
			return true
		}
		select {
		case <-r.done:
			out, _ := os.ReadFile(r.console)
			return bytes.Contains(out, []byte(marker))
		case <-time.After(100 * time.Millisecond):
		}
	}
	return false
}

func (r *qemuRun) waitExit(t *testing.T, timeout time.Duration) string {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(timeout):
		t.Fatalf("qemu still running after %s", timeout)
	}
	out, _ := os.ReadFile(r.console)
	return string(out)
}

func TestBootInitramfsOnly(t *testing.T) {
	testreq.E2E(t)
	a := testguest.Kernel(t)
	start := time.Now()
	q := startQEMU(t, a, "banger.initramfs_only=1")
	if !q.waitFor(t, kernel.ReadyMarker, 3*time.Minute) {
		t.Fatalf("no %s on the console", kernel.ReadyMarker)
	}
	t.Logf("%s after %s", kernel.ReadyMarker, time.Since(start).Round(time.Millisecond))
	out, _ := os.ReadFile(q.console)
	if bytes.Contains(out, []byte("BANGER-INITRAMFS: warning")) {
		t.Errorf("module load warnings:\n%s", out)
	}
}

// TestBootRootfs boots into a tiny ext4 root (busybox taken from the
// initramfs itself) whose init reports what the initramfs set up, then
// powers off. It also checks the failure path: a missing root device.
func TestBootRootfs(t *testing.T) {
	testreq.E2E(t)
	testreq.Tools(t, "mkfs.ext4")
	a := testguest.Kernel(t)

	root := t.TempDir()
	for _, d := range []string{"bin", "sbin", "dev", "proc", "sys"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	err := kernel.WalkInitramfs(a.Initrd, func(e kernel.CpioEntry) error {
		if e.Name == "bin/busybox" {
			return os.WriteFile(filepath.Join(root, "bin/busybox"), e.Data, 0o755)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(root, "sbin/init"), []byte(`#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
echo "ROOT-PID=$$ MODE=$(/bin/busybox awk '$2=="/"{print $4}' /proc/mounts | /bin/busybox cut -d, -f1) VDA=$(/bin/busybox ls /dev/vda) NET=$(/bin/busybox ls /sys/class/net | /bin/busybox tr '\n' ,)"
echo "ROOT-MODULES $(/bin/busybox cut -d' ' -f1 /proc/modules | /bin/busybox tr '\n' ,)"
echo "BANGER-ROOT-OK uptime=$(/bin/busybox cut -d' ' -f1 /proc/uptime)"
/bin/busybox sync
/bin/busybox poweroff -f
`), 0o755)
	img := filepath.Join(t.TempDir(), "root.ext4")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Truncate(img, 64<<20)
	if res, err := (hostexec.Real{}).Run(context.Background(), hostexec.Cmd{Name: "mkfs.ext4", Args: []string{"-q", "-F", "-d", root, img}}); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, res.Stderr)
	}
	disk := []string{"-drive", "if=none,id=d0,format=raw,file=" + img, "-device", "virtio-blk-pci,drive=d0",
		"-netdev", "user,id=n0,restrict=on", "-device", "virtio-net-pci,netdev=n0"}

	start := time.Now()
	q := startQEMU(t, a, "root=/dev/vda rw panic=-1", disk...)
	out := q.waitExit(t, 3*time.Minute)
	t.Logf("root boot to poweroff: %s", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(out, "BANGER-ROOT-OK") {
		t.Fatalf("root init did not run:\n%s", out)
	}
	for _, want := range []string{"ROOT-PID=1 ", "MODE=rw", "VDA=/dev/vda", "eth0", "virtio_blk", "virtio_net", "vmw_vsock_virtio_transport"} {
		if !strings.Contains(out, want) {
			t.Errorf("console lacks %q", want)
		}
	}

	q = startQEMU(t, a, "root=/dev/vdz banger.rootwait=2 panic=-1", disk...)
	out = q.waitExit(t, 3*time.Minute)
	if want := "BANGER-INITRAMFS: root device /dev/vdz did not appear within 2s"; !strings.Contains(out, want) {
		t.Errorf("missing-root boot: console lacks %q:\n%s", want, lastLines(out, 15))
	}
}

func lastLines(s string, n int) string {
	l := strings.Split(s, "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return fmt.Sprint(strings.Join(l, "\n"))
}
