package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bangerdev/banger/internal/agent"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/progress"
	"github.com/bangerdev/banger/internal/template"
	"github.com/bangerdev/banger/internal/vmm"
	"github.com/bangerdev/banger/internal/vmm/fakefc"
	"github.com/bangerdev/banger/internal/vmm/firecracker"
)

// fakeGuestSystem is the agent.System of a fake guest: it records the
// identities applied and reports sshd listening. Its sshd takes a new key
// per connection unless sshdNeedsReload.
type fakeGuestSystem struct {
	mu              sync.Mutex
	halts           int
	ids             []agent.Identity
	sshdNeedsReload bool
}

func (f *fakeGuestSystem) Health(context.Context) (agent.Health, error) {
	return agent.Health{Protocol: agent.Protocol, Hostname: "fake"}, nil
}

func (f *fakeGuestSystem) ApplyIdentity(_ context.Context, id agent.Identity) (agent.IdentityResult, error) {
	f.mu.Lock()
	f.ids = append(f.ids, id)
	f.mu.Unlock()
	res := agent.IdentityResult{Hostname: id.Hostname, MachineID: id.MachineID, TokenChanged: id.Token != ""}
	if s, err := ssh.ParsePrivateKey(id.HostKey); err == nil {
		res.HostKeyFingerprint = ssh.FingerprintSHA256(s.PublicKey())
		switch {
		case id.SSHDKeysPerConnection:
			res.SSHD = agent.SSHDTrusted
		case f.sshdNeedsReload:
			res.SSHD = agent.SSHDReloaded
		default:
			res.SSHD = agent.SSHDPerConnection
		}
	}
	return res, nil
}

func (f *fakeGuestSystem) Ports(context.Context) ([]agent.Port, error) {
	return []agent.Port{{Proto: "tcp", Address: "0.0.0.0", Port: 22, Process: "sshd"}}, nil
}

func (f *fakeGuestSystem) Halt(context.Context) error {
	f.mu.Lock()
	f.halts++
	f.mu.Unlock()
	return nil
}

// vmGuestSystem is one fake VM's guest: Halt makes its VMM exit a moment
// after answering, as a reset does.
type vmGuestSystem struct {
	*fakeGuestSystem
	reset func()
}

func (g vmGuestSystem) Halt(ctx context.Context) error {
	if err := g.fakeGuestSystem.Halt(ctx); err != nil {
		return err
	}
	time.AfterFunc(50*time.Millisecond, g.reset)
	return nil
}

// identities are the VMs' identities applied (with a hostname), without
// the host-key-only ones of a template's sshd check.
func (f *fakeGuestSystem) identities() []agent.Identity { return f.idsWith(true) }

// sshdChecks are the host-key-only identities of templates' sshd checks.
func (f *fakeGuestSystem) sshdChecks() []agent.Identity { return f.idsWith(false) }

func (f *fakeGuestSystem) idsWith(hostname bool) []agent.Identity {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []agent.Identity
	for _, id := range f.ids {
		if (id.Hostname != "") == hostname {
			out = append(out, id)
		}
	}
	return out
}

// snapDriver is fakeDriver plus snapshots: each started "guest" serves a
// real agent.Server on the spec's virtio-serial socket, with the token
// found beside its root disk (a VM's or a template's directory) or beside
// the state file it restores.
type snapDriver struct {
	*fakeDriver
	sys     *fakeGuestSystem
	pathDir string // PATH of the fake guest's commands

	// firecracker makes the guests Firecracker-like: the state has a
	// memory file beside it and the agent is reached through a hybrid
	// vsock socket (fakefc's bridge) instead of a virtio-serial one.
	firecracker bool

	mu         sync.Mutex
	listeners  map[string]io.Closer // by VM id
	saves      int
	restoreErr error
	resizes    []string
	pauses     []string // "pause PID" / "resume PID"
}

