package daemon

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/buildinfo"
	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/rpc"
)

// fakeVMs is a Lifecycle and StandbyVMs that only keeps records: Start
// "restores" template tmpl (or cold-boots when tmpl is ""), Claim renames.
type fakeVMs struct {
	d *Daemon

	mu        sync.Mutex
	tmpl      string
	current   bool
	claimErr  error
	started   []string // names given to Start
	destroyed []string
	claimed   []string
	warmed    []string
	// duringWarm, if set, runs inside WarmStandby.
	duringWarm func(vm *model.VM)
}

func (f *fakeVMs) Start(ctx context.Context, vm *model.VM) (*model.VM, error) {
	f.mu.Lock()
	f.started = append(f.started, vm.Name)
	tmpl := f.tmpl
	f.mu.Unlock()
	if vm.Driver == "auto" {
		vm.Driver = "qemu"
	}
	vm.State, vm.Runtime.Template, vm.Runtime.Provisioned = model.StateRunning, tmpl, true
	if vm.Runtime.Cold {
		vm.Runtime.Template = ""
	}
	return vm, f.d.store.UpdateVM(ctx, vm)
}

func (f *fakeVMs) Destroy(ctx context.Context, vm *model.VM) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.destroyed = append(f.destroyed, vm.Name)
	return nil
}

func (f *fakeVMs) Claim(ctx context.Context, vm *model.VM, name string) (*model.VM, error) {
	f.mu.Lock()
	err := f.claimErr
	f.claimed = append(f.claimed, vm.Name+">"+name)
	f.mu.Unlock()
	if err != nil {
		return vm, err
	}
	vm.Name, vm.Runtime.Standby, vm.Runtime.Paused = name, false, false
	return vm, f.d.store.UpdateVM(ctx, vm)
}

func (f *fakeVMs) PauseStandby(ctx context.Context, vm *model.VM) error {
	vm.Runtime.Paused = true
	return f.d.store.UpdateVM(ctx, vm)
}

func (f *fakeVMs) WarmStandby(ctx context.Context, vm *model.VM) {
	f.mu.Lock()
	f.warmed = append(f.warmed, vm.Name)
	hook := f.duringWarm
	f.mu.Unlock()
	if hook != nil {
		hook(vm)
	}
}

func (f *fakeVMs) StandbyCurrent(ctx context.Context, vm *model.VM) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.current && vm.Runtime.Template == f.tmpl
}

func (f *fakeVMs) DefaultDriver() string { return "qemu" }

func (f *fakeVMs) counts() (started, destroyed, claimed, warmed int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.started), len(f.destroyed), len(f.claimed), len(f.warmed)
}

