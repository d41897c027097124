package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/rpc"

	"github.com/bangerdev/banger/internal/testguest"
	"github.com/bangerdev/banger/internal/vm"
	"github.com/bangerdev/banger/internal/vmm"
	"github.com/bangerdev/banger/internal/vmm/qemu"
)

// BenchmarkCreateVsBareQEMU measures time-to-ssh through banger against the
// same kernel, image and disks booted by a bare QEMU command line, in the
// same run and the same network namespace:
//
//   - create: `banger vm create` until it returns (the guest answered ssh);
//     the guest's first boot, including banger's disk and config steps;
//   - start: `banger vm start` of the stopped VM (a later boot);
//   - bare: qemu-system-x86_64 launched directly with the argv banger's
//     driver builds (qemu.Args) on the stopped VM's disks and a tap made by
//     hand, until a `ssh true` from the netns succeeds (the same later boot,
//     nothing of banger involved).
//
// The ratio start/bare is banger's overhead on a boot (goal ≤ 1.05).
// Rounds: BANGER_BENCH_ROUNDS (default 2). A table is logged and, with
// BANGER_BENCH_JSON=FILE, JSON is written there. Run it with
//
//	BANGER_E2E=1 go test -run '^$' -bench CreateVsBareQEMU -benchtime 1x ./test/e2e
func BenchmarkCreateVsBareQEMU(b *testing.B) {
	rounds := 2
	if v, err := strconv.Atoi(os.Getenv("BANGER_BENCH_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	for i := 0; i < b.N; i++ {
		benchCreateVsBare(b, rounds)
	}
}

type bootTimes struct {
	Create []float64 `json:"create_s"`
	Start  []float64 `json:"start_s"`
	Bare   []float64 `json:"bare_qemu_s"`
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func benchCreateVsBare(b *testing.B, rounds int) {
	e := newEnv(b, envOptions{TapPool: 2})
	k := testguest.Kernel(b)
	var bt bootTimes
	for r := 0; r < rounds; r++ {
		name := fmt.Sprintf("bench%d", r)
		t0 := time.Now()
		e.must("vm", "create", "--name", name)
		bt.Create = append(bt.Create, time.Since(t0).Seconds())
		e.must("vm", "stop", name)
		t0 = time.Now()
		e.must("vm", "start", name)
		bt.Start = append(bt.Start, time.Since(t0).Seconds())
		e.must("vm", "stop", name)
		bt.Bare = append(bt.Bare, e.bareBoot(name, k).Seconds())
		e.must("vm", "delete", name)
	}
	c, s, bb := median(bt.Create), median(bt.Start), median(bt.Bare)
	b.Logf("\n%-28s %8s %8s %8s\n%-28s %8.2f %8.2f %8.2f\n%-28s %8.3f\n%-28s %8.3f",
		"time to ssh (median s)", "create", "start", "bare", "", c, s, bb, "ratio start/bare", s/bb, "ratio create/bare", c/bb)
	b.ReportMetric(s/bb, "start/bare")
	b.ReportMetric(c/bb, "create/bare")
	b.ReportMetric(bb, "bare-s")
	if out := os.Getenv("BANGER_BENCH_JSON"); out != "" {
		data, _ := json.MarshalIndent(map[string]any{
			"benchmark": "create_vs_bare_qemu", "rounds": rounds, "samples": bt,
			"median_create_s": c, "median_start_s": s, "median_bare_s": bb,
			"ratio_start_bare": s / bb, "ratio_create_bare": c / bb,
		}, "", "  ")
		if err := os.WriteFile(out, data, 0o644); err != nil {
			b.Error(err)
		}
	}
}

// bareBoot boots the stopped VM's disks with a bare QEMU (no banger) on a
// tap made by hand, and returns the time until `ssh true` succeeds.
func (e *env) bareBoot(name string, k *testguest.Artifacts) time.Duration {
	t := e.t
	t.Helper()
	v := e.show(name)
	// Not "bgtap*": banger's anti-spoofing drops frames from a tap of that
	// name that it did not bind to a VM's MAC and address.
	tap := "bgbare" + randHex(2)
	run(t, "ip", "-n", e.ns, "tuntap", "add", "dev", tap, "mode", "tap")
	defer func() { _ = exec.Command("ip", "-n", e.ns, "link", "del", tap).Run() }()
	run(t, "ip", "-n", e.ns, "link", "set", tap, "master", "br-banger", "up")
	dir, err := os.MkdirTemp("", "bgbare-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	spec := vmm.Spec{VMID: v.ID, Name: v.Name, RuntimeDir: dir, Kernel: k.Vmlinuz, Initrd: k.Initrd, Cmdline: vm.BaseKernelArgs,
		VCPU: v.VCPU, MemoryMiB: v.MemoryMiB, LogPath: filepath.Join(dir, "console.log"),
		Drives: []vmm.Drive{{ID: "root", Path: v.Runtime.RootDisk, Root: true}, {ID: "work", Path: v.Runtime.WorkDisk}},
		Net:    []vmm.NetIface{{Tap: tap, MAC: v.MAC}}}
	khz, _, _ := qemu.HostTSCKHz()
	argv := qemu.Args("qemu-system-x86_64", spec, qemu.MachineMicrovm, qemu.AccelTCG, khz)
	start := time.Now()
	cmd := exec.Command("ip", append([]string{"netns", "exec", e.ns}, argv...)...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	deadline := start.Add(5 * time.Minute)
	for {
		args := append([]string{"netns", "exec", e.ns, "ssh"}, e.sshArgs()...)
		args = append(args, "-o", "ConnectTimeout=2", "root@"+v.IP, "true")
		if exec.Command("ip", args...).Run() == nil {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(spec.LogPath)
			t.Fatalf("bare qemu: no ssh after 5 minutes\n%s", tail(string(log), 3000))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// BenchmarkDaemonRecords measures the real bangerd: 100 `vm.create
// --no-start` calls over its socket, 8 at a time (creates per second of the
// record path: validation, name lock, store), then the daemon's RSS with
// 100 VMs recorded.
//
//	BANGER_E2E=1 go test -run '^$' -bench DaemonRecords -benchtime 1x ./test/e2e
func BenchmarkDaemonRecords(b *testing.B) {
	for i := 0; i < b.N; i++ {
		e := newEnv(b, envOptions{})
		c := rpc.NewClient(e.layout.DaemonSocket())
		const n, parallel = 100, 8
		sem := make(chan struct{}, parallel)
		var wg sync.WaitGroup
		errs := make(chan error, n)
		start := time.Now()
		for j := 0; j < n; j++ {
			wg.Add(1)
			sem <- struct{}{}
			go func(j int) {
				defer wg.Done()
				defer func() { <-sem }()
				var v model.VM
				errs <- c.Call(context.Background(), api.MethodVMCreate, api.VMCreateParams{Name: fmt.Sprintf("r%d", j), NoStart: true}, &v)
			}(j)
		}
		wg.Wait()
		took := time.Since(start)
		close(errs)
		for err := range errs {
			if err != nil {
				b.Fatal(err)
			}
		}
		status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", e.daemonPID()))
		var rss int64
		for _, l := range strings.Split(string(status), "\n") {
			if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
				fmt.Sscan(strings.TrimSpace(v), &rss)
			}
		}
		rate := float64(n) / took.Seconds()
		b.ReportMetric(rate, "creates/s")
		b.ReportMetric(float64(rss)/1024, "daemon-rss-MiB")
		b.Logf("%d record creates (%d at a time) in %s: %.0f/s; bangerd RSS with %d VMs: %.1f MiB", n, parallel,
			took.Round(time.Millisecond), rate, n, float64(rss)/1024)
	}
}