func newSnapDriver(t *testing.T) *snapDriver {
	dir := t.TempDir()
	// The guest's resize2fs (the size poll finds no cat and gives up).
	if err := os.WriteFile(filepath.Join(dir, "resize2fs"), []byte("#!/bin/sh\necho resized \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	d := &snapDriver{fakeDriver: newFakeDriver(), sys: &fakeGuestSystem{}, pathDir: dir, listeners: map[string]io.Closer{}}
	t.Cleanup(func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		for _, l := range d.listeners {
			_ = l.Close()
		}
	})
	return d
}

func (d *snapDriver) Capabilities() vmm.Capabilities {
	return vmm.Capabilities{Snapshots: true, Pause: true}
}

func (d *snapDriver) Pause(_ context.Context, h *vmm.Handle) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.pauses = append(d.pauses, fmt.Sprintf("pause %d", h.PID))
	return nil
}

func (d *snapDriver) Resume(_ context.Context, h *vmm.Handle) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.pauses = append(d.pauses, fmt.Sprintf("resume %d", h.PID))
	return nil
}

func (d *snapDriver) VMMVersion(context.Context) (string, error) { return "fake 1.0", nil }

func (d *snapDriver) Save(_ context.Context, _ *vmm.Handle, path string) error {
	d.mu.Lock()
	d.saves++
	d.mu.Unlock()
	if d.firecracker {
		if err := os.WriteFile(path+firecracker.MemFileSuffix, []byte("guest memory"), 0o600); err != nil {
			return err
		}
	}
	return os.WriteFile(path, []byte("saved guest"), 0o600)
}

func (d *snapDriver) ResizeDrive(_ context.Context, _ *vmm.Handle, index int, size int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.resizes = append(d.resizes, fmt.Sprintf("%d:%d", index, size>>20))
	return nil
}

func (d *snapDriver) Start(ctx context.Context, spec vmm.Spec) (*vmm.Handle, error) {
	tokenFile := filepath.Join(filepath.Dir(spec.Drives[0].Path), agentTokenFile)
	if spec.RestoreFrom != "" {
		d.mu.Lock()
		err := d.restoreErr
		d.mu.Unlock()
		if err != nil {
			return nil, err
		}
		if b, err := os.ReadFile(spec.RestoreFrom); err != nil || string(b) != "saved guest" {
			return nil, errors.New("fake: not a saved guest")
		}
		if _, err := os.Stat(spec.RestoreFrom + firecracker.MemFileSuffix); d.firecracker && err != nil {
			return nil, fmt.Errorf("fake: no memory file: %w", err)
		}
		tokenFile = filepath.Join(filepath.Dir(spec.RestoreFrom), templateTokenFile)
	}
	h, err := d.fakeDriver.Start(ctx, spec)
	if err != nil {
		return h, err
	}
	sock := ""
	switch {
	case d.firecracker && spec.VsockPath != "":
		sock = filepath.Join(spec.RuntimeDir, "guest-port.sock")
	case !d.firecracker && len(spec.SerialPorts) > 0:
		sock = spec.SerialPorts[0].Socket
	default:
		return h, nil
	}
	data, err := os.ReadFile(tokenFile)
	if err != nil {
		return nil, err
	}
	token, err := agent.ParseToken(data)
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		return nil, err
	}
	var closer io.Closer = l
	if d.firecracker {
		// The daemon dials the hybrid vsock; fakefc's bridge takes it to
		// the guest's port, as in boot mode qemu.
		b, err := fakefc.ListenVsock(spec.VsockPath, map[uint32]string{agent.VsockPort: sock}, nil)
		if err != nil {
			l.Close()
			return nil, err
		}
		closer = closers{b, l}
	}
	sys := vmGuestSystem{d.sys, func() {
		d.mu.Lock()
		if l := d.listeners[spec.VMID]; l != nil {
			_ = l.Close()
			delete(d.listeners, spec.VMID)
		}
		d.mu.Unlock()
		d.exit(spec.VMID)
	}}
	srv := &agent.Server{Token: token, System: sys, Transport: "test", ExecDir: "/", ExecEnv: []string{"PATH=" + d.pathDir}}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_ = srv.Serve(context.Background(), c) // one host at a time, like QEMU's chardev
			c.Close()
		}
	}()
	d.mu.Lock()
	d.listeners[spec.VMID] = closer
	d.mu.Unlock()
	return h, nil
}

