// Package e2e drives the real banger and bangerd binaries against real
// guests (QEMU; TCG on hosts without a working KVM). Every test runs its own
// daemon inside a network namespace of its own (`ip netns exec`), with its
// own state, cache, runtime and config directories, so the host's network
// namespace is never touched and tests do not see each other.
//
// Fixtures are built once and cached under testreq.CacheDir: the test
// kernel (internal/testguest) and the minbase Debian image (image.Store
// Build, variant minbase). Each test's store is pointed at them directly
// (catalog records), which costs nothing per test.
//
// Binaries come from $BANGER_BIN (`make e2e` sets it to bin/); without it
// they are built once into a temporary directory.
package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/image"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/rpc"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/testguest"
	"github.com/bangerdev/banger/internal/testreq"
)

// Names the fixtures are registered under in every test's store.
const (
	imageName  = "minbase"
	kernelName = "testk"
)

var (
	binOnce sync.Once
	binDir  string
	binErr  error

	imgOnce sync.Once
	imgPath string
	imgErr  error
)

// binaries returns the directory holding banger and bangerd.
func binaries(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		if d := os.Getenv("BANGER_BIN"); d != "" {
			abs, err := filepath.Abs(d)
			if err != nil {
				binErr = err
				return
			}
			binDir = abs
			for _, b := range []string{"banger", "bangerd", "banger-agent"} {
				if _, err := os.Stat(filepath.Join(abs, b)); err != nil {
					binErr = fmt.Errorf("BANGER_BIN=%s lacks %s (run `make build`): %w", d, b, err)
				}
			}
			return
		}
		dir, err := os.MkdirTemp("", "banger-e2e-bin-")
		if err != nil {
			binErr = err
			return
		}
		binDir = dir
		cmd := exec.Command("go", "build", "-tags", "bangertest", "-o", dir+"/", "github.com/bangerdev/banger/cmd/banger", "github.com/bangerdev/banger/cmd/bangerd")
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		// The guest agent is static, like `make build` makes it.
		cmd = exec.Command("go", "build", "-o", dir+"/", "github.com/bangerdev/banger/cmd/banger-agent")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build banger-agent: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binDir
}

// minbaseImage returns the cached minbase image (an ext4 file), building it
// on first use with the production image recipe (debootstrap minbase +
// banger's guest pieces; the debootstrap tree is shared with the image
// package's tests through the same cache).
func minbaseImage(t testing.TB) string {
	t.Helper()
	imgOnce.Do(func() {
		dir := testreq.CacheDir(t, "e2e-image")
		marker := filepath.Join(dir, "minbase.json")
		if data, err := os.ReadFile(marker); err == nil {
			var rec model.Image
			if json.Unmarshal(data, &rec) == nil {
				if _, err := os.Stat(rec.Path); err == nil {
					imgPath = rec.Path
					return
				}
			}
		}
		mirror, err := image.HostMirror("/etc/apt")
		if err != nil {
			imgErr = err
			return
		}
		s := &image.Store{Dir: filepath.Join(dir, "images"), CacheDir: testreq.CacheDir(t, "image"),
			Catalog: &image.MemCatalog{}, Runner: hostexec.Real{}, Mirror: mirror}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
		defer cancel()
		start := time.Now()
		img, err := s.Build(ctx, image.BuildOptions{Name: imageName, Variant: "minbase", Packages: []string{"sudo"}, SizeMiB: 1024})
		if err != nil {
			imgErr = err
			return
		}
		t.Logf("built the minbase image in %s: %s", time.Since(start).Round(time.Second), img.Path)
		data, _ := json.Marshal(img)
		if err := os.WriteFile(marker, data, 0o644); err != nil {
			imgErr = err
			return
		}
		imgPath = img.Path
	})
	if imgErr != nil {
		t.Fatalf("minbase image: %v", imgErr)
	}
	return imgPath
}

// envOptions tune a test environment.
type envOptions struct {
	TapPool int // tap_pool_size
	Cow     string
	// Driver sets vm.driver; FirecrackerBinary sets firecracker.binary.
	Driver            string
	FirecrackerBinary string
	// DaemonEnv is added to every daemon start.
	DaemonEnv []string
	// Templates sets vm.templates: off by default here, so each test's
	// first VM does not pay for making a template (template_test.go
	// turns it on).
	Templates bool
	// Standby sets vm.standby (standby VMs kept ready; 0 here by default,
	// so no test pays for a background restore it did not ask for).
	Standby int
}

