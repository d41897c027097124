package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/bangerdev/banger/internal/image"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/testguest"
	"github.com/bangerdev/banger/internal/testreq"
)

// A systemd host for system-mode tests. This machine has no systemd as
// PID 1, so the test boots one: a debootstrap tree (systemd plus what
// banger's daemon, helper and VMMs need), cached under testreq.CacheDir by
// a hash of its recipe, booted with
//
//	systemd-nspawn --register=no --keep-unit -D ROOTFS --volatile=overlay -b
//
// inside a network namespace of the test's own (--network-namespace-path;
// `ip netns exec` would remount /sys and hide the cgroup mounts nspawn
// needs), with CAP_NET_ADMIN kept for the helper. /dev/net/tun, /dev/kvm (when present) and the loop
// devices are bound in (nspawn makes the container's own /dev/net/tun). The tree is never modified: --volatile=overlay puts
// a tmpfs over it, and /var/lib/banger is a host directory bound in (VM
// disks do not belong in RAM).
//
// Fixtures are bound read-only, never rebuilt inside: the banger binaries
// ($BANGER_BIN) at /srv/banger-bin, the e2e kernel at /srv/fixtures/kernel
// and the minbase image at /srv/fixtures/image; the store is seeded with
// them from the host before the daemon first starts. /srv/share is a
// writable directory shared with the host (Share) for steps that need to
// hand the container more files (the update step's second build).
//
// Everything the container made is removed at cleanup, failed or not: the
// container (and every process in it: its pid namespace dies with its
// init), the network namespace and whatever is left in it, loop devices
// backed by the test's files, and the temporary directories.

// containerRecipe is what the container tree is made of; its hash keys the
// cache, so changing it rebuilds the tree.
var containerRecipe = struct {
	Suite    string
	Packages []string
	Version  int
}{
	Suite: "bookworm",
	Packages: []string{"systemd", "systemd-sysv", "dbus", "iproute2", "nftables", "qemu-system-x86",
		"openssh-client", "procps", "util-linux", "e2fsprogs", "kmod", "ca-certificates", "passwd"},
	Version: 1,
}

func containerRecipeHash() string {
	data, _ := json.Marshal(containerRecipe)
	h := sha256.Sum256(data)
	return hex.EncodeToString(h[:])[:16]
}

