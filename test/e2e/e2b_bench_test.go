package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/e2b/sdktest"
)

// sdkBenchScript creates a sandbox, runs `true` once (the time to first
// command), then N more times (commands/s on one sandbox), and kills it.
// Times are taken inside Node, so its start-up is not counted.
const sdkBenchScript = `import { Sandbox } from 'e2b'
const n = Number(process.env.BENCH_N ?? '50')
const t0 = performance.now()
const sb = await Sandbox.create('base', { timeoutMs: 10 * 60_000 })
await sb.commands.run('true')
const first = (performance.now() - t0) / 1000
const t1 = performance.now()
for (let i = 0; i < n; i++) await sb.commands.run('true')
const loop = (performance.now() - t1) / 1000
await sb.kill()
console.log(JSON.stringify({ first, perSecond: n / loop }))
`

// BenchmarkE2BSDK measures the e2b SDK against `banger e2b serve`, with a
// baseline from the same run on the same image and netns:
//
//   - create → first command: SDK Sandbox.create() until its first
//     commands.run('true') completed, versus `banger vm run --rm -- true`
//     (goal ≤ 1.1×);
//   - commands/s: sequential commands.run('true') on one sandbox.
//
// Rounds: BANGER_BENCH_ROUNDS (default 2). JSON goes to BANGER_BENCH_JSON.
//
//	BANGER_E2E=1 go test -run '^$' -bench E2BSDK -benchtime 1x ./test/e2e
func BenchmarkE2BSDK(b *testing.B) {
	rounds := 2
	if v, err := strconv.Atoi(os.Getenv("BANGER_BENCH_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	for i := 0; i < b.N; i++ {
		benchE2BSDK(b, rounds)
	}
}

func benchE2BSDK(b *testing.B, rounds int) {
	sdktest.Install(b)
	e := newEnv(b, envOptions{TapPool: 2})
	key := lastLine(e.must("e2b", "key", "create", "--name", "bench"))
	url, _ := e.startE2B()
	env := sdktest.Env(url, key)
	script := sdktest.Script(b, "bench.mjs", []byte(sdkBenchScript))
	wrap := []string{"ip", "netns", "exec", e.ns}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()

	e.must("vm", "run", "--rm", "--", "true") // warm the image and page cache
	var first, perSec, runTrue []float64
	for i := 0; i < rounds; i++ {
		t0 := time.Now()
		e.must("vm", "run", "--rm", "--", "true")
		runTrue = append(runTrue, time.Since(t0).Seconds())
		var r struct {
			First     float64 `json:"first"`
			PerSecond float64 `json:"perSecond"`
		}
		out := sdktest.RunNode(b, ctx, script, env, wrap...)
		if err := json.Unmarshal([]byte(lastLine(out)), &r); err != nil {
			b.Fatalf("bench script output %q: %v", out, err)
		}
		first, perSec = append(first, r.First), append(perSec, r.PerSecond)
	}
	f, base, cps := median(first), median(runTrue), median(perSec)
	b.Log("\n" + strings.Join([]string{
		fmt.Sprintf("%-52s %9s %9s %8s", "", "sdk", "baseline", "ratio"),
		fmt.Sprintf("%-52s %8.2fs %8.2fs %7.3fx", "Sandbox.create → first commands.run vs vm run --rm", f, base, f/base),
		fmt.Sprintf("%-52s %9.1f", "commands.run('true') per second, one sandbox", cps),
		fmt.Sprintf("(medians of %d rounds; goal: ratio ≤ 1.10)", rounds),
	}, "\n"))
	b.ReportMetric(f/base, "sdk/vm-run")
	b.ReportMetric(cps, "commands/s")
	if out := os.Getenv("BANGER_BENCH_JSON"); out != "" {
		data, _ := json.MarshalIndent(map[string]any{"benchmark": "e2b_sdk", "rounds": rounds,
			"sdk_create_first_command_s": first, "vm_run_true_s": runTrue, "commands_per_second": perSec,
			"median_ratio_sdk_vm_run": f / base, "median_commands_per_second": cps}, "", "  ")
		if err := os.WriteFile(out, data, 0o644); err != nil {
			b.Error(err)
		}
	}
}