// closers closes each in turn.
type closers []io.Closer

func (cs closers) Close() error {
	for _, c := range cs {
		_ = c.Close()
	}
	return nil
}

func (d *snapDriver) Kill(ctx context.Context, h *vmm.Handle, sig syscall.Signal) error {
	err := d.fakeDriver.Kill(ctx, h, sig)
	vmID := strings.TrimPrefix(h.Marker, "fake:")
	d.mu.Lock()
	if l := d.listeners[vmID]; l != nil && d.exitOn[sig] {
		_ = l.Close()
		delete(d.listeners, vmID)
	}
	d.mu.Unlock()
	return err
}

// newTemplateRig is newRig with snapDriver, an agent binary and a
// template store.
func newTemplateRig(t *testing.T) (*rig, *snapDriver) { return newTemplateRigOn(t, false) }

// newTemplateRigOn is newTemplateRig, with Firecracker-like guests when fc.
func newTemplateRigOn(t *testing.T, fc bool) (*rig, *snapDriver) {
	r := newRig(t)
	d := newSnapDriver(t)
	d.firecracker = fc
	bin := filepath.Join(t.TempDir(), "banger-agent")
	if err := os.WriteFile(bin, []byte("\x7fELF fake agent"), 0o755); err != nil {
		t.Fatal(err)
	}
	r.drv = d.fakeDriver
	// Named qemu: the manager gives QEMU VMs the virtio-serial agent port.
	driver := "qemu"
	if d.firecracker {
		driver = "firecracker" // and Firecracker VMs the hybrid vsock
	}
	r.opts.Drivers = map[string]vmm.Driver{driver: d}
	r.opts.DefaultDriver = driver
	r.opts.AgentBinary = bin
	r.opts.Templates = template.NewStore(filepath.Join(r.layout.StateDir, "templates"), nil)
	r.opts.TemplateDiskMiB = 64
	_ = r.m.Close()
	m, err := New(r.opts)
	if err != nil {
		t.Fatal(err)
	}
	r.m = m
	return r, d
}

