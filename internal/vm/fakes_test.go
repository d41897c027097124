package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bangerdev/banger/internal/disk"
	"github.com/bangerdev/banger/internal/ext4"
	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/netw"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/testreq"
	"github.com/bangerdev/banger/internal/vmm"
)

// fakeStore is an in-memory Store.
type fakeStore struct {
	mu     sync.Mutex
	vms    map[string]model.VM
	leases map[string]string // vm id -> ip
	saves  int
}

func newFakeStore() *fakeStore {
	return &fakeStore{vms: map[string]model.VM{}, leases: map[string]string{}}
}

func (s *fakeStore) put(vm *model.VM) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.vms[vm.ID] = *vm
}

func (s *fakeStore) GetVM(_ context.Context, id string) (*model.VM, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	vm, ok := s.vms[id]
	if !ok {
		return nil, model.ErrNotFound
	}
	return &vm, nil
}

func (s *fakeStore) UpdateVM(_ context.Context, vm *model.VM) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.vms[vm.ID]; !ok {
		return model.ErrNotFound
	}
	s.vms[vm.ID] = *vm
	s.saves++
	return nil
}

func (s *fakeStore) ListVMs(context.Context) ([]*model.VM, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*model.VM
	for _, vm := range s.vms {
		vm := vm
		out = append(out, &vm)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (s *fakeStore) AllocateLease(_ context.Context, vmID string, first, last netip.Addr) (netip.Addr, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ip, ok := s.leases[vmID]; ok {
		return netip.MustParseAddr(ip), nil
	}
	taken := map[string]bool{}
	for _, ip := range s.leases {
		taken[ip] = true
	}
	for a := first; a.Compare(last) <= 0; a = a.Next() {
		if !taken[a.String()] {
			s.leases[vmID] = a.String()
			return a, nil
		}
	}
	return netip.Addr{}, model.ErrExhausted
}

func (s *fakeStore) ReleaseLease(_ context.Context, vmID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.leases, vmID)
	return nil
}

func (s *fakeStore) leaseCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.leases)
}

// fakeArtifacts serves one image and one kernel.
type fakeArtifacts struct {
	img    *model.Image
	kernel *model.Kernel
	err    error
}

func (a *fakeArtifacts) EnsureImage(_ context.Context, name string) (*model.Image, error) {
	if a.err != nil {
		return nil, a.err
	}
	if name != a.img.Name {
		return nil, fmt.Errorf("image %q: %w", name, model.ErrNotFound)
	}
	return a.img, nil
}

func (a *fakeArtifacts) EnsureKernel(_ context.Context, name string) (*model.Kernel, error) {
	if name != a.kernel.Name {
		return nil, fmt.Errorf("kernel %q: %w", name, model.ErrNotFound)
	}
	return a.kernel, nil
}

// fakeProc is a fake VMM process.
type fakeProc struct {
	pid   int
	vmID  string
	alive bool
	done  chan struct{}
}

// fakeDriver is a vmm.Driver whose processes live in memory. Pids start
// above the kernel's pid_max so no real process ever matches them.
type fakeDriver struct {
	mu       sync.Mutex
	procs    map[int]*fakeProc
	nextPID  int
	specs    []vmm.Spec
	signals  []string // "pid:SIG"
	startErr error
	// onStart, when set, runs inside Start (tests block here to prove
	// parallelism).
	onStart func(spec vmm.Spec)
	// exitOn lists the signals that make a fake process exit.
	exitOn map[syscall.Signal]bool
}

const fakePIDBase = 1 << 23 // above pid_max (4194304)

func newFakeDriver() *fakeDriver {
	return &fakeDriver{procs: map[int]*fakeProc{}, nextPID: fakePIDBase,
		exitOn: map[syscall.Signal]bool{syscall.SIGKILL: true, syscall.SIGTERM: true}}
}

func (d *fakeDriver) Name() string                                { return "fake" }
func (d *fakeDriver) Capabilities() vmm.Capabilities              { return vmm.Capabilities{} }
func (d *fakeDriver) Shutdown(context.Context, *vmm.Handle) error { return nil }