// containerRootfs returns the cached container tree, building it on first
// use (about a minute with a reachable mirror).
func containerRootfs(t testing.TB) string {
	t.Helper()
	base := testreq.CacheDir(t, "systemd-host")
	dir := filepath.Join(base, containerRecipeHash())
	tree := filepath.Join(dir, "rootfs")
	if _, err := os.Stat(filepath.Join(dir, "complete")); err == nil {
		return tree
	}
	lock, err := os.OpenFile(filepath.Join(base, ".lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "complete")); err == nil {
		return tree
	}
	testreq.Tools(t, "debootstrap")
	mirror, err := image.HostMirror("/etc/apt")
	if err != nil {
		t.Fatal(err)
	}
	_ = os.RemoveAll(dir)
	work := dir + ".tmp"
	_ = os.RemoveAll(work)
	start := time.Now()
	args := []string{"--variant=minbase", "--include=" + strings.Join(containerRecipe.Packages, ","),
		containerRecipe.Suite, filepath.Join(work, "rootfs"), mirror}
	if out, err := exec.Command("debootstrap", args...).CombinedOutput(); err != nil {
		_ = os.RemoveAll(work)
		t.Fatalf("debootstrap the systemd host from %s: %v\n%s", mirror, err, tail(string(out), 3000))
	}
	// Downloaded packages are not needed to boot.
	m, _ := filepath.Glob(filepath.Join(work, "rootfs/var/cache/apt/archives/*.deb"))
	for _, f := range m {
		_ = os.Remove(f)
	}
	if err := os.WriteFile(filepath.Join(work, "complete"), []byte(time.Since(start).String()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(work, dir); err != nil {
		t.Fatal(err)
	}
	t.Logf("built the systemd host tree %s in %s", containerRecipeHash(), time.Since(start).Round(time.Second))
	return tree
}

// sysContainer is one booted systemd host.
type sysContainer struct {
	t      testing.TB
	ns     string
	dir    string // host side: state/, share/, console.log
	leader int    // the container's init, as the host sees it
	nspawn *exec.Cmd
	exited chan struct{}
	kernel *testguest.Artifacts
}

// Container paths of the fixtures.
const (
	ctrBin    = "/srv/banger-bin"
	ctrKernel = "/srv/fixtures/kernel"
	ctrImage  = "/srv/fixtures/image"
	ctrShare  = "/srv/share"
	ctrTree   = "/srv/fixtures/tree"
	ctrOwner  = "bob"
	ctrUID    = 1500
)

// newSysContainer boots the systemd host and waits until systemd says the
// system is running.
func newSysContainer(t testing.TB) *sysContainer {
	t.Helper()
	testreq.E2E(t)
	testreq.Tools(t, "systemd-nspawn", "nsenter", "ip", "losetup")
	bin := binaries(t)
	img := minbaseImage(t)
	k := testguest.Kernel(t)
	rootfs := containerRootfs(t)

	dir, err := os.MkdirTemp("", "bgsys-")
	if err != nil {
		t.Fatal(err)
	}
	c := &sysContainer{t: t, ns: "bgsys-" + randHex(4), dir: dir, kernel: k}
	t.Cleanup(c.cleanup)
	for _, d := range []string{"state", "share"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	run(t, "ip", "netns", "add", c.ns)
	run(t, "ip", "-n", c.ns, "link", "set", "lo", "up")

	kdir := filepath.Dir(k.Vmlinuz)
	args := []string{"--register=no", "--keep-unit", "--quiet",
		"--network-namespace-path=/run/netns/" + c.ns, "-D", rootfs,
		// The helper manages the bridge, taps and nftables of the
		// container's own network namespace.
		"--capability=CAP_NET_ADMIN", "--volatile=overlay", "--machine=" + c.ns,
		"--bind=" + filepath.Join(dir, "state") + ":/var/lib/banger",
		"--bind=" + filepath.Join(dir, "share") + ":" + ctrShare,
		"--bind-ro=" + bin + ":" + ctrBin,
		"--bind-ro=" + kdir + ":" + ctrKernel,
		"--bind-ro=" + filepath.Dir(img) + ":" + ctrImage,
		"--bind-ro=" + minbaseTree(t) + ":" + ctrTree,
	}
	if _, err := os.Stat("/dev/kvm"); err == nil {
		args = append(args, "--bind=/dev/kvm")
	}
	loops, _ := filepath.Glob("/dev/loop[0-9]*")
	for _, l := range append([]string{"/dev/loop-control"}, loops...) {
		if _, err := os.Stat(l); err == nil {
			args = append(args, "--bind="+l)
		}
	}
	args = append(args, "-b")
	console, err := os.Create(filepath.Join(dir, "console.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer console.Close()
	cmd := exec.Command("systemd-nspawn", args...)
	cmd.Stdout, cmd.Stderr = console, console
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c.nspawn = cmd
	c.exited = make(chan struct{})
	go func() { _ = cmd.Wait(); close(c.exited) }()

	// The container's init is nspawn's child.
	start := time.Now()
	deadline := start.Add(60 * time.Second)
	for c.leader == 0 {
		if pid := childOf(cmd.Process.Pid); pid != 0 {
			if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(comm)) == "systemd" {
				c.leader = pid
				break
			}
		}
		c.checkAlive(deadline, "start")
		time.Sleep(50 * time.Millisecond)
	}
	for {
		out, _ := c.exec("systemctl", "is-system-running")
		state := strings.TrimSpace(out)
		if state == "running" || state == "degraded" {
			if state == "degraded" {
				failed, _ := c.exec("systemctl", "--failed", "--no-legend")
				t.Logf("systemd host is degraded (not banger's units): %s", failed)
			}
			break
		}
		c.checkAlive(deadline, "boot (state "+state+")")
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("systemd host %s booted in %s", c.ns, time.Since(start).Round(time.Millisecond))
	// nspawn gives the container its own /dev/net/tun with the host
	// node's mode, which is 0600 on this machine; a stock Debian host has
	// 0666, which the owner's VMMs need to open their taps.
	c.mustExec("sh", "-c", "test -c /dev/net/tun || { mkdir -p /dev/net && mknod /dev/net/tun c 10 200; }; chmod 0666 /dev/net/tun")
	c.mustExec("useradd", "--create-home", "--uid", strconv.Itoa(ctrUID), "--shell", "/bin/bash", ctrOwner)
	return c
}

// minbaseTree is the cached debootstrap tree the minbase image was built
// from (the image package's cache, same recipe).
func minbaseTree(t testing.TB) string {
	t.Helper()
	mirror, err := image.HostMirror("/etc/apt")
	if err != nil {
		t.Fatal(err)
	}
	o := image.BuildOptions{Variant: "minbase", Packages: []string{"sudo"}, SizeMiB: 1024, Mirror: mirror}
	if err := o.Validate(""); err != nil {
		t.Fatal(err)
	}
	tree := filepath.Join(testreq.CacheDir(t, "image"), "debootstrap", o.RecipeHash(), "rootfs")
	if _, err := os.Stat(filepath.Join(tree, "usr/sbin/sshd")); err != nil {
		t.Fatalf("the minbase debootstrap tree is not cached at %s (remove the e2e-image cache to rebuild both): %v", tree, err)
	}
	return tree
}

// fakeDebootstrap stands in for debootstrap inside the container, which
// has no route to a mirror: it copies the bound minbase tree (with its
// setuid files) into the target, the way debootstrap would leave it.
const fakeDebootstrap = `#!/bin/sh
# test double: debootstrap [options] SUITE TARGET MIRROR
set -eu
for a; do target=${last:-}; last=$a; done
mkdir -p "$target"
cp -a ` + ctrTree + `/. "$target"/
chmod u+s "$target/usr/bin/passwd"
# where it ran (the test wants a transient unit, not the helper's cgroup)
cat /proc/self/cgroup > "$target/../debootstrap.cgroup"
`

// childOf returns the first child of pid (0 if none yet).
func childOf(pid int) int {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	f := strings.Fields(string(data))
	if len(f) == 0 {
		return 0
	}
	n, _ := strconv.Atoi(f[0])
	return n
}

func (c *sysContainer) checkAlive(deadline time.Time, what string) {
	c.t.Helper()
	select {
	case <-c.exited:
		c.t.Fatalf("systemd-nspawn exited during %s:\n%s", what, c.console())
	default:
	}
	if time.Now().After(deadline) {
		c.t.Fatalf("systemd host did not finish %s within 60s:\n%s", what, c.console())
	}
}

func (c *sysContainer) console() string {
	data, _ := os.ReadFile(filepath.Join(c.dir, "console.log"))
	return tail(string(data), 4000)
}

const ctrPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// execIn runs argv inside the container as root with a clean environment
// and stdin; it returns combined output.
func (c *sysContainer) execIn(stdin []byte, argv ...string) (string, error) {
	args := append([]string{"-t", strconv.Itoa(c.leader), "-m", "-u", "-i", "-n", "-p", "-C", "--",
		"env", "-i", ctrPath, "HOME=/root", "LANG=C.UTF-8"}, argv...)
	cmd := exec.Command("nsenter", args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd.WaitDelay = time.Second
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			if cmd.Process != nil {
				_ = cmd.Process.Kill()
			}
		case <-done:
		}
	}()
	out, err := cmd.CombinedOutput()
	close(done)
	return string(out), err
}

// exec runs argv in the container as root.
func (c *sysContainer) exec(argv ...string) (string, error) { return c.execIn(nil, argv...) }

func (c *sysContainer) mustExec(argv ...string) string {
	c.t.Helper()
	out, err := c.exec(argv...)
	if err != nil {
		c.t.Fatalf("in the systemd host: %s: %v\n%s\n--- journal ---\n%s", strings.Join(argv, " "), err, out, c.journal())
	}
	return out
}

// asOwner runs argv in the container as the owner user, the way the owner
// would from a login shell (HOME set, no BANGER_* variables).
func (c *sysContainer) asOwner(argv ...string) (string, error) {
	return c.exec(append([]string{"runuser", "-u", ctrOwner, "--", "env", "HOME=/home/" + ctrOwner, "USER=" + ctrOwner}, argv...)...)
}

// banger runs the installed CLI as the owner.
func (c *sysContainer) banger(args ...string) (string, error) {
	return c.asOwner(append([]string{"/usr/local/bin/banger"}, args...)...)
}

func (c *sysContainer) mustBanger(args ...string) string {
	c.t.Helper()
	out, err := c.banger(args...)
	if err != nil {
		c.t.Fatalf("banger %s (as %s): %v\n%s\n--- journal ---\n%s", strings.Join(args, " "), ctrOwner, err, out, c.journal())
	}
	return out
}

// writeFile writes a file in the container (as root).
func (c *sysContainer) writeFile(path, content string) {
	c.t.Helper()
	c.mustExec("mkdir", "-p", filepath.Dir(path))
	if out, err := c.execIn([]byte(content), "sh", "-c", `cat > "$1"`, "sh", path); err != nil {
		c.t.Fatalf("write %s in the systemd host: %v\n%s", path, err, out)
	}
}

// Share returns the host path of the container's /srv/share.
func (c *sysContainer) Share() string { return filepath.Join(c.dir, "share") }

// ServeShare serves c.Share() over HTTP on a loopback address inside the
// container's network namespace (the listener is made there; the server
// runs in the test process) and returns its base URL, e.g.
// "http://127.0.0.1:41234". It stops at cleanup. The update step serves
// its release directory this way.
func (c *sysContainer) ServeShare(t testing.TB) string {
	t.Helper()
	ln, err := listenInNetns(c.ns)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.FileServer(http.Dir(c.Share())), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + ln.Addr().String()
}

// listenInNetns opens a TCP listener on 127.0.0.1 in the named network
// namespace: a socket stays in the namespace it was made in, whichever
// thread serves it later.
func listenInNetns(name string) (net.Listener, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return nil, err
	}
	defer orig.Close()
	target, err := netns.GetFromName(name)
	if err != nil {
		return nil, err
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return nil, err
	}
	ln, lerr := net.Listen("tcp", "127.0.0.1:0")
	if err := netns.Set(orig); err != nil {
		// This thread is in the wrong namespace: do not give it back.
		runtime.LockOSThread()
		return nil, fmt.Errorf("return to the test's network namespace: %w", err)
	}
	return ln, lerr
}

// journal is the tail of banger's units' journal (for failure messages).
func (c *sysContainer) journal() string {
	out, _ := c.exec("journalctl", "--no-pager", "-n", "80", "-u", "bangerd.service", "-u", "bangerd-root.service")
	return out
}

// seedFixtures records the bound kernel and image in the state store the
// system daemon will open (as /var/lib/banger/banger.db), with their
// container paths.
func (c *sysContainer) seedFixtures(imgPath string) {
	t := c.t
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(c.dir, "state", "banger.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	k := c.kernel
	kdir := filepath.Dir(k.Vmlinuz)
	in := func(p string) string {
		rel, err := filepath.Rel(kdir, p)
		if err != nil || strings.HasPrefix(rel, "..") {
			t.Fatalf("kernel artifact %s is not under %s", p, kdir)
		}
		return filepath.Join(ctrKernel, rel)
	}
	fi, err := os.Stat(imgPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.PutImage(ctx, &model.Image{Name: imageName, Source: "e2e-fixture", Path: filepath.Join(ctrImage, filepath.Base(imgPath)),
		SizeBytes: fi.Size(), SHA256: strings.TrimSuffix(filepath.Base(imgPath), ".ext4"), Kernel: kernelName}); err != nil {
		t.Fatal(err)
	}
	if err := st.PutKernel(ctx, &model.Kernel{Name: kernelName, Version: k.Version, Source: "e2e-fixture",
		Dir: ctrKernel, Vmlinux: in(k.Vmlinux), BzImage: in(k.Vmlinuz), Initrd: in(k.Initrd),
		ModulesDir: in(k.ModulesDir), Files: map[string]string{}}); err != nil {
		t.Fatal(err)
	}
}

// installBanger configures banger for the test (TCG, copy CoW, the
// fixtures) and runs `banger system install --owner bob` from the bound
// binaries. drop-in is extra [Service] lines for bangerd.service.
func (c *sysContainer) installBanger() {
	c.t.Helper()
	c.seedFixtures(minbaseImage(c.t))
	// The store was written by the test (root): it belongs to the owner,
	// as if the daemon had made it. (systemd's StateDirectory= re-owns the
	// tree only when the top directory's owner differs.)
	state := filepath.Join(c.dir, "state")
	if err := filepath.Walk(state, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, ctrUID, ctrUID)
	}); err != nil {
		c.t.Fatal(err)
	}
	c.writeFile("/etc/banger/config.toml", fmt.Sprintf(`log_level = "debug"
[vm]
image = %q
kernel = %q
vcpu = 1
memory = "512M"
disk_size = "1G"
driver = "qemu"
templates = false
[network]
tap_pool_size = 0
[disk]
cow = "copy"
`, imageName, kernelName))
	// This machine's /dev/kvm cannot run guests (see docs/testing.md): a
	// drop-in, which is not part of the rendered unit, forces TCG.
	c.writeFile("/etc/systemd/system/bangerd.service.d/e2e.conf", "[Service]\nEnvironment=BANGER_QEMU_ACCEL=tcg\n")
	start := time.Now()
	c.mustExec(ctrBin+"/banger", "system", "install", "--owner", ctrOwner)
	c.t.Logf("banger system install (start + readiness) took %s", time.Since(start).Round(time.Millisecond))
}

// vmState is what a survival check compares.
type vmState struct {
	PID    int
	BootID string
}

// observe returns the VM's VMM pid and guest boot id, and fails unless
// `vm list` says it runs and the VMM process is alive.
func (c *sysContainer) observe(name string) vmState {
	c.t.Helper()
	var vms []*model.VM
	if err := json.Unmarshal([]byte(c.mustBanger("vm", "list", "--json")), &vms); err != nil {
		c.t.Fatal(err)
	}
	var vm *model.VM
	for _, v := range vms {
		if v.Name == name {
			vm = v
		}
	}
	if vm == nil || vm.State != model.StateRunning || vm.Runtime.PID == 0 {
		c.t.Fatalf("vm list: %s is not running: %+v", name, vm)
	}
	comm, err := c.exec("cat", fmt.Sprintf("/proc/%d/comm", vm.Runtime.PID))
	if err != nil || !strings.HasPrefix(strings.TrimSpace(comm), "qemu") {
		c.t.Fatalf("VMM pid %d of %s is not a live qemu: %q %v", vm.Runtime.PID, name, comm, err)
	}
	boot := strings.TrimSpace(c.mustBanger("vm", "exec", name, "--", "cat", "/proc/sys/kernel/random/boot_id"))
	if len(boot) != 36 {
		c.t.Fatalf("guest boot_id %q", boot)
	}
	return vmState{PID: vm.Runtime.PID, BootID: boot}
}

// waitDaemon waits until the owner's CLI reaches the system daemon.
func (c *sysContainer) waitDaemon() {
	c.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, err := c.banger("daemon", "status")
		if err == nil {
			if !strings.Contains(out, "system (bangerd.service") {
				c.t.Fatalf("the owner's CLI does not talk to the system daemon:\n%s", out)
			}
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("the system daemon did not answer within 60s: %v\n%s\n%s", err, out, c.journal())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitHelper waits until the root helper answers (banger system status).
func (c *sysContainer) waitHelper() {
	c.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, err := c.exec("/usr/local/bin/banger", "system", "status", "--json")
		var st struct {
			Helper *json.RawMessage `json:"helper"`
		}
		if err == nil && json.Unmarshal([]byte(out), &st) == nil && st.Helper != nil {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("the root helper did not answer within 60s: %v\n%s\n%s", err, out, c.journal())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// cleanup stops the container and removes everything the test made.
func (c *sysContainer) cleanup() {
	t := c.t
	if t.Failed() && c.leader != 0 {
		t.Logf("--- banger's journal ---\n%s", c.journal())
	}
	if c.nspawn != nil && c.nspawn.Process != nil {
		// SIGTERM asks nspawn for an orderly shutdown; the pid namespace
		// (and every VMM in it) dies with the container's init.
		_ = c.nspawn.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.exited:
		case <-time.After(20 * time.Second):
			_ = syscall.Kill(-c.nspawn.Process.Pid, syscall.SIGKILL)
			if c.leader != 0 {
				_ = syscall.Kill(c.leader, syscall.SIGKILL)
			}
			select {
			case <-c.exited:
			case <-time.After(20 * time.Second):
				t.Errorf("systemd-nspawn (pid %d) did not exit", c.nspawn.Process.Pid)
			}
		}
	}
	// Anything else left in the netns (nothing should be).
	for i := 0; i < 50; i++ {
		out, _ := exec.Command("ip", "netns", "pids", c.ns).Output()
		pids := strings.Fields(string(out))
		if len(pids) == 0 {
			break
		}
		for _, p := range pids {
			if n, err := strconv.Atoi(p); err == nil {
				_ = syscall.Kill(n, syscall.SIGKILL)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if out, err := exec.Command("ip", "netns", "del", c.ns).CombinedOutput(); err != nil {
		t.Errorf("ip netns del %s: %v %s", c.ns, err, out)
	}
	for _, l := range loopsUnder(c.dir) {
		_ = exec.Command("losetup", "-d", l).Run()
	}
	if t.Failed() {
		t.Logf("--- container console (%s) ---\n%s", c.dir, c.console())
	}
	_ = os.RemoveAll(c.dir)
}