func TestCreateRestoresTemplate(t *testing.T) {
	r, d := newTemplateRig(t)
	ctx := context.Background()
	var events []string
	var mu sync.Mutex
	pctx := progress.WithSink(ctx, func(e progress.Event) {
		mu.Lock()
		events = append(events, e.Stage+": "+e.Message)
		mu.Unlock()
	})

	a, err := r.m.Start(pctx, r.newVM("a", false))
	if err != nil {
		t.Fatalf("start a: %v\nevents: %q", err, events)
	}
	if a.State != model.StateRunning || a.Runtime.Template == "" {
		t.Fatalf("a: %+v", a)
	}
	steps := strings.Join(r.stepLog(), " ")
	if !strings.Contains(steps, "create:artifacts create:template create:lease") || !strings.Contains(steps, "create:vmm create:identity create:dns") {
		t.Errorf("steps: %s", steps)
	}
	b, err := r.m.Start(ctx, r.newVM("b", false))
	if err != nil {
		t.Fatal(err)
	}
	if b.Runtime.Template != a.Runtime.Template || d.saves != 1 {
		t.Fatalf("b restored from %q (a from %q), %d saves", b.Runtime.Template, a.Runtime.Template, d.saves)
	}
	// Restored VMs are ready once the port answers: the agent saw sshd
	// serve the new key, so no host handshake is made for readiness.
	r.guests.mu.Lock()
	waits, opens := r.guests.waits, r.guests.opens
	r.guests.mu.Unlock()
	if waits != 0 || opens != 2 {
		t.Errorf("restores made %d ssh handshakes and %d port probes, want 0 and 2", waits, opens)
	}

	// The VMM specs: the template's boot, then two restores with the
	// template's MAC on each VM's own tap.
	specs := d.specs
	if len(specs) != 3 || specs[0].RestoreFrom != "" || specs[1].RestoreFrom == "" || specs[2].RestoreFrom != specs[1].RestoreFrom {
		t.Fatalf("specs: %+v", specs)
	}
	for _, s := range specs {
		if len(s.Net) != 1 || s.Net[0].MAC != TemplateMAC {
			t.Errorf("spec %s net %+v, want MAC %s", s.VMID, s.Net, TemplateMAC)
		}
	}
	if specs[1].Net[0].Tap == specs[2].Net[0].Tap {
		t.Error("two restored VMs share a tap")
	}
	// Disks: CoW clones of the template's.
	h, err := decodeHandle(a.Runtime.DiskHandle)
	if err != nil || h.Base != filepath.Join(r.layout.StateDir, "templates", a.Runtime.Template, templateRootFile) {
		t.Fatalf("root disk handle %+v %v", h, err)
	}

	ids := d.sys.identities()
	if len(ids) != 2 {
		t.Fatalf("identities applied: %d", len(ids))
	}
	for i, v := range []*model.VM{a, b} {
		id := ids[i]
		tok, _ := agentToken(r.layout.VMDir(v.ID))
		if id.Hostname != v.Name || id.MAC != v.MAC || id.Address != v.IP+"/24" || id.MachineID != MachineID(v.ID) ||
			id.Token != tok || len(id.Entropy) < 32 || id.Time.IsZero() || len(id.HostKey) == 0 || id.Domain != "vm" {
			t.Errorf("identity of %s: %+v", v.Name, id)
		}
	}
	if string(ids[0].Entropy) == string(ids[1].Entropy) {
		t.Error("two VMs got the same entropy")
	}
	// The template checked its sshd once (a throwaway key, then its own),
	// so the restores only write their keys.
	checks := d.sys.sshdChecks()
	tkey, _ := os.ReadFile(filepath.Join(r.layout.StateDir, "templates", a.Runtime.Template, hostKeyFile))
	if len(checks) != 2 || string(checks[0].HostKey) == string(tkey) || string(checks[1].HostKey) != string(tkey) || checks[0].SSHDKeysPerConnection {
		t.Errorf("template sshd check: %d identities", len(checks))
	}
	if !ids[0].SSHDKeysPerConnection || !ids[1].SSHDKeysPerConnection {
		t.Error("restored VMs were not told their sshd takes keys per connection")
	}
	// The VM's own token works from now on (the template's is refused).
	c, err := r.m.Agent(a)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Ping(ctx); err != nil {
		t.Fatalf("ping with the VM's token: %v", err)
	}
}

func TestRestoreFailureColdBoots(t *testing.T) {
	r, d := newTemplateRig(t)
	ctx := context.Background()
	if _, err := r.m.Start(ctx, r.newVM("a", false)); err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	d.restoreErr = errors.New("qemu: load of migration failed")
	d.mu.Unlock()
	var warned []string
	pctx := progress.WithSink(ctx, func(e progress.Event) {
		if e.Stage == "warning" {
			warned = append(warned, e.Message)
		}
	})
	b, err := r.m.Start(pctx, r.newVM("b", false))
	if err != nil {
		t.Fatalf("a failed restore failed the create: %v", err)
	}
	if b.State != model.StateRunning || b.Runtime.Template != "" {
		t.Fatalf("b: %+v", b)
	}
	if len(warned) != 1 || !strings.Contains(warned[0], "failed to restore") || !strings.Contains(warned[0], "booting from scratch") {
		t.Errorf("warnings: %q", warned)
	}
	if ts, _ := r.opts.Templates.List(); len(ts) != 0 {
		t.Errorf("the template that failed was kept: %+v", ts)
	}
	// The cold boot's disk is over the image, not the discarded template.
	h, _ := decodeHandle(b.Runtime.DiskHandle)
	if h == nil || h.Base != r.opts.Artifacts.(*fakeArtifacts).img.Path {
		t.Errorf("root disk after fallback: %+v", h)
	}
	if taps, _ := r.net.counts(); taps != 2 {
		t.Errorf("%d taps after the fallback, want 2 (a and b)", taps)
	}
}