func (d *fakeDriver) handle(p *fakeProc, spec vmm.Spec) *vmm.Handle {
	return &vmm.Handle{Driver: "fake", PID: p.pid, PIDFile: filepath.Join(spec.RuntimeDir, "fake.pid"),
		APISocket: filepath.Join(spec.RuntimeDir, "fake.sock"), LogPath: spec.LogPath, Accel: "tcg",
		Comm: "fakevmm", Marker: "fake:" + spec.VMID}
}

func (d *fakeDriver) Start(_ context.Context, spec vmm.Spec) (*vmm.Handle, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if d.onStart != nil {
		d.onStart(spec)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.startErr != nil {
		return nil, d.startErr
	}
	for _, p := range d.procs {
		if p.vmID == spec.VMID && p.alive {
			return nil, fmt.Errorf("vm %s already running: %w", spec.VMID, model.ErrAlreadyExists)
		}
	}
	d.nextPID++
	p := &fakeProc{pid: d.nextPID, vmID: spec.VMID, alive: true, done: make(chan struct{})}
	d.procs[p.pid] = p
	d.specs = append(d.specs, spec)
	return d.handle(p, spec), nil
}

// exit makes the VM's process exit (a guest powering off).
func (d *fakeDriver) exit(vmID string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, p := range d.procs {
		if p.vmID == vmID && p.alive {
			p.alive = false
			close(p.done)
		}
	}
}

func (d *fakeDriver) Kill(_ context.Context, h *vmm.Handle, sig syscall.Signal) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.procs[h.PID]
	if p == nil || !p.alive {
		return nil
	}
	d.signals = append(d.signals, fmt.Sprintf("%d:%s", h.PID, unixSigName(sig)))
	if d.exitOn[sig] {
		p.alive = false
		close(p.done)
	}
	return nil
}

func unixSigName(sig syscall.Signal) string {
	switch sig {
	case syscall.SIGKILL:
		return "KILL"
	case syscall.SIGTERM:
		return "TERM"
	case syscall.SIGUSR1:
		return "USR1"
	}
	return fmt.Sprint(int(sig))
}

func (d *fakeDriver) Wait(ctx context.Context, h *vmm.Handle) error {
	d.mu.Lock()
	p := d.procs[h.PID]
	d.mu.Unlock()
	if p == nil {
		return nil
	}
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (d *fakeDriver) Find(_ context.Context, spec vmm.Spec) (*vmm.Handle, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, p := range d.procs {
		if p.vmID == spec.VMID && p.alive {
			return d.handle(p, spec), nil
		}
	}
	return nil, fmt.Errorf("fake: find %s: %w", spec.VMID, model.ErrNotRunning)
}

func (d *fakeDriver) alive() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for _, p := range d.procs {
		if p.alive {
			out = append(out, p.vmID)
		}
	}
	sort.Strings(out)
	return out
}

func (d *fakeDriver) signalLog() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.signals...)
}

// fakeNet records taps and NAT.
type fakeNet struct {
	mu         sync.Mutex
	cfg        netw.Config
	taps       map[string]string // tap -> vm id
	nat        map[string]bool   // vm ip
	n          int
	acquireErr error
	releaseErr error
	natErr     error
	policies   []netw.VMNet // every ApplyVMNet
	disableErr error
	stale      []string // taps present on the host but unknown (crash leftovers)
	reclaimed  []string
}

func newFakeNet() *fakeNet {
	return &fakeNet{cfg: netw.Config{Bridge: "br-test", CIDR: "172.30.0.1/24"}.WithDefaults(),
		taps: map[string]string{}, nat: map[string]bool{}}
}

func (n *fakeNet) Config() netw.Config                { return n.cfg }
func (n *fakeNet) EnsureBridge(context.Context) error { return nil }

func (n *fakeNet) AcquireTap(_ context.Context, vmID string) (string, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.acquireErr != nil {
		return "", n.acquireErr
	}
	n.n++
	name := fmt.Sprintf("bgtapt%d", n.n)
	n.taps[name] = vmID
	return name, nil
}

