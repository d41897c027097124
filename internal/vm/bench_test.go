package vm

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/store"
)

// BenchmarkControlPlane creates and starts 100 VMs, 8 at a time, through
// the Manager with the real SQLite store, the copy CoW strategy on a small
// image and the real e2fsprogs steps (work disk, guest config), but a fake
// VMM driver, network and ssh: the control plane's own cost per create.
// It reports creates per second and the process's RSS with 100 running VMs
// recorded (the daemon's footprint: manager, store, caches). With
// BANGER_BENCH_JSON=FILE the figures are also written there as JSON.
//
//	go test -run '^$' -bench ControlPlane -benchtime 1x ./internal/vm
func BenchmarkControlPlane(b *testing.B) {
	const n, parallel = 100, 8
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		r := newRig(b)
		dir := b.TempDir()
		st, err := store.Open(context.Background(), filepath.Join(dir, "banger.db"))
		if err != nil {
			b.Fatal(err)
		}
		r.opts.Store = st
		r.opts.StepHook = nil
		m, err := New(r.opts)
		if err != nil {
			b.Fatal(err)
		}
		var vms []*model.VM
		for j := 0; j < n; j++ {
			vm := &model.VM{ID: fmt.Sprintf("%016x", 0xbe0000+j), Name: fmt.Sprintf("bench-%d", j), State: model.StateStopped,
				Image: "img", Kernel: "k", Driver: "auto", VCPU: 1, MemoryMiB: 256, DiskSizeMiB: 64}
			if err := st.CreateVM(context.Background(), vm); err != nil {
				b.Fatal(err)
			}
			vms = append(vms, vm)
		}
		runtime.GC()
		b.StartTimer()
		start := time.Now()
		sem := make(chan struct{}, parallel)
		var wg sync.WaitGroup
		var mu sync.Mutex
		var firstErr error
		for _, vm := range vms {
			wg.Add(1)
			sem <- struct{}{}
			go func(vm *model.VM) {
				defer wg.Done()
				defer func() { <-sem }()
				if _, err := m.Start(context.Background(), vm); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}(vm)
		}
		wg.Wait()
		took := time.Since(start)
		b.StopTimer()
		if firstErr != nil {
			b.Fatal(firstErr)
		}
		rss, _ := procRSS(os.Getpid())
		rate := float64(n) / took.Seconds()
		b.ReportMetric(rate, "creates/s")
		b.ReportMetric(float64(rss)/(1<<20), "rss-MiB")
		b.Logf("%d creates (%d at a time) in %s: %.1f creates/s; process RSS with %d running VMs: %.1f MiB",
			n, parallel, took.Round(time.Millisecond), rate, n, float64(rss)/(1<<20))
		if out := os.Getenv("BANGER_BENCH_JSON"); out != "" {
			data, _ := json.MarshalIndent(map[string]any{"benchmark": "control_plane", "vms": n, "parallel": parallel,
				"seconds": took.Seconds(), "creates_per_s": rate, "rss_bytes": rss}, "", "  ")
			_ = os.WriteFile(out, data, 0o644)
		}
		_ = m.Close()
		_ = st.Close()
		os.RemoveAll(r.layout.StateDir)
	}
}