func TestColdAndUnservableSizesSkipTemplates(t *testing.T) {
	r, d := newTemplateRig(t)
	ctx := context.Background()
	cold := r.newVM("cold", false)
	cold.Runtime.Cold = true
	r.store.put(cold)
	v, err := r.m.Start(ctx, cold)
	if err != nil {
		t.Fatal(err)
	}
	if v.Runtime.Template != "" || d.saves != 0 || strings.Contains(strings.Join(r.stepLog(), " "), "template") {
		t.Fatalf("--cold used a template: %+v", v.Runtime)
	}
	small := r.newVM("small", false)
	small.DiskSizeMiB = 32 // below the template's 64
	r.store.put(small)
	if v, err := r.m.Start(ctx, small); err != nil || v.Runtime.Template != "" || d.saves != 0 {
		t.Fatalf("a smaller disk: %v %+v", err, v.Runtime)
	}
}

func TestLargerDiskGrowsAfterRestore(t *testing.T) {
	r, d := newTemplateRig(t)
	big := r.newVM("big", false)
	big.DiskSizeMiB = 128
	r.store.put(big)
	v, err := r.m.Start(context.Background(), big)
	if err != nil {
		t.Fatal(err)
	}
	if v.Runtime.Template == "" || strings.Join(d.resizes, ",") != "1:128" {
		t.Fatalf("template %q, resizes %q", v.Runtime.Template, d.resizes)
	}
}

