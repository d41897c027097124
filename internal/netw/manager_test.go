package netw

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/privops"
)

// fakeOps is an in-memory privops.Ops for the network calls.
type fakeOps struct {
	privops.Ops // other methods panic if called

	mu         sync.Mutex
	bridge     string
	taps       map[string]privops.TapSpec
	created    int
	failCreate int // fail this many CreateTap calls
	nat        map[string]privops.VMNetSpec
}

func newFakeOps() *fakeOps {
	return &fakeOps{taps: map[string]privops.TapSpec{}, nat: map[string]privops.VMNetSpec{}}
}

func (f *fakeOps) EnsureBridge(ctx context.Context, spec privops.BridgeSpec) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.bridge = spec.Name
	return nil
}

func (f *fakeOps) DeleteBridge(ctx context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for n, s := range f.taps {
		if s.Bridge == name {
			return fmt.Errorf("tap %s still attached", n)
		}
	}
	f.bridge = ""
	return nil
}

func (f *fakeOps) CreateTap(ctx context.Context, spec privops.TapSpec) error {
	if err := privops.ValidateTapSpec(spec); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failCreate > 0 {
		f.failCreate--
		return errors.New("injected failure")
	}
	if f.bridge != spec.Bridge {
		return fmt.Errorf("no bridge %s", spec.Bridge)
	}
	f.taps[spec.Name] = spec
	f.created++
	return nil
}

func (f *fakeOps) DeleteTap(ctx context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.taps, name)
	return nil
}

func (f *fakeOps) EnsureVMNet(ctx context.Context, spec privops.VMNetSpec) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nat[spec.VMIP] = spec
	return nil
}

func (f *fakeOps) ClearVMNet(ctx context.Context, spec privops.VMNetSpec) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.nat, spec.VMIP)
	return nil
}

func (f *fakeOps) SetResolverRouting(ctx context.Context, spec privops.ResolverSpec) error {
	return fmt.Errorf("resolver: %w", privops.ErrNotSupported)
}

func (f *fakeOps) SignalVMM(context.Context, privops.ProcessIdentity, syscall.Signal) error {
	panic("not a network op")
}