func (n *fakeNet) ReleaseTap(_ context.Context, name string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.releaseErr != nil {
		return n.releaseErr
	}
	delete(n.taps, name)
	return nil
}

func (n *fakeNet) ApplyVMNet(_ context.Context, v netw.VMNet) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.natErr != nil {
		return n.natErr
	}
	if v.Tap == "" || v.MAC == "" {
		return fmt.Errorf("network policy without tap or MAC: %+v", v)
	}
	n.policies = append(n.policies, v)
	if v.NAT {
		n.nat[v.IP.String()] = true
	} else {
		delete(n.nat, v.IP.String())
	}
	return nil
}

func (n *fakeNet) ClearVMNet(_ context.Context, v netw.VMNet) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.disableErr != nil {
		return n.disableErr
	}
	delete(n.nat, v.IP.String())
	return nil
}

func (n *fakeNet) Reclaim(_ context.Context, inUse func(string) bool) ([]string, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	all := append([]string(nil), n.stale...)
	for t := range n.taps {
		all = append(all, t)
	}
	var out []string
	for _, t := range all {
		if !inUse(t) {
			out = append(out, t)
			delete(n.taps, t)
		}
	}
	n.stale = nil
	sort.Strings(out)
	n.reclaimed = append(n.reclaimed, out...)
	return out, nil
}

func (n *fakeNet) counts() (taps, nat int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.taps), len(n.nat)
}

// fakeDNS records the names.
type fakeDNS struct {
	mu  sync.Mutex
	rec map[string]netip.Addr
}

func (d *fakeDNS) Set(name string, ip netip.Addr) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.rec[name] = ip
}

func (d *fakeDNS) Remove(name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.rec, name)
}

func (d *fakeDNS) names() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for n := range d.rec {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// fakeConn is a guest connection; onRun decides the command's fate.
type fakeConn struct {
	mu     sync.Mutex
	cmds   []string
	onRun  func(cmd string) (int, error)
	done   chan struct{}
	closed bool
}

func newFakeConn(onRun func(string) (int, error)) *fakeConn {
	return &fakeConn{onRun: onRun, done: make(chan struct{})}
}

func (c *fakeConn) Run(_ context.Context, cmd string, _ io.Reader, _, _ io.Writer) (int, error) {
	c.mu.Lock()
	c.cmds = append(c.cmds, cmd)
	c.mu.Unlock()
	if c.onRun != nil {
		return c.onRun(cmd)
	}
	return 0, nil
}

func (c *fakeConn) Done() <-chan struct{} { return c.done }

func (c *fakeConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		c.closed = true
		close(c.done)
	}
	return nil
}

// fakeGuests hands out fake connections.
type fakeGuests struct {
	mu      sync.Mutex
	pinned  map[string]ssh.PublicKey
	forgot  []string
	waitErr error
	dialErr error
	onRun   func(addr, cmd string) (int, error)
	waits   int // WaitReady calls (ssh handshakes)
	opens   int // WaitOpen calls (TCP probes)
}

func newFakeGuests() *fakeGuests { return &fakeGuests{pinned: map[string]ssh.PublicKey{}} }

func (g *fakeGuests) AuthorizedKey() string { return "ssh-ed25519 AAAAtestkey banger" }

func (g *fakeGuests) PinHostKey(hosts []string, key ssh.PublicKey) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, h := range hosts {
		g.pinned[h] = key
	}
	return nil
}

func (g *fakeGuests) Forget(hosts ...string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, h := range hosts {
		delete(g.pinned, h)
		g.forgot = append(g.forgot, h)
	}
	return nil
}

func (g *fakeGuests) conn(addr string) *fakeConn {
	return newFakeConn(func(cmd string) (int, error) {
		g.mu.Lock()
		f := g.onRun
		g.mu.Unlock()
		if f != nil {
			return f(addr, cmd)
		}
		return 0, nil
	})
}

func (g *fakeGuests) WaitReady(ctx context.Context, addr string, _ []string, _ string, _ time.Duration) (GuestConn, error) {
	g.mu.Lock()
	g.waits++
	err := g.waitErr
	g.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return g.conn(addr), nil
}

