package store

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/bangerdev/banger/internal/model"
)

var (
	rangeFirst = netip.MustParseAddr("172.30.0.2")
	rangeLast  = netip.MustParseAddr("172.30.0.254")
)

func TestAllocateLeaseLowestAndIdempotent(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	a, err := s.AllocateLease(ctx, "vm-a", rangeFirst, rangeLast)
	if err != nil || a != rangeFirst {
		t.Fatalf("first lease = %v, %v; want %v", a, err, rangeFirst)
	}
	b, _ := s.AllocateLease(ctx, "vm-b", rangeFirst, rangeLast)
	c, _ := s.AllocateLease(ctx, "vm-c", rangeFirst, rangeLast)
	if b.String() != "172.30.0.3" || c.String() != "172.30.0.4" {
		t.Fatalf("leases b=%v c=%v", b, c)
	}
	again, err := s.AllocateLease(ctx, "vm-b", rangeFirst, rangeLast)
	if err != nil || again != b {
		t.Fatalf("repeat allocation for vm-b = %v, %v; want %v", again, err, b)
	}
	// Release then reuse: the lowest free address is handed out next.
	if err := s.ReleaseLease(ctx, "vm-b"); err != nil {
		t.Fatal(err)
	}
	if err := s.ReleaseLease(ctx, "vm-b"); err != nil {
		t.Fatalf("second release: %v", err)
	}
	d, _ := s.AllocateLease(ctx, "vm-d", rangeFirst, rangeLast)
	if d != b {
		t.Fatalf("after release got %v, want reused %v", d, b)
	}
	e, _ := s.AllocateLease(ctx, "vm-e", rangeFirst, rangeLast)
	if e.String() != "172.30.0.5" {
		t.Fatalf("next lease %v, want 172.30.0.5", e)
	}
	leases, err := s.ListLeases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range leases {
		got = append(got, l.IP+"="+l.VMID)
		if l.CreatedAt.IsZero() {
			t.Errorf("lease %s has no creation time", l.IP)
		}
	}
	if want := "[172.30.0.2=vm-a 172.30.0.3=vm-d 172.30.0.4=vm-c 172.30.0.5=vm-e]"; fmt.Sprint(got) != want {
		t.Fatalf("ListLeases = %v, want %s", got, want)
	}
}

func TestAllocateLeaseOrdersNumerically(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	first, last := netip.MustParseAddr("10.0.0.8"), netip.MustParseAddr("10.0.0.12")
	for i := 0; i < 5; i++ {
		if _, err := s.AllocateLease(ctx, fmt.Sprintf("vm-%d", i), first, last); err != nil {
			t.Fatal(err)
		}
	}
	leases, _ := s.ListLeases(ctx)
	var got []string
	for _, l := range leases {
		got = append(got, l.IP)
	}
	// Text order would put 10.0.0.10 before 10.0.0.8.
	if want := "[10.0.0.8 10.0.0.9 10.0.0.10 10.0.0.11 10.0.0.12]"; fmt.Sprint(got) != want {
		t.Fatalf("leases %v, want %s", got, want)
	}
}

func TestAllocateLeaseExhaustion(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	first, last := netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("10.1.0.4")
	for i := 0; i < 3; i++ {
		if _, err := s.AllocateLease(ctx, fmt.Sprintf("vm-%d", i), first, last); err != nil {
			t.Fatal(err)
		}
	}
	_, err := s.AllocateLease(ctx, "vm-full", first, last)
	if !errors.Is(err, model.ErrExhausted) {
		t.Fatalf("allocation in a full range = %v, want ErrExhausted", err)
	}
	// Existing holders still get their address.
	if a, err := s.AllocateLease(ctx, "vm-1", first, last); err != nil || a.String() != "10.1.0.3" {
		t.Fatalf("existing holder = %v, %v", a, err)
	}
	// A single-address range works.
	if a, err := s.AllocateLease(ctx, "vm-one", netip.MustParseAddr("10.2.0.9"), netip.MustParseAddr("10.2.0.9")); err != nil || a.String() != "10.2.0.9" {
		t.Fatalf("single-address range = %v, %v", a, err)
	}
}