func (f *fakeOps) tapNames() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var names []string
	for n := range f.taps {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// bridgedManager returns a Manager over ops with its bridge ensured (which
// starts the pool filler); it is closed when the test ends.
func bridgedManager(t *testing.T, ops *fakeOps, cfg Config) *Manager {
	t.Helper()
	m, err := NewManager(ops, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	if err := m.EnsureBridge(context.Background()); err != nil {
		t.Fatal(err)
	}
	return m
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestPoolFillAcquireRelease(t *testing.T) {
	ops := newFakeOps()
	m := bridgedManager(t, ops, Config{TapPoolSize: 3, TapOwner: 1000, TapGroup: -1})
	ctx := context.Background()
	if err := m.EnsureBridge(ctx); err != nil { // idempotent, one filler
		t.Fatal(err)
	}
	waitFor(t, "pool of 3", func() bool { return len(m.IdleTaps()) == 3 })
	idle := m.IdleTaps()
	for _, n := range idle {
		if !IsPoolTap("bgtap", n) || len(n) != 15 {
			t.Fatalf("pool tap name %q", n)
		}
		if s := ops.taps[n]; s.Owner != 1000 || s.Group != -1 || s.Bridge != "br-banger" {
			t.Fatalf("pool tap spec %+v", s)
		}
	}

	got, err := m.AcquireTap(ctx, "vm-a")
	if err != nil {
		t.Fatal(err)
	}
	if got != idle[0] {
		t.Fatalf("AcquireTap = %s, want the oldest idle tap %s", got, idle[0])
	}
	waitFor(t, "refill", func() bool { return len(m.IdleTaps()) == 3 })
	if slices.Contains(m.IdleTaps(), got) {
		t.Fatal("handed-out tap still idle")
	}

	if err := m.ReleaseTap(ctx, got); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(ops.tapNames(), got) {
		t.Fatal("released tap not deleted")
	}
	if err := m.ReleaseTap(ctx, got); err != nil {
		t.Fatalf("second release: %v", err)
	}

	held, err := m.AcquireTap(ctx, "vm-b")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "refill", func() bool { return len(m.IdleTaps()) == 3 })
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if names := ops.tapNames(); !slices.Equal(names, []string{held}) {
		t.Fatalf("after Close taps = %v, want only the held %s", names, held)
	}
	if _, err := m.AcquireTap(ctx, "vm-c"); !errors.Is(err, ErrClosed) {
		t.Fatalf("AcquireTap after Close: %v", err)
	}
	if err := m.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestNoPoolUsesDeterministicName(t *testing.T) {
	ops := newFakeOps()
	m := bridgedManager(t, ops, Config{TapPoolSize: 0})
	ctx := context.Background()
	got, err := m.AcquireTap(ctx, "vm-a")
	if err != nil {
		t.Fatal(err)
	}
	if got != TapName("vm-a") {
		t.Fatalf("AcquireTap = %s, want %s", got, TapName("vm-a"))
	}
	time.Sleep(20 * time.Millisecond)
	if names := ops.tapNames(); !slices.Equal(names, []string{got}) {
		t.Fatalf("taps = %v: pool size 0 must not create pool taps", names)
	}
}

func TestPoolRetriesAfterFailures(t *testing.T) {
	ops := newFakeOps()
	ops.failCreate = 2
	start := time.Now()
	m := bridgedManager(t, ops, Config{TapPoolSize: 1})
	waitFor(t, "pool after failures", func() bool { return len(m.IdleTaps()) == 1 })
	if d := time.Since(start); d < 250*time.Millisecond+500*time.Millisecond-50*time.Millisecond {
		t.Fatalf("filled in %v: expected exponential backoff (250ms + 500ms)", d)
	}
}

func TestConcurrentAcquireDistinct(t *testing.T) {
	ops := newFakeOps()
	m := bridgedManager(t, ops, Config{TapPoolSize: 4})
	ctx := context.Background()
	waitFor(t, "pool", func() bool { return len(m.IdleTaps()) == 4 })
	var wg sync.WaitGroup
	names := make([]string, 20)
	errs := make([]error, 20)
	for i := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			names[i], errs[i] = m.AcquireTap(ctx, fmt.Sprintf("vm-%d", i))
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for i, n := range names {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if seen[n] {
			t.Fatalf("tap %s handed out twice", n)
		}
		seen[n] = true
	}
}

func TestReclaim(t *testing.T) {
	ops := newFakeOps()
	m := bridgedManager(t, ops, Config{TapPoolSize: 1})
	ctx := context.Background()
	waitFor(t, "pool", func() bool { return len(m.IdleTaps()) == 1 })
	held, _ := m.AcquireTap(ctx, "vm-a")
	waitFor(t, "pool", func() bool { return len(m.IdleTaps()) == 1 })
	for _, stale := range []string{"bgtapstale1", "bgtapp00000001"} {
		if err := ops.CreateTap(ctx, privops.TapSpec{Name: stale, Bridge: "br-banger"}); err != nil {
			t.Fatal(err)
		}
	}
	m.listTaps = func(prefix string) ([]string, error) { return ops.tapNames(), nil }
	deleted, err := m.Reclaim(ctx, func(tap string) bool { return tap == held })
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(deleted)
	if !slices.Equal(deleted, []string{"bgtapp00000001", "bgtapstale1"}) {
		t.Fatalf("deleted %v", deleted)
	}
	want := append([]string{held}, m.IdleTaps()...)
	sort.Strings(want)
	if got := ops.tapNames(); !slices.Equal(got, want) {
		t.Fatalf("taps %v, want %v", got, want)
	}
}

func TestNATAndResolverSpecs(t *testing.T) {
	ops := newFakeOps()
	m, err := NewManager(ops, Config{Bridge: "br0", Uplink: "eth0"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ip := netip.MustParseAddr("172.30.0.9")
	if got := m.Config().BridgeSpec(); got.Uplink != "eth0" {
		t.Fatalf("bridge spec %+v lacks the uplink", got)
	}
	v := VMNet{IP: ip, MAC: MACFor(ip), Tap: "bgtapx", NAT: true, AllowLAN: true}
	if err := m.ApplyVMNet(ctx, v); err != nil {
		t.Fatal(err)
	}
	if got := ops.nat["172.30.0.9"]; got != (privops.VMNetSpec{VMIP: "172.30.0.9", MAC: "02:ba:ac:1e:00:09", Tap: "bgtapx", Bridge: "br0", NAT: true, AllowLAN: true}) {
		t.Fatalf("VM net spec %+v", got)
	}
	if err := m.ClearVMNet(ctx, v); err != nil || len(ops.nat) != 0 {
		t.Fatalf("DisableNAT: %v, %v", err, ops.nat)
	}
	if err := m.RouteDNS(ctx, "127.0.0.1:5353", "vm", true); !errors.Is(err, privops.ErrNotSupported) {
		t.Fatalf("RouteDNS err = %v", err)
	}
}