func (g *fakeGuests) WaitOpen(ctx context.Context, addr string, _ string, _ time.Duration) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.opens++
	return g.waitErr
}

func (g *fakeGuests) Dial(_ context.Context, addr string, _ []string, _ time.Duration) (GuestConn, error) {
	g.mu.Lock()
	err := g.dialErr
	g.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return g.conn(addr), nil
}

// rig is a Manager with fakes around it, plus a real tiny image and the
// copy CoW strategy (ext4 edits run the real e2fsprogs on regular files; no
// root needed).
type rig struct {
	t      testing.TB
	m      *Manager
	store  *fakeStore
	drv    *fakeDriver
	net    *fakeNet
	dns    *fakeDNS
	guests *fakeGuests
	layout paths.Layout
	runner hostexec.Runner
	mu     sync.Mutex
	steps  []string // "op:step" in hook order
	failAt map[string]error
	freeze map[string]chan struct{}
	clock  time.Time
	opts   Options
	fwds   *fakeForwards
}

// fakeForwards records the forwards the manager asks for, by VM id.
type fakeForwards struct {
	mu    sync.Mutex
	byVM  map[string][]model.PortForward
	ip    map[string]netip.Addr
	err   error
	calls int
}

func (f *fakeForwards) Set(_ context.Context, vmID string, ip netip.Addr, fwds []model.PortForward) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.err != nil {
		return f.err
	}
	f.byVM[vmID] = append([]model.PortForward(nil), fwds...)
	f.ip[vmID] = ip
	return nil
}

func (f *fakeForwards) Remove(vmID string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.byVM, vmID)
}

func (f *fakeForwards) get(vmID string) []model.PortForward {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.byVM[vmID]
}

var (
	imgOnce sync.Once
	imgFile string
	imgErr  error
)

// testImage builds a 16 MiB ext4 image with the parts of the guest
// contract the lifecycle touches (shared by all tests of the package).
func testImage(t testing.TB) string {
	t.Helper()
	testreq.Tools(t, "mkfs.ext4", "debugfs", "e2fsck", "resize2fs")
	imgOnce.Do(func() {
		dir, err := os.MkdirTemp("", "vmtest-img-")
		if err != nil {
			imgErr = err
			return
		}
		tree := filepath.Join(dir, "tree")
		for _, d := range []string{"etc/ssh", "etc/banger", "etc/systemd/system", "usr/share/banger/work-seed", "root"} {
			if err := os.MkdirAll(filepath.Join(tree, d), 0o755); err != nil {
				imgErr = err
				return
			}
		}
		_ = os.WriteFile(filepath.Join(tree, "usr/share/banger/work-seed/.bashrc"), []byte("# seed\n"), 0o644)
		_ = os.WriteFile(filepath.Join(tree, "etc/hostname"), []byte("banger\n"), 0o644)
		imgFile = filepath.Join(dir, "image.ext4")
		imgErr = ext4.Build(context.Background(), hostexec.Real{}, ext4.BuildOptions{SourceDir: tree, Out: imgFile, SizeBytes: 16 << 20})
	})
	if imgErr != nil {
		t.Fatal(imgErr)
	}
	return imgFile
}