func TestAllocateLeaseOutOfRangeIsReplaced(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	old, _ := s.AllocateLease(ctx, "vm-a", rangeFirst, rangeLast)
	nf, nl := netip.MustParseAddr("192.168.50.2"), netip.MustParseAddr("192.168.50.10")
	a, err := s.AllocateLease(ctx, "vm-a", nf, nl)
	if err != nil || a != nf {
		t.Fatalf("after network change = %v, %v; want %v", a, err, nf)
	}
	leases, _ := s.ListLeases(ctx)
	if len(leases) != 1 || leases[0].IP == old.String() {
		t.Fatalf("old lease %v not replaced: %+v", old, leases)
	}
}

func TestAllocateLeaseBadArgs(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	v6 := netip.MustParseAddr("fd00::1")
	for _, c := range []struct {
		id          string
		first, last netip.Addr
	}{
		{"", rangeFirst, rangeLast},
		{"x", netip.Addr{}, rangeLast},
		{"x", rangeLast, rangeFirst},
		{"x", rangeFirst, v6},
	} {
		if _, err := s.AllocateLease(ctx, c.id, c.first, c.last); err == nil {
			t.Errorf("AllocateLease(%q, %v, %v) accepted", c.id, c.first, c.last)
		}
	}
}

func TestAllocateLeaseConcurrent(t *testing.T) {
	ctx := context.Background()
	s, path := openTemp(t)
	// A second Store on the same file stands in for another process.
	s2, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()

	const n = 100
	addrs := make([]netip.Addr, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := s
			if i%2 == 1 {
				st = s2
			}
			addrs[i], errs[i] = st.AllocateLease(ctx, fmt.Sprintf("vm-%03d", i), rangeFirst, rangeLast)
		}()
	}
	wg.Wait()
	seen := map[netip.Addr]int{}
	for i := 0; i < n; i++ {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		if j, dup := seen[addrs[i]]; dup {
			t.Fatalf("address %v handed to callers %d and %d", addrs[i], j, i)
		}
		seen[addrs[i]] = i
	}
	// Lowest-free allocation with no releases fills exactly the first n.
	ip := rangeFirst
	for i := 0; i < n; i++ {
		if _, ok := seen[ip]; !ok {
			t.Fatalf("address %v not allocated; allocations are not dense", ip)
		}
		ip = ip.Next()
	}
	leases, _ := s.ListLeases(ctx)
	if len(leases) != n {
		t.Fatalf("%d leases stored, want %d", len(leases), n)
	}
}

func TestDeleteVMReleasesLease(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	vm := testVM("leasy", "7777aaaa")
	if err := s.CreateVM(ctx, vm); err != nil {
		t.Fatal(err)
	}
	ip, err := s.AllocateLease(ctx, vm.ID, rangeFirst, rangeLast)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := s.AllocateLease(ctx, "other", rangeFirst, rangeLast)
	if err := s.DeleteVM(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	leases, _ := s.ListLeases(ctx)
	if len(leases) != 1 || leases[0].VMID != "other" || leases[0].IP != other.String() {
		t.Fatalf("leases after DeleteVM = %+v", leases)
	}
	if next, _ := s.AllocateLease(ctx, "new", rangeFirst, rangeLast); next != ip {
		t.Fatalf("freed address %v not reused (got %v)", ip, next)
	}
	// An orphan lease (no VM record) is released by DeleteVM too.
	if err := s.DeleteVM(ctx, "new"); !errors.Is(err, model.ErrNotFound) {
		t.Fatalf("DeleteVM(no record) = %v", err)
	}
	leases, _ = s.ListLeases(ctx)
	if len(leases) != 1 {
		t.Fatalf("orphan lease kept: %+v", leases)
	}
}
