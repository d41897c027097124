package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"
)

// BenchmarkVMStop measures `banger vm stop` on the default image: the fast
// stop (the agent's halt) over BANGER_STOP_CYCLES stop/start cycles
// (default 20), each after writing and syncing a marker in /root that must
// be there after the next start, against the graceful stop (`vm stop
// --timeout 2m`: systemd's poweroff) measured on the same VM in the same
// run. Goal: fast median ≤ 1 s, every marker kept.
//
//	BANGER_E2E=1 go test -run '^$' -bench VMStop -benchtime 1x ./test/e2e
func BenchmarkVMStop(b *testing.B) {
	cycles := 20
	if v, err := strconv.Atoi(os.Getenv("BANGER_STOP_CYCLES")); err == nil && v > 0 {
		cycles = v
	}
	for i := 0; i < b.N; i++ {
		benchVMStop(b, cycles)
	}
}

func benchVMStop(b *testing.B, cycles int) {
	e := newEnv(b, envOptions{TapPool: 1})
	e.must("vm", "create", "--name", "st")
	ip := e.show("st").IP
	var fast, graceful []float64
	kept := 0
	stopOnce := func(i int, args ...string) float64 {
		marker := fmt.Sprintf("m%d-%s", i, randHex(4))
		e.mustSSH(ip, "echo "+marker+" > /root/stop-marker && sync")
		t0 := time.Now()
		e.must(append([]string{"vm", "stop"}, append(args, "st")...)...)
		took := time.Since(t0).Seconds()
		e.must("vm", "start", "st")
		if got := e.mustSSH(ip, "cat /root/stop-marker"); got == marker {
			kept++
		} else {
			b.Errorf("cycle %d: marker %q after stop/start, want %q", i, got, marker)
		}
		return took
	}
	for i := 0; i < 3; i++ {
		graceful = append(graceful, stopOnce(i, "--timeout", "2m"))
	}
	for i := 0; i < cycles; i++ {
		fast = append(fast, stopOnce(i))
	}
	e.must("vm", "delete", "st")

	f, g := median(fast), median(graceful)
	table := fmt.Sprintf("\n%-44s %10s %10s %8s\n", "", "fast", "graceful", "ratio") +
		fmt.Sprintf("%-44s %9.2fs %9.2fs %7.2fx\n", "vm stop (median)", f, g, g/f) +
		fmt.Sprintf("synced data kept: %d/%d stop/start cycles; fast max %.2fs\n", kept, cycles+3, maxOf(fast)) +
		fmt.Sprintf("(fast: %d cycles, graceful: 3; ratio = graceful / fast; goal: fast median <= 1s, every marker kept)", cycles)
	b.Log(table)
	b.ReportMetric(f, "fast-stop-s")
	b.ReportMetric(g/f, "graceful/fast")
	if out := os.Getenv("BANGER_BENCH_JSON"); out != "" {
		data, _ := json.MarshalIndent(map[string]any{"benchmark": "vm_stop", "fast_s": fast, "graceful_s": graceful,
			"median_fast_s": f, "median_graceful_s": g, "kept": kept, "cycles": cycles + 3}, "", "  ")
		if err := os.WriteFile(out, data, 0o644); err != nil {
			b.Error(err)
		}
	}
}

func maxOf(xs []float64) float64 {
	m := 0.0
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}