func newRig(t testing.TB) *rig {
	t.Helper()
	img := testImage(t)
	dir := t.TempDir()
	r := &rig{t: t, store: newFakeStore(), drv: newFakeDriver(), net: newFakeNet(), dns: &fakeDNS{rec: map[string]netip.Addr{}},
		guests: newFakeGuests(), failAt: map[string]error{}, freeze: map[string]chan struct{}{}, runner: hostexec.Real{},
		clock: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
	r.layout = paths.Layout{Mode: "user", StateDir: filepath.Join(dir, "state"), CacheDir: filepath.Join(dir, "cache"),
		RuntimeDir: filepath.Join(dir, "run"), ConfigDir: filepath.Join(dir, "config")}
	cow, err := disk.New(disk.Copy, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.fwds = &fakeForwards{byVM: map[string][]model.PortForward{}, ip: map[string]netip.Addr{}}
	r.opts = Options{
		Forwards: r.fwds,
		Store:    r.store, Artifacts: &fakeArtifacts{
			img:    &model.Image{Name: "img", Path: img, Kernel: "k"},
			kernel: &model.Kernel{Name: "k", Vmlinux: "/k/vmlinux", BzImage: "/k/vmlinuz", Initrd: "/k/initrd.img"},
		},
		Drivers: map[string]vmm.Driver{"fake": r.drv}, DefaultDriver: "fake",
		Network: r.net, CoW: cow, Runner: r.runner, DNS: r.dns, Guests: r.guests, Layout: r.layout,
		Logger: slog.New(slog.DiscardHandler), Now: r.now, VMMUID: -1, VMMGID: -1,
		StopGrace: 200 * time.Millisecond, KillWait: time.Second,
		GitIdentity: func(context.Context) (string, string) { return "Ada Lovelace", "ada@example.org" },
		StepHook:    r.hook,
	}
	m, err := New(r.opts)
	if err != nil {
		t.Fatal(err)
	}
	r.m = m
	t.Cleanup(func() { _ = r.m.Close() })
	return r
}

// freezeAt runs op (a Start or Stop in a goroutine) until it reaches
// opName:step and leaves it blocked there forever, as if the daemon had
// been killed at that point: no undo runs.
func (r *rig) freezeAt(op func(), opName, step string) {
	r.t.Helper()
	reached := make(chan struct{})
	r.mu.Lock()
	r.freeze[opName+":"+step] = reached
	r.mu.Unlock()
	go op()
	select {
	case <-reached:
	case <-time.After(30 * time.Second):
		r.t.Fatalf("%s:%s never reached", opName, step)
	}
}

// restart builds a new Manager on the same store and host fakes, as a
// restarted daemon would be (its DNS server starts empty).
func (r *rig) restart() *Manager {
	r.t.Helper()
	r.dns.mu.Lock()
	r.dns.rec = map[string]netip.Addr{}
	r.dns.mu.Unlock()
	m, err := New(r.opts)
	if err != nil {
		r.t.Fatal(err)
	}
	r.m = m
	return m
}

// now is the fake clock: it advances one second per reading.
func (r *rig) now() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.clock = r.clock.Add(time.Second)
	return r.clock
}

func (r *rig) hook(_ context.Context, _ string, op, step string) error {
	r.mu.Lock()
	key := op + ":" + step
	r.steps = append(r.steps, key)
	if ch, ok := r.freeze[key]; ok {
		delete(r.freeze, key)
		r.mu.Unlock()
		close(ch)
		select {} // the "daemon" died here
	}
	err := r.failAt[key]
	r.mu.Unlock()
	return err
}

func (r *rig) stepLog() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := append([]string(nil), r.steps...)
	r.steps = nil
	return out
}

var vmSeq int

// newVM records a stopped VM like the daemon's createRecord does.
func (r *rig) newVM(name string, nat bool) *model.VM {
	vmSeq++
	vm := &model.VM{ID: fmt.Sprintf("%016x", 0xabc000+vmSeq), Name: name, State: model.StateStopped, Image: "img", Kernel: "k",
		Driver: "auto", VCPU: 1, MemoryMiB: 256, DiskSizeMiB: 64, NAT: nat}
	r.store.put(vm)
	return vm
}

// get re-reads a VM from the store.
func (r *rig) get(id string) *model.VM {
	r.t.Helper()
	vm, err := r.store.GetVM(context.Background(), id)
	if err != nil {
		r.t.Fatal(err)
	}
	return vm
}

// files lists the files under the VM's state and runtime dirs.
func (r *rig) files(id string) []string {
	var out []string
	for _, root := range []string{r.layout.VMDir(id), r.layout.VMRuntimeDir(id)} {
		_ = filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
			if err == nil && !info.IsDir() {
				out = append(out, strings.TrimPrefix(p, filepath.Dir(filepath.Dir(root))+"/"))
			}
			return nil
		})
	}
	sort.Strings(out)
	return out
}

var errInjected = errors.New("injected failure")