// standbyDaemon is a daemon (not serving) whose lifecycle is a fakeVMs,
// with vm.standby = 1.
func standbyDaemon(t *testing.T) (*Daemon, *fakeVMs) {
	t.Helper()
	layout := testLayout(t)
	cfg := config.Defaults(config.HostInfo{CPUs: 8, MemoryBytes: 16 << 30})
	cfg.VM.Standby = 1
	d, err := New(context.Background(), Options{Layout: layout, Config: cfg, Build: buildinfo.Info{Version: "test"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	f := &fakeVMs{d: d, tmpl: "t1", current: true}
	d.SetLifecycle(f)
	d.standby.vms = f
	return d, f
}

// fill runs one pass of the pool and fails the test on error.
func fill(t *testing.T, d *Daemon) {
	t.Helper()
	if err := d.fillStandby(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// withOneStandby is a standbyDaemon where a create of VM "a" (512 MiB)
// restored a template and the pool then made one standby, returned.
func withOneStandby(t *testing.T) (*Daemon, *fakeVMs, *model.VM) {
	t.Helper()
	d, f := standbyDaemon(t)
	if _, err := d.createVM(context.Background(), api.VMCreateParams{Name: "a", MemoryMiB: 512}, nil); err != nil {
		t.Fatal(err)
	}
	fill(t, d)
	sb := standbys(t, d)
	if len(sb) != 1 {
		t.Fatalf("standbys after a restore: %d, want 1", len(sb))
	}
	return d, f, sb[0]
}

// standbys returns the standby records.
func standbys(t *testing.T, d *Daemon) []*model.VM {
	t.Helper()
	vms, err := d.store.ListVMs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []*model.VM
	for _, vm := range vms {
		if vm.Runtime.Standby {
			out = append(out, vm)
		}
	}
	return out
}

func TestStandbyMadeAfterARestoreAndClaimedByTheNextCreate(t *testing.T) {
	d, f := standbyDaemon(t)
	ctx := context.Background()
	p := api.VMCreateParams{MemoryMiB: 512}

	// Nothing is kept before a create restored a template.
	fill(t, d)
	if sb := standbys(t, d); len(sb) != 0 {
		t.Fatalf("standbys before any create: %d", len(sb))
	}
	// A restore with --no-standby, too, says which shape to keep.
	p.NoStandby = true
	p.Name = "first"
	if _, err := d.createVM(ctx, p, nil); err != nil {
		t.Fatal(err)
	}
	// While it warms up it is not ready: not counted, not claimed.
	var duringReady, duringClaimed bool
	f.duringWarm = func(vm *model.VM) {
		cur, _ := d.store.GetVM(ctx, vm.ID)
		duringReady = d.standby.ready(cur)
		_, duringClaimed = d.claimStandby(ctx, api.VMCreateParams{Name: "early", MemoryMiB: 512}, nil)
	}
	fill(t, d)
	f.duringWarm = nil
	if duringReady || duringClaimed {
		t.Errorf("a standby warming up was ready=%v claimed=%v", duringReady, duringClaimed)
	}
	sb := standbys(t, d)
	if len(sb) != 1 || sb[0].State != model.StateRunning || !strings.HasPrefix(sb[0].Name, "standby-") || !sb[0].Runtime.Paused {
		t.Fatalf("standbys after a restore (want one, running, paused): %+v", sb)
	}
	if _, _, _, warmed := f.counts(); warmed != 1 {
		t.Errorf("warm-ups: %d, want 1", warmed)
	}

	// Hidden from users: list, show, delete, prune.
	list, err := d.vmList(ctx, api.VMListParams{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.VMs) != 1 || list.VMs[0].Name != "first" {
		t.Errorf("vm list shows %d VMs, want only first", len(list.VMs))
	}
	if all, err := d.vmList(ctx, api.VMListParams{Standby: true}); err != nil || len(all.VMs) != 2 {
		t.Errorf("vm list with standbys: %v %v", all, err)
	}
	if _, err := d.resolveRef(ctx, sb[0].Name); rpc.CodeOf(err) != rpc.CodeNotFound {
		t.Errorf("resolving a standby by name: %v, want not found", err)
	}
	if _, err := d.resolveRef(ctx, sb[0].ID); rpc.CodeOf(err) != rpc.CodeNotFound {
		t.Errorf("resolving a standby by id: %v, want not found", err)
	}
	if res, err := d.vmPrune(ctx, api.VMPruneParams{}); err != nil || len(res.Deleted)+len(res.Failed) != 0 {
		t.Errorf("prune touched a standby: %+v %v", res, err)
	}

	// The next create of the same shape claims it: same VM, new name, no
	// start.
	startedBefore, _, _, _ := f.counts()
	p.Name, p.NoStandby = "second", false
	vm, err := d.createVM(ctx, p, nil)
	if err != nil {
		t.Fatal(err)
	}
	if vm.ID != sb[0].ID || vm.Name != "second" || vm.Runtime.Standby {
		t.Fatalf("create did not claim the standby: got %s/%s standby=%v, standby was %s", vm.ID, vm.Name, vm.Runtime.Standby, sb[0].ID)
	}
	if started, _, _, _ := f.counts(); started != startedBefore {
		t.Errorf("a claim started a VM (%d starts, want %d)", started, startedBefore)
	}
	if got, err := d.resolveRef(ctx, "second"); err != nil || got.ID != vm.ID {
		t.Errorf("claimed VM by name: %v %v", got, err)
	}
	// Refill.
	fill(t, d)
	if sb2 := standbys(t, d); len(sb2) != 1 || sb2[0].ID == vm.ID {
		t.Fatalf("refill: %+v", sb2)
	}
}

func TestStandbyNotClaimedByOtherShapesOrOptOuts(t *testing.T) {
	d, f, sb := withOneStandby(t)
	ctx := context.Background()
	for i, p := range []api.VMCreateParams{
		{MemoryMiB: 1024},
		{MemoryMiB: 512, VCPU: 3},
		{MemoryMiB: 512, NAT: true},
		{MemoryMiB: 512, Cold: true},
		{MemoryMiB: 512, NoStandby: true},
		{MemoryMiB: 512, Ports: []model.PortForward{mustPort(t, "18080:80")}},
		{MemoryMiB: 512, DiskSizeMiB: 4096},
	} {
		p.Name = "other" + string(rune('a'+i))
		vm, err := d.createVM(ctx, p, nil)
		if err != nil {
			t.Fatalf("%+v: %v", p, err)
		}
		if vm.ID == sb.ID {
			t.Fatalf("create %+v claimed the standby", p)
		}
	}
	if _, _, claimed, _ := f.counts(); claimed != 0 {
		t.Errorf("claims: %d", claimed)
	}
	// An E2B sandbox of the shape claims it, and the record carries the
	// sandbox.
	vm, err := d.createVM(ctx, api.VMCreateParams{MemoryMiB: 512}, &model.Sandbox{KeyID: "x", Template: "base"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := d.store.GetVM(ctx, vm.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != sb.ID || got.Sandbox == nil || got.Sandbox.KeyID != "x" || got.Runtime.Standby {
		t.Fatalf("a sandbox create did not claim the standby as a sandbox: %+v", got)
	}
}

func TestStandbyDroppedWhenStaleFailingOrUnwanted(t *testing.T) {
	d, f, old := withOneStandby(t)
	ctx := context.Background()
	p := api.VMCreateParams{MemoryMiB: 512}

	// A new template (image changed): the old standby is not claimed and
	// the pool replaces it.
	f.mu.Lock()
	f.tmpl = "t2"
	f.mu.Unlock()
	p.Name = "b"
	vm, err := d.createVM(ctx, p, nil)
	if err != nil {
		t.Fatal(err)
	}
	if vm.ID == old.ID {
		t.Fatal("a stale standby was claimed")
	}
	fill(t, d)
	sb := standbys(t, d)
	if len(sb) != 1 || sb[0].ID == old.ID || sb[0].Runtime.Template != "t2" {
		t.Fatalf("after a template change: %+v", sb)
	}

	// A claim that fails destroys the standby and the create restores.
	f.mu.Lock()
	f.claimErr = errors.New("agent gone")
	f.mu.Unlock()
	p.Name = "c"
	vm, err = d.createVM(ctx, p, nil)
	if err != nil {
		t.Fatal(err)
	}
	if vm.ID == sb[0].ID || vm.Name != "c" || vm.State != model.StateRunning {
		t.Fatalf("create after a failed claim: %+v", vm)
	}
	if _, err := d.store.GetVM(ctx, sb[0].ID); !errors.Is(err, model.ErrNotFound) {
		t.Errorf("the standby that failed its claim still exists: %v", err)
	}
	f.mu.Lock()
	f.claimErr = nil
	f.mu.Unlock()

	// Deleting the image drops standbys that use it (they never keep it
	// in use).
	fill(t, d)
	if len(standbys(t, d)) != 1 {
		t.Fatal("no standby to drop")
	}
	users, err := d.vmsUsing(ctx, func(vm *model.VM) bool { return true })
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range users {
		if strings.HasPrefix(u, "standby-") {
			t.Errorf("vmsUsing reports standby %s", u)
		}
	}
	if sb := standbys(t, d); len(sb) != 0 {
		t.Errorf("standbys after vmsUsing matched them: %d", len(sb))
	}

	// vm.standby = 0 drops them all.
	fill(t, d)
	d.cfg.VM.Standby = 0
	fill(t, d)
	if sb := standbys(t, d); len(sb) != 0 {
		t.Errorf("standbys with vm.standby = 0: %d", len(sb))
	}
}

func TestStandbyNotKeptWhenTheRestoreColdBoots(t *testing.T) {
	d, f := standbyDaemon(t)
	ctx := context.Background()
	if _, err := d.createVM(ctx, api.VMCreateParams{Name: "a", MemoryMiB: 512}, nil); err != nil {
		t.Fatal(err)
	}
	// The template stops restoring: the standby cold-boots, which is no
	// standby at all.
	f.mu.Lock()
	f.tmpl = ""
	f.mu.Unlock()
	if err := d.fillStandby(ctx); err == nil {
		t.Fatal("fill succeeded with a standby that cold-booted")
	}
	if sb := standbys(t, d); len(sb) != 0 {
		t.Fatalf("a cold-booted standby was kept: %+v", sb)
	}
	if _, ok := d.standby.wanted(); ok {
		t.Error("the pool keeps trying a shape whose restore failed")
	}
}

func TestStandbyDroppedWhenTheDaemonStops(t *testing.T) {
	d, _, _ := withOneStandby(t)
	ctx := context.Background()
	d.dropStandbys(ctx)
	if sb := standbys(t, d); len(sb) != 0 {
		t.Errorf("standbys after the daemon stopped: %d", len(sb))
	}
	if _, err := d.resolveRef(ctx, "a"); err != nil {
		t.Errorf("the user's VM went with the standbys: %v", err)
	}
}

func mustPort(t *testing.T, spec string) model.PortForward {
	t.Helper()
	p, err := model.ParsePortForward(spec)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
