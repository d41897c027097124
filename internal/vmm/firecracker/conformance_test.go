package firecracker_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/privops"
	"github.com/bangerdev/banger/internal/testguest"
	"github.com/bangerdev/banger/internal/testreq"
	"github.com/bangerdev/banger/internal/vmm"
	"github.com/bangerdev/banger/internal/vmm/fakefc"
	"github.com/bangerdev/banger/internal/vmm/firecracker"
	"github.com/bangerdev/banger/internal/vmm/vmmtest"
)

func newDriver(t *testing.T, bin string, env []string, jailer *firecracker.JailerConfig) *firecracker.Driver {
	t.Helper()
	ops := privops.NewLocal(nil, nil)
	if jailer != nil {
		ops.JailerChrootBase = jailer.ChrootBase // root's config and the driver's agree
	}
	d, err := firecracker.New(firecracker.Config{Binary: bin, Env: env, Jailer: jailer}, ops, hostexec.Real{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func fakeEnv(t *testing.T, version, bootMode string) []string {
	dir := fakefc.SpecDirForTest(t)
	return []string{fakefc.EnvSpecDir + "=" + dir, fakefc.EnvSpecVersion + "=" + version, fakefc.EnvBootMode + "=" + bootMode,
		fakefc.EnvQEMUAccel + "=tcg", "PATH=" + os.Getenv("PATH")}
}

// dummyKernel makes files that satisfy the fake's path checks.
func dummyKernel(t *testing.T) (kernel, initrd string) {
	dir := t.TempDir()
	kernel, initrd = filepath.Join(dir, "vmlinux"), filepath.Join(dir, "initrd")
	for _, p := range []string{kernel, initrd} {
		if err := os.WriteFile(p, []byte("not a kernel"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return kernel, initrd
}

// TestConformanceFakeAPI runs the suite against the firecracker driver and
// fakefc in pure-API mode, for each shipped API spec.
func TestConformanceFakeAPI(t *testing.T) {
	bins := vmmtest.FakeFC(t)
	kernel, initrd := dummyKernel(t)
	for _, v := range fakefc.SpecVersions {
		t.Run(v, func(t *testing.T) {
			env := vmmtest.Env{
				Kernel: kernel, Initrd: initrd, Cmdline: "console=ttyS0 reboot=k panic=1",
				Marker:        "fakefc: InstanceStart",
				LogContains:   []string{"api spec " + v, `boot_args="console=ttyS0 reboot=k panic=1"`},
				ShutdownExits: true, // the fake behaves like a guest that reboots on Ctrl-Alt-Del
			}
			vmmtest.Run(t, func(t *testing.T) vmm.Driver {
				return newDriver(t, filepath.Join(bins, "firecracker"), fakeEnv(t, v, fakefc.BootNone), nil)
			}, env)
		})
	}
}

// TestConformanceFakeBoot runs the suite against the firecracker driver and
// fakefc booting a real guest through QEMU (TCG).
func TestConformanceFakeBoot(t *testing.T) {
	testreq.E2E(t)
	art := testguest.Kernel(t)
	bins := vmmtest.FakeFC(t)
	kernel := art.Vmlinux
	if !art.PVH {
		kernel = art.Vmlinuz // QEMU boots an ELF vmlinux only with the PVH note
	}
	env := vmmtest.Env{
		Kernel: kernel, Initrd: art.Initrd,
		Cmdline:     "console=ttyS0 reboot=k panic=1 banger.initramfs_only=1",
		Marker:      "BANGER-INITRAMFS-READY",
		LogContains: []string{"fakefc: InstanceStart", "Linux version " + art.Version},
	}
	vmmtest.Run(t, func(t *testing.T) vmm.Driver {
		return newDriver(t, filepath.Join(bins, "firecracker"), fakeEnv(t, "1.14.1", fakefc.BootQEMU), nil)
	}, env)
}

func TestVersionRangeEnforced(t *testing.T) {
	rec := &hostexec.Recorder{Respond: func(c hostexec.Cmd) (hostexec.Result, error) {
		return hostexec.Result{Stdout: []byte("Firecracker v1.4.1\n")}, nil
	}}
	d, err := firecracker.New(firecracker.Config{}, privops.NewLocal(nil, nil), rec, nil)
	if err != nil {
		t.Fatal(err)
	}
	kernel, _ := dummyKernel(t)
	spec := vmm.Spec{VMID: "v1", RuntimeDir: t.TempDir(), Kernel: kernel, VCPU: 1, MemoryMiB: 128, LogPath: "/tmp/x.log", UID: -1, GID: -1}
	if _, err := d.Start(context.Background(), spec); !errors.Is(err, firecracker.ErrUnsupportedVersion) {
		t.Fatalf("start with 1.4.1: %v", err)
	}
	if got := rec.Lines(); len(got) != 1 || got[0] != "firecracker --version" {
		t.Errorf("commands: %v", got)
	}
}

func TestNewRejectsBadJailerConfig(t *testing.T) {
	for name, cfg := range map[string]firecracker.Config{
		"relative base":   {Binary: "/usr/bin/firecracker", Jailer: &firecracker.JailerConfig{ChrootBase: "srv"}},
		"relative binary": {Binary: "firecracker", Jailer: &firecracker.JailerConfig{ChrootBase: "/srv/jailer"}},
		"bad exec name":   {Binary: "/usr/bin/fc", Jailer: &firecracker.JailerConfig{ChrootBase: "/srv/jailer"}},
	} {
		if _, err := firecracker.New(cfg, nil, nil, nil); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
	// jailer mode needs PrepareJail/RemoveJail from the launcher
	cfg := firecracker.Config{Binary: "/usr/bin/firecracker", Jailer: &firecracker.JailerConfig{ChrootBase: "/srv/jailer"}}
	if _, err := firecracker.New(cfg, launchOnly{}, nil, nil); err == nil {
		t.Error("jailer mode without jail operations accepted")
	}
}

type launchOnly struct{ vmm.Launcher }

// TestJailerBaseMismatch: a driver whose chroot base is not the one of the
// privileged side's configuration fails to start with a clear error and
// launches nothing.
func TestJailerBaseMismatch(t *testing.T) {
	testreq.Root(t)
	bins := vmmtest.FakeFC(t)
	base := t.TempDir()
	kernel, _ := dummyKernel(t)
	ops := privops.NewLocal(nil, nil)
	ops.JailerChrootBase = filepath.Join(base, "root-jail")
	d, err := firecracker.New(firecracker.Config{Binary: filepath.Join(bins, "firecracker"), Env: fakeEnv(t, "1.16.1", fakefc.BootNone),
		Jailer: &firecracker.JailerConfig{Binary: filepath.Join(bins, "jailer"), ChrootBase: filepath.Join(base, "owner-jail")}}, ops, hostexec.Real{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	run := t.TempDir()
	spec := vmm.Spec{VMID: "mismatch", RuntimeDir: run, Kernel: kernel, VCPU: 1, MemoryMiB: 128,
		LogPath: filepath.Join(run, "vm.log"), UID: 65534, GID: 65534}
	if _, err := d.Start(context.Background(), spec); err == nil || !strings.Contains(err.Error(), "chroot base") {
		t.Fatalf("start with mismatched bases: %v", err)
	}
	if _, err := os.Stat(filepath.Join(base, "owner-jail")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the driver's own base was created: %v", err)
	}
}

// TestJailerMode starts VMs through the (fake) jailer: chroot layout with
// hard links, --daemonize without being a process-group leader, uid drop,
// the chroot socket reached through a short link, the pid file in the
// chroot, Find by --id, and cleanup.
func TestJailerMode(t *testing.T) {
	testreq.Root(t)
	bins := vmmtest.FakeFC(t)
	for _, v := range []string{"1.5.0", "1.16.1"} {
		t.Run(v, func(t *testing.T) {
			base, err := os.MkdirTemp("", "jt") // images and jail on one filesystem
			if err != nil {
				t.Fatal(err)
			}
			defer os.RemoveAll(base)
			os.Chmod(base, 0o755) // the jailed uid must reach its chroot
			images := filepath.Join(base, "images")
			os.MkdirAll(images, 0o755)
			kernel := filepath.Join(images, "vmlinux")
			root := filepath.Join(images, "root.ext4")
			for _, p := range []string{kernel, root} {
				os.WriteFile(p, []byte("x"), 0o644)
			}
			os.Chown(root, 65534, 65534)
			chrootBase := filepath.Join(base, "jail")
			jailer := &firecracker.JailerConfig{Binary: filepath.Join(bins, "jailer"), ChrootBase: chrootBase}
			d := newDriver(t, filepath.Join(bins, "firecracker"), fakeEnv(t, v, fakefc.BootNone), jailer)
			run, _ := os.MkdirTemp("", "vj")
			defer os.RemoveAll(run)
			spec := vmm.Spec{VMID: "jail-" + strings.ReplaceAll(v, ".", "-"), RuntimeDir: run, Kernel: kernel,
				Cmdline: "console=ttyS0", VCPU: 1, MemoryMiB: 128,
				Drives:  []vmm.Drive{{ID: "root", Path: root, Root: true}},
				LogPath: filepath.Join(run, "vm.log"), MetricsPath: filepath.Join(run, "metrics.json"), UID: 65534, GID: 65534}
			ctx := context.Background()
			h, err := d.Start(ctx, spec)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Kill(ctx, h, syscall.SIGKILL)
			chroot := firecracker.ChrootDir(chrootBase, "firecracker", spec.VMID)
			if h.Chroot != chroot || h.PIDFile != filepath.Join(run, "firecracker.pid") || h.APISocket != filepath.Join(run, "api.sock") {
				t.Errorf("handle %+v", h)
			}
			if target, err := os.Readlink(h.APISocket); err != nil || target != filepath.Join(chroot, "run/firecracker.socket") {
				t.Errorf("socket link -> %q, %v", target, err)
			}
			var kst, lst syscall.Stat_t
			syscall.Stat(kernel, &kst)
			syscall.Stat(filepath.Join(chroot, "vmlinux"), &lst)
			if kst.Ino != lst.Ino {
				t.Error("kernel not hard-linked into the jail")
			}
			status, _ := os.ReadFile("/proc/" + itoa(h.PID) + "/status")
			if !strings.Contains(string(status), "Uid:\t65534\t65534") {
				t.Errorf("vmm not running as 65534:\n%s", status)
			}
			if sid, _ := getsid(h.PID); sid != h.PID {
				t.Errorf("jailed vmm not in its own session (sid %d)", sid)
			}
			info, err := d.Describe(ctx, h)
			if err != nil || info.State != "Running" || info.ID != spec.VMID {
				t.Errorf("describe %+v %v", info, err)
			}
			serial := filepath.Join(chroot, "serial.log")
			if v == "1.16.1" && h.LogPath != serial {
				t.Errorf("serial log %s, want %s", h.LogPath, serial)
			}
			if v == "1.5.0" && h.LogPath != spec.LogPath {
				t.Errorf("1.5.0 log %s", h.LogPath)
			}
			found, err := d.Find(ctx, spec)
			if err != nil || found.PID != h.PID {
				t.Fatalf("find %+v %v", found, err)
			}
			if err := d.Cleanup(ctx, spec); err == nil {
				t.Error("cleanup of a running vm succeeded")
			}
			if err := d.Kill(ctx, h, syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if err := d.Wait(ctx, h); err != nil {
				t.Fatal(err)
			}
			if _, err := d.Find(ctx, spec); !errors.Is(err, model.ErrNotRunning) {
				t.Errorf("find after kill: %v", err)
			}
			if err := d.Cleanup(ctx, spec); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(filepath.Dir(chroot)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("jail left behind: %v", err)
			}
			if _, err := os.Stat(kernel); err != nil {
				t.Errorf("cleanup removed the image: %v", err)
			}
		})
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func getsid(pid int) (int, error) { return unix.Getsid(pid) }

// TestJailerModeThroughHelper runs a jailed VM the way system mode does:
// the driver talks to the root helper's server (privops.Client), whose
// policy pins the jail base outside the owner's directories, and whose
// implementation resolves every path below the managed roots. The jail is
// built and removed by the helper; the VMM is signalled through it.
func TestJailerModeThroughHelper(t *testing.T) {
	testreq.Root(t)
	bins := vmmtest.FakeFC(t)
	const owner = 65534
	base, err := os.MkdirTemp("", "jh") // state and jail on one filesystem
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	os.Chmod(base, 0o755)
	state, run := filepath.Join(base, "state"), filepath.Join(base, "run")
	for _, d := range []string{filepath.Join(state, "kernels"), filepath.Join(run, "vms", "jh")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	kernel, rootfs := filepath.Join(state, "kernels", "vmlinux"), filepath.Join(state, "root.ext4")
	for _, p := range []string{kernel, rootfs} {
		os.WriteFile(p, []byte("x"), 0o644)
	}
	for _, p := range []string{state, filepath.Join(state, "kernels"), kernel, rootfs, run, filepath.Join(run, "vms"), filepath.Join(run, "vms", "jh")} {
		os.Chown(p, owner, owner) // the owner's directories, as in system mode
	}
	jail := filepath.Join(base, "jail")
	policy := privops.Policy{
		OwnerUID: owner, OwnerGID: owner, ManagedRoots: []string{state, run},
		VMMBinaries: map[string]string{"firecracker": filepath.Join(bins, "firecracker"), "jailer": filepath.Join(bins, "jailer")},
		BridgeName:  "br-banger", BridgeCIDR: "172.30.0.1/24", JailerChrootBase: jail,
	}
	local := privops.NewLocal(hostexec.Real{}, nil)
	local.Roots, local.SignalOwnerUID, local.JailerChrootBase = policy.ManagedRoots, owner, jail
	real, _ := filepath.EvalSymlinks(filepath.Join(bins, "fakefc"))
	local.VMMPaths = []string{real}
	srv, err := privops.NewServer(local, privops.ServerConfig{Policy: policy, AllowedUIDs: []uint32{0}})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(base, "h.sock")
	ln, err := privops.Listen(sock, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	client := privops.NewClient(sock)

	d, err := firecracker.New(firecracker.Config{Binary: filepath.Join(bins, "firecracker"), Env: fakeEnv(t, "1.16.1", fakefc.BootNone),
		Jailer: &firecracker.JailerConfig{Binary: filepath.Join(bins, "jailer"), ChrootBase: jail}}, client, hostexec.Real{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	rt := filepath.Join(run, "vms", "jh")
	spec := vmm.Spec{VMID: "jh", RuntimeDir: rt, Kernel: kernel, Cmdline: "console=ttyS0", VCPU: 1, MemoryMiB: 128,
		Drives:  []vmm.Drive{{ID: "root", Path: rootfs, Root: true}},
		LogPath: filepath.Join(rt, "vm.log"), UID: owner, GID: owner}
	h, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Kill(context.Background(), h, syscall.SIGKILL)
	chroot := firecracker.ChrootDir(jail, "firecracker", spec.VMID)
	for p, want := range map[string]uint32{chroot: 0, filepath.Join(chroot, "run"): owner, filepath.Join(chroot, "serial.log"): owner} {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil || st.Uid != want {
			t.Errorf("%s: uid %d, want %d (%v)", p, st.Uid, want, err)
		}
	}
	if info, err := d.Describe(ctx, h); err != nil || info.State != "Running" {
		t.Fatalf("describe %+v %v", info, err)
	}
	if err := d.Kill(ctx, h, syscall.SIGTERM); err != nil {
		t.Fatalf("kill through the helper: %v", err)
	}
	if err := d.Wait(ctx, h); err != nil {
		t.Fatal(err)
	}
	if err := d.Cleanup(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Dir(chroot)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("jail left behind: %v", err)
	}
	// A start that fails after the launch kills the jailed VMM through
	// the helper (which signals only a configured VMM comm: the jailer's
	// or firecracker's, never an empty one).
	quick, err := firecracker.New(firecracker.Config{Binary: filepath.Join(bins, "firecracker"), Env: fakeEnv(t, "1.16.1", fakefc.BootNone),
		StartTimeout: time.Nanosecond,
		Jailer:       &firecracker.JailerConfig{Binary: filepath.Join(bins, "jailer"), ChrootBase: jail}}, client, hostexec.Real{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	failSpec := spec
	failSpec.VMID = "jhfail"
	failSpec.RuntimeDir = filepath.Join(run, "vms", "jhfail")
	failSpec.LogPath = filepath.Join(failSpec.RuntimeDir, "vm.log")
	os.Mkdir(failSpec.RuntimeDir, 0o755)
	os.Chown(failSpec.RuntimeDir, owner, owner)
	if _, err := quick.Start(ctx, failSpec); err == nil || strings.Contains(err.Error(), "kill failed") {
		t.Errorf("failed start: %v", err)
	}
	if pids := processesWith("--id=jhfail\x00"); len(pids) > 0 {
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		t.Errorf("a failed jailed start left pids %v running", pids)
	}
	quick.Cleanup(ctx, failSpec)

	// A driver configured with the old base in the owner's state is
	// refused by the helper.
	bad, err := firecracker.New(firecracker.Config{Binary: filepath.Join(bins, "firecracker"), Env: fakeEnv(t, "1.16.1", fakefc.BootNone),
		Jailer: &firecracker.JailerConfig{Binary: filepath.Join(bins, "jailer"), ChrootBase: filepath.Join(state, "jail")}}, client, hostexec.Real{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bad.Start(ctx, spec); err == nil {
		t.Fatal("a jail in the owner's state was accepted")
	}
	if _, err := os.Lstat(filepath.Join(state, "jail")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("something was created in the owner's state: %v", err)
	}
}

// processesWith lists the pids whose command line contains marker.
func processesWith(marker string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline"); err == nil && strings.Contains(string(b), marker) {
			pids = append(pids, pid)
		}
	}
	return pids
}