// env is one isolated banger installation: its own netns, directories and
// daemon.
type env struct {
	t      testing.TB
	ns     string
	dir    string // short: unix socket paths must stay under 108 bytes
	layout paths.Layout
	bin    string
	vars   []string

	daemonEnv []string
	tapPool   int

	mu     sync.Mutex
	daemon *exec.Cmd
	exited chan struct{}
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// run runs a host command and fails the test on error.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// newEnv makes a netns, directories, a config and a store holding the test
// image and kernel, and starts the daemon inside the netns.
func newEnv(t testing.TB, o envOptions) *env {
	t.Helper()
	testreq.E2E(t)
	testreq.Tools(t, "ip", "nft", "ssh", "mkfs.ext4", "debugfs", "e2fsck")
	bin := binaries(t)
	img := minbaseImage(t)
	k := testguest.Kernel(t)

	dir, err := os.MkdirTemp("", "bge2e-")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, ns: "bge2e-" + randHex(4), dir: dir, bin: bin}
	e.layout = paths.Layout{Mode: "user", StateDir: filepath.Join(dir, "state"), CacheDir: filepath.Join(dir, "cache"),
		RuntimeDir: filepath.Join(dir, "run"), ConfigDir: filepath.Join(dir, "config")}
	run(t, "ip", "netns", "add", e.ns)
	t.Cleanup(e.cleanup)
	run(t, "ip", "-n", e.ns, "link", "set", "lo", "up")
	if err := e.layout.Ensure(); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(e.layout.ConfigDir, 0o700); err != nil {
		t.Fatal(err)
	}
	cow := o.Cow
	if cow == "" {
		cow = "auto"
	}
	driver := o.Driver
	if driver == "" {
		driver = "auto"
	}
	conf := fmt.Sprintf(`log_level = "debug"
[vm]
image = %q
kernel = %q
vcpu = 1
memory = "512M"
disk_size = "1G"
driver = %q
templates = %v
standby = %d
[network]
tap_pool_size = %d
dns_listen = "127.0.0.1:53"
[disk]
cow = %q
`, imageName, kernelName, driver, o.Templates, o.Standby, o.TapPool, cow)
	if o.FirecrackerBinary != "" {
		conf += fmt.Sprintf("[firecracker]\nbinary = %q\n", o.FirecrackerBinary)
	}
	if err := os.WriteFile(e.layout.ConfigFile(), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	e.vars = []string{
		"BANGER_STATE_DIR=" + e.layout.StateDir, "BANGER_CACHE_DIR=" + e.layout.CacheDir,
		"BANGER_RUNTIME_DIR=" + e.layout.RuntimeDir, "BANGER_CONFIG_DIR=" + e.layout.ConfigDir,
		"BANGER_QEMU_ACCEL=tcg",
		// The CLI must never start a daemon behind the test's back.
		"BANGER_DAEMON=/nonexistent/bangerd-started-by-the-test",
		"HOME=" + filepath.Join(dir, "home"),
	}
	e.daemonEnv = o.DaemonEnv
	e.tapPool = o.TapPool
	if err := os.MkdirAll(filepath.Join(dir, "home"), 0o700); err != nil {
		t.Fatal(err)
	}
	e.seedStore(img, k)
	e.startDaemon()
	return e
}

// seedStore records the cached image and kernel in the test's store.
func (e *env) seedStore(imgPath string, k *testguest.Artifacts) {
	t := e.t
	ctx := context.Background()
	st, err := store.Open(ctx, e.layout.DBPath())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	fi, err := os.Stat(imgPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.PutImage(ctx, &model.Image{Name: imageName, Source: "e2e-fixture", Path: imgPath, SizeBytes: fi.Size(),
		SHA256: strings.TrimSuffix(filepath.Base(imgPath), ".ext4"), Kernel: kernelName}); err != nil {
		t.Fatal(err)
	}
	if err := st.PutKernel(ctx, &model.Kernel{Name: kernelName, Version: k.Version, Source: "e2e-fixture",
		Dir: filepath.Dir(k.Vmlinuz), Vmlinux: k.Vmlinux, BzImage: k.Vmlinuz, Initrd: k.Initrd,
		ModulesDir: k.ModulesDir, Files: map[string]string{}}); err != nil {
		t.Fatal(err)
	}
}

func (e *env) environ(extra ...string) []string {
	return append(append(os.Environ(), e.vars...), extra...)
}

// startDaemon runs bangerd in the netns and waits until it answers.
func (e *env) startDaemon(extra ...string) {
	t := e.t
	t.Helper()
	logf, err := os.OpenFile(filepath.Join(e.dir, "bangerd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command("ip", "netns", "exec", e.ns, filepath.Join(e.bin, "bangerd"))
	cmd.Env = e.environ(append(append([]string(nil), e.daemonEnv...), extra...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	e.mu.Lock()
	e.daemon, e.exited = cmd, exited
	e.mu.Unlock()
	c := rpc.NewClient(e.layout.DaemonSocket())
	deadline := time.Now().Add(60 * time.Second)
	for {
		var p api.PingResult
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := c.Call(ctx, api.MethodPing, nil, &p)
		cancel()
		if err == nil {
			return
		}
		select {
		case <-exited:
			t.Fatalf("bangerd exited during start-up:\n%s", e.daemonLog())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("bangerd did not answer within 60s: %v\n%s", err, e.daemonLog())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// daemonPID is the pid of the running bangerd (ip netns exec execs it).
func (e *env) daemonPID() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.daemon == nil || e.daemon.Process == nil {
		return 0
	}
	return e.daemon.Process.Pid
}

// stopDaemon signals the daemon and waits for it to exit.
func (e *env) stopDaemon(sig syscall.Signal) {
	e.t.Helper()
	e.mu.Lock()
	cmd, exited := e.daemon, e.exited
	e.daemon = nil
	e.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-exited:
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
		e.t.Errorf("bangerd did not exit within 60s of %v", sig)
	}
}

// waitDaemonExit waits for a daemon that is expected to die by itself (the
// crash hook).
func (e *env) waitDaemonExit(limit time.Duration) bool {
	e.mu.Lock()
	exited := e.exited
	e.mu.Unlock()
	select {
	case <-exited:
		e.mu.Lock()
		e.daemon = nil
		e.mu.Unlock()
		return true
	case <-time.After(limit):
		return false
	}
}

func (e *env) daemonLog() string {
	data, _ := os.ReadFile(filepath.Join(e.dir, "bangerd.log"))
	if len(data) > 6000 {
		data = data[len(data)-6000:]
	}
	return string(data)
}

// banger runs the CLI inside the netns.
func (e *env) banger(args ...string) (stdout, stderr string, err error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", e.ns, filepath.Join(e.bin, "banger")}, args...)...)
	cmd.Env = e.environ()
	var o, s bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &s
	err = cmd.Run()
	return o.String(), s.String(), err
}

// must runs the CLI and fails the test on error.
func (e *env) must(args ...string) string {
	e.t.Helper()
	out, serr, err := e.banger(args...)
	if err != nil {
		e.t.Fatalf("banger %s: %v\nstdout: %s\nstderr: %s\n--- daemon log ---\n%s", strings.Join(args, " "), err, out, serr, e.daemonLog())
	}
	return out
}

// show returns vm.show of ref.
func (e *env) show(ref string) *model.VM {
	e.t.Helper()
	var vm model.VM
	if err := json.Unmarshal([]byte(e.must("vm", "show", "--json", ref)), &vm); err != nil {
		e.t.Fatal(err)
	}
	return &vm
}

// list returns vm list --json.
func (e *env) list() []*model.VM {
	e.t.Helper()
	var vms []*model.VM
	if err := json.Unmarshal([]byte(e.must("vm", "list", "--json")), &vms); err != nil {
		e.t.Fatal(err)
	}
	return vms
}

// sshArgs are the system ssh options for banger's key and known_hosts.
func (e *env) sshArgs() []string {
	sshDir := e.layout.SSHDir()
	return []string{"-i", filepath.Join(sshDir, "id_ed25519"), "-o", "UserKnownHostsFile=" + filepath.Join(sshDir, "known_hosts"),
		"-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
		"-o", "ServerAliveInterval=2", "-o", "ServerAliveCountMax=5", "-o", "LogLevel=ERROR", "-F", "none"}
}

// ssh runs cmd in the guest at host (an address, or a name the netns
// resolves) with the system ssh inside the netns.
func (e *env) ssh(host, cmd string) (string, error) {
	args := append([]string{"netns", "exec", e.ns, "ssh"}, e.sshArgs()...)
	args = append(args, "root@"+host, cmd)
	c := exec.Command("ip", args...)
	c.Env = e.environ()
	out, err := c.CombinedOutput()
	return string(out), err
}

func (e *env) mustSSH(host, cmd string) string {
	e.t.Helper()
	out, err := e.ssh(host, cmd)
	if err != nil {
		e.t.Fatalf("ssh %s %q: %v\n%s", host, cmd, err, out)
	}
	return strings.TrimSpace(out)
}

// nsPIDs lists the processes inside the netns with their comm.
func (e *env) nsPIDs() map[int]string {
	out, _ := exec.Command("ip", "netns", "pids", e.ns).Output()
	res := map[int]string{}
	for _, f := range strings.Fields(string(out)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			continue
		}
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		res[pid] = strings.TrimSpace(string(comm))
	}
	return res
}

// cleanup kills everything left in the netns and removes it and the
// directories.
func (e *env) cleanup() {
	e.stopDaemon(syscall.SIGKILL)
	for i := 0; i < 50; i++ {
		pids := e.nsPIDs()
		if len(pids) == 0 {
			break
		}
		for pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if out, err := exec.Command("ip", "netns", "del", e.ns).CombinedOutput(); err != nil {
		e.t.Errorf("ip netns del %s: %v %s", e.ns, err, out)
	}
	for _, l := range loopsUnder(e.dir) {
		_ = exec.Command("losetup", "-d", l).Run()
	}
	if e.t.Failed() {
		e.t.Logf("--- daemon log (%s) ---\n%s", e.dir, e.daemonLog())
	}
	_ = os.RemoveAll(e.dir)
}

// loopsUnder lists loop devices whose backing file is under dir.
func loopsUnder(dir string) []string {
	out, _ := exec.Command("losetup", "-a").Output()
	var res []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, dir) {
			dev, _, _ := strings.Cut(l, ":")
			res = append(res, dev)
		}
	}
	return res
}

// waitState polls vm.show until the VM is in state (or fails after limit).
func (e *env) waitState(ref string, state model.VMState, limit time.Duration) *model.VM {
	e.t.Helper()
	deadline := time.Now().Add(limit)
	for {
		vm := e.show(ref)
		if vm.State == state {
			return vm
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("VM %s is %s, want %s", ref, vm.State, state)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

var errNoVM = errors.New("no such vm")

// logTimings logs the duration of the daemon's slow steps (ssh, vmm, disks)
// and of each VM start, from its debug log.
func (e *env) logTimings() {
	e.t.Helper()
	for _, l := range strings.Split(e.daemonLog(), "\n") {
		var rec struct {
			Msg  string `json:"msg"`
			VM   string `json:"vm"`
			Op   string `json:"op"`
			Step string `json:"step"`
			Took int64  `json:"took"`
		}
		if json.Unmarshal([]byte(l), &rec) != nil || (rec.Msg != "step done" && rec.Msg != "vm running") {
			continue
		}
		if rec.Msg == "step done" && time.Duration(rec.Took) < 100*time.Millisecond {
			continue
		}
		e.t.Logf("  %s %s %s %s: %s", rec.VM, rec.Op, rec.Msg, rec.Step, time.Duration(rec.Took).Round(time.Millisecond))
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// ppid returns the parent pid of pid (0 if unknown).
func ppid(pid int) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return 0
	}
	n, _ := strconv.Atoi(f[1])
	return n
}

// consoleTail returns the last n bytes of a VM's console log, for failure
// messages about what the guest did.
func (e *env) consoleTail(id string, n int) string {
	data, err := os.ReadFile(filepath.Join(e.layout.StateDir, "vms", id, "console.log"))
	if err != nil {
		return fmt.Sprintf("(no console log: %v)", err)
	}
	return tail(string(data), n)
}