func TestTemplateKeyFollowsInputs(t *testing.T) {
	r, _ := newTemplateRig(t)
	ctx := context.Background()
	vm := r.newVM("k", false)
	k1, err := r.m.TemplateKey(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	if k1.Image != "img" || k1.Kernel != "k" || k1.VCPU != 1 || k1.MemoryMiB != 256 || k1.Driver != "qemu" ||
		k1.VMMVersion != "fake 1.0" || k1.DiskMiB != 64 || k1.Guest == "" || k1.GuestContract < 1 {
		t.Fatalf("key: %+v", k1)
	}
	vm.MemoryMiB = 512
	if k2, _ := r.m.TemplateKey(ctx, vm); k2.ID() == k1.ID() {
		t.Error("memory did not change the key")
	}
	vm.MemoryMiB = 256
	if err := os.WriteFile(r.opts.AgentBinary, []byte("\x7fELF another agent"), 0o755); err != nil {
		t.Fatal(err)
	}
	if k3, _ := r.m.TemplateKey(ctx, vm); k3.ID() == k1.ID() {
		t.Error("a new agent binary did not change the key")
	}
	// The fake driver without snapshots: no template.
	r2 := newRig(t)
	r2.opts.Templates = template.NewStore(t.TempDir(), nil)
	r2.opts.AgentBinary = r.opts.AgentBinary
	m2, err := New(r2.opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m2.TemplateKey(ctx, r2.newVM("x", false)); !errors.Is(err, ErrNoTemplate) {
		t.Errorf("driver without snapshots: %v", err)
	}
}

func TestRestoreFailedClassifiesSteps(t *testing.T) {
	for step, want := range map[string]bool{StepVMM: true, StepIdentity: true, StepSSH: true, StepTap: false, StepRootDisk: false} {
		if got := restoreFailed(&StepError{Op: OpCreate, Step: step, Err: errors.New("x")}); got != want {
			t.Errorf("restoreFailed(%s) = %v", step, got)
		}
	}
	if restoreFailed(errors.New("plain")) {
		t.Error("a plain error counted as a restore failure")
	}
}

func TestConcurrentCreatesMakeOneTemplate(t *testing.T) {
	r, d := newTemplateRig(t)
	ctx := context.Background()
	vms := []*model.VM{r.newVM("p1", false), r.newVM("p2", false), r.newVM("p3", false)}
	var wg sync.WaitGroup
	errs := make([]error, len(vms))
	for i, v := range vms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			vms[i], errs[i] = r.m.Start(ctx, v)
		}()
	}
	wg.Wait()
	for i, v := range vms {
		if errs[i] != nil || v.Runtime.Template == "" || v.Runtime.Template != vms[0].Runtime.Template {
			t.Fatalf("%s: %v %+v", v.Name, errs[i], v.Runtime)
		}
	}
	if d.saves != 1 {
		t.Fatalf("%d templates saved for one key", d.saves)
	}
	// The template's VMM, tap and runtime dir are gone.
	if taps, _ := r.net.counts(); taps != len(vms) {
		t.Errorf("%d taps in use, want %d", taps, len(vms))
	}
	ents, _ := os.ReadDir(filepath.Join(r.layout.RuntimeDir, "vms"))
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "tmpl-") {
			t.Errorf("template runtime dir left: %s", e.Name())
		}
	}
	if alive := r.drv.alive(); len(alive) != len(vms) {
		t.Errorf("alive VMMs %v, want only the %d VMs", alive, len(vms))
	}
}

func TestReconcileEndsAnUnfinishedTemplate(t *testing.T) {
	r, d := newTemplateRig(t)
	ctx := context.Background()
	id := "tmpl-0123456789abcdef"
	rdir := filepath.Join(r.layout.RuntimeDir, "vms", id)
	if err := os.MkdirAll(rdir, 0o700); err != nil {
		t.Fatal(err)
	}
	// A template guest left running by a daemon that died (no agent port:
	// the fake only needs the process).
	if _, err := d.fakeDriver.Start(ctx, vmm.Spec{VMID: id, RuntimeDir: rdir, Kernel: "/k", VCPU: 1, MemoryMiB: 64,
		LogPath: filepath.Join(rdir, "log")}); err != nil {
		t.Fatal(err)
	}
	staging := filepath.Join(r.layout.StateDir, "templates", ".make-"+strings.Repeat("a", 32)+"-1")
	if err := os.MkdirAll(staging, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := r.m.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if alive := d.alive(); len(alive) != 0 {
		t.Errorf("template VMM still alive: %v", alive)
	}
	for _, p := range []string{rdir, staging} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left: %v", p, err)
		}
	}
}

// TestFastStopHaltsThroughTheAgent: the default stop asks the agent to halt
// (no ssh poweroff, no signal: the fake VMM exits as on a reset); a
// graceful stop goes through ssh and leaves the agent alone; an agent that
// does not answer falls back to ssh.
func TestFastStopHaltsThroughTheAgent(t *testing.T) {
	r, d := newTemplateRig(t)
	ctx := context.Background()
	var mu sync.Mutex
	var ran []string
	r.guests.onRun = func(addr, cmd string) (int, error) {
		mu.Lock()
		ran = append(ran, cmd)
		mu.Unlock()
		return 0, nil
	}
	sshCmds := func() int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, c := range ran {
			if strings.Contains(c, "poweroff") {
				n++
			}
		}
		return n
	}
	vm, err := r.m.Start(ctx, r.newVM("fs", false))
	if err != nil {
		t.Fatal(err)
	}
	// (The template's own VMM was stopped with a signal.)
	signalsBefore := len(d.signalLog())
	start := time.Now()
	if vm, err = r.m.Stop(ctx, vm); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if vm.State != model.StateStopped || d.sys.halts != 1 || sshCmds() != 0 || len(d.signalLog()) != signalsBefore {
		t.Fatalf("fast stop: state %s, halts %d, ssh poweroffs %d, signals %v", vm.State, d.sys.halts, sshCmds(), d.signalLog())
	}
	if took > FastStopGrace {
		t.Errorf("fast stop took %s", took)
	}

	// Graceful: ssh poweroff, the agent is not asked to halt (the fake
	// guest ignores the poweroff, so the VMM is killed after the grace).
	if vm, err = r.m.Start(ctx, vm); err != nil {
		t.Fatal(err)
	}
	if vm, err = r.m.StopWith(ctx, vm, StopOptions{Graceful: 300 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	if d.sys.halts != 1 || sshCmds() != 1 {
		t.Fatalf("graceful stop: halts %d, ssh poweroffs %d", d.sys.halts, sshCmds())
	}
	if sig := d.signalLog(); len(sig) != signalsBefore+1 || !strings.HasSuffix(sig[signalsBefore], ":KILL") {
		t.Fatalf("graceful stop of a guest that ignores it: signals %v", sig)
	}

	// No agent answering: ssh.
	if vm, err = r.m.Start(ctx, vm); err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	if l := d.listeners[vm.ID]; l != nil {
		_ = l.Close()
		delete(d.listeners, vm.ID)
	}
	d.mu.Unlock()
	r.m.agents.drop(vm.ID)
	if vm, err = r.m.Stop(ctx, vm); err != nil {
		t.Fatal(err)
	}
	if d.sys.halts != 1 || sshCmds() != 2 || vm.State != model.StateStopped {
		t.Fatalf("stop without an agent: halts %d, ssh poweroffs %d, %s", d.sys.halts, sshCmds(), vm.State)
	}
}

// TestCreateRestoresTemplateFirecracker is the restore path on a driver
// named firecracker: the template keeps the memory file beside its state,
// and every agent call (the template's readiness, the restored guest's
// identity, the VM's own client) goes through the hybrid vsock socket.
func TestCreateRestoresTemplateFirecracker(t *testing.T) {
	r, d := newTemplateRigOn(t, true)
	ctx := context.Background()
	a, err := r.m.Start(ctx, r.newVM("a", false))
	if err != nil {
		t.Fatal(err)
	}
	b, err := r.m.Start(ctx, r.newVM("b", false))
	if err != nil {
		t.Fatal(err)
	}
	if a.Runtime.Template == "" || b.Runtime.Template != a.Runtime.Template || d.saves != 1 {
		t.Fatalf("a from %q, b from %q, %d saves", a.Runtime.Template, b.Runtime.Template, d.saves)
	}
	ts, err := r.m.Templates().Store().List()
	if err != nil || len(ts) != 1 || ts[0].Key.Driver != "firecracker" || ts[0].Files.Memory != templateStateFile+firecracker.MemFileSuffix {
		t.Fatalf("templates: %+v, %v", ts, err)
	}
	for _, s := range d.specs {
		if s.VsockPath == "" || len(s.SerialPorts) != 0 {
			t.Errorf("spec %s: vsock %q, serial ports %+v; want the hybrid vsock only", s.VMID, s.VsockPath, s.SerialPorts)
		}
	}
	if ids := d.sys.identities(); len(ids) != 2 || ids[0].Hostname != "a" || ids[1].Hostname != "b" {
		t.Fatalf("identities applied: %+v", ids)
	}
	c, err := r.m.Agent(b)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Ping(ctx); err != nil {
		t.Fatalf("ping b over vsock with its own token: %v", err)
	}
	// A template whose memory file is gone is no template: the store
	// drops it and the next create makes a new one.
	if err := os.Remove(filepath.Join(ts[0].Dir, ts[0].Files.Memory)); err != nil {
		t.Fatal(err)
	}
	v, err := r.m.Start(ctx, r.newVM("c", false))
	if err != nil {
		t.Fatalf("create after the memory file went: %v", err)
	}
	if v.State != model.StateRunning || v.Runtime.Template == "" || d.saves != 2 {
		t.Fatalf("c: template %q after %d saves", v.Runtime.Template, d.saves)
	}
	if _, err := os.Stat(filepath.Join(ts[0].Dir, ts[0].Files.Memory)); err != nil {
		t.Errorf("the remade template has no memory file: %v", err)
	}
}

// TestTemplateSSHDNeedsReload: a template whose sshd did not serve a new
// key without a reload records so, and its restores make the agent check
// (and reload) sshd again.
func TestTemplateSSHDNeedsReload(t *testing.T) {
	r, d := newTemplateRig(t)
	d.sys.sshdNeedsReload = true
	v, err := r.m.Start(context.Background(), r.newVM("a", false))
	if err != nil || v.Runtime.Template == "" {
		t.Fatalf("start: %v %+v", err, v)
	}
	data, err := os.ReadFile(filepath.Join(r.layout.StateDir, "templates", v.Runtime.Template, templateSSHDFile))
	if err != nil || strings.TrimSpace(string(data)) != `{"keys_per_connection":false}` {
		t.Fatalf("sshd facts %q: %v", data, err)
	}
	if ids := d.sys.identities(); len(ids) != 1 || ids[0].SSHDKeysPerConnection {
		t.Fatalf("restore identities: %+v", ids)
	}
}

// identityGuest answers ApplyIdentity with errs in turn, then succeeds.
type identityGuest struct {
	agent.Client
	errs  []error
	calls int
}

func (g *identityGuest) ApplyIdentity(_ context.Context, id agent.Identity) (agent.IdentityResult, error) {
	g.calls++
	if len(g.errs) > 0 {
		err := g.errs[0]
		g.errs = g.errs[1:]
		return agent.IdentityResult{}, err
	}
	return agent.IdentityResult{Hostname: id.Hostname}, nil
}

// The restore path sends the identity without a ping first: it retries
// while the channel cannot be reached, and stops at once on any other
// error or when the VMM is gone.
func TestApplyWhenUp(t *testing.T) {
	ctx := context.Background()
	unreachable := fmt.Errorf("%w: dial: connection refused", agent.ErrUnavailable)
	g := &identityGuest{errs: []error{unreachable, unreachable}}
	res, err := applyWhenUp(ctx, g, agent.Identity{Hostname: "vm1"}, func() bool { return true })
	if err != nil || res.Hostname != "vm1" || g.calls != 3 {
		t.Errorf("after two unreachable tries: %+v, %v, %d calls; want success on the 3rd", res, err, g.calls)
	}

	refused := errors.New("agent: unauthorized")
	g = &identityGuest{errs: []error{refused}}
	if _, err := applyWhenUp(ctx, g, agent.Identity{}, func() bool { return true }); !errors.Is(err, refused) || g.calls != 1 {
		t.Errorf("a refused identity: %v after %d calls; want it returned at once", err, g.calls)
	}

	g = &identityGuest{errs: []error{unreachable, unreachable}}
	if _, err := applyWhenUp(ctx, g, agent.Identity{}, func() bool { return false }); !errors.Is(err, errVMMExited) || g.calls != 1 {
		t.Errorf("VMM gone: %v after %d calls; want errVMMExited after one", err, g.calls)
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	g = &identityGuest{errs: []error{unreachable, unreachable, unreachable}}
	if _, err := applyWhenUp(cctx, g, agent.Identity{}, func() bool { return true }); !errors.Is(err, context.Canceled) {
		t.Errorf("ctx ended: %v", err)
	}
}
