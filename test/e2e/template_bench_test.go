package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkVMRunTemplate measures `banger vm run --rm REPO -- true`
// started from the image's template against the same command with --cold
// (a full boot), in one run, on the same image, kernel and netns. Goal:
// cold/template ≥ 8×. "template" is the default path: the create claims
// the standby VM the daemon keeps restored ahead of need (vm.standby = 1,
// the default). It also measures --no-standby (the create restores the
// template itself) and that restore with the command over ssh
// (BANGER_EXEC_VIA=ssh: the CLI's own ssh connection, as before vm.exec),
// and prints the template's creation time (`image warm`) and its size on
// disk. Each round runs the standby case after a cold run, so the pool
// has refilled (a refill waits for the daemon to be idle, then takes
// about 2 s here); back-to-back runs faster than that restore instead.
//
// Rounds: BANGER_BENCH_ROUNDS (default 3). JSON goes to BANGER_BENCH_JSON
// (or BANGER_BENCH_OUT) when set. Run it with
//
//	BANGER_E2E=1 go test -run '^$' -bench VMRunTemplate -benchtime 1x ./test/e2e
func BenchmarkVMRunTemplate(b *testing.B) {
	rounds := 3
	if v, err := strconv.Atoi(os.Getenv("BANGER_BENCH_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	for i := 0; i < b.N; i++ {
		benchVMRunTemplate(b, rounds)
	}
}

type templateBench struct {
	Warm          []float64 `json:"vm_run_true_template_s"`
	Restore       []float64 `json:"vm_run_true_no_standby_s"`
	WarmSSH       []float64 `json:"vm_run_true_no_standby_ssh_s"`
	Cold          []float64 `json:"vm_run_true_cold_s"`
	MakeSeconds   float64   `json:"template_make_s"`
	TemplateBytes int64     `json:"template_size_bytes"`
}

// tinyRepo is a one-commit git repository.
func tinyRepo(b testing.TB) string {
	dir := filepath.Join(b.TempDir(), "repo")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "README"), []byte("bench\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	for _, args := range [][]string{{"init", "-q"}, {"add", "README"}, {"-c", "user.name=b", "-c", "user.email=b@example.org", "commit", "-qm", "one"}} {
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	return dir
}

func benchVMRunTemplate(b *testing.B, rounds int) {
	e := newRunEnv(b, envOptions{TapPool: 2, Templates: true, Standby: 1})
	repo := tinyRepo(b)
	var r templateBench

	t0 := time.Now()
	e.must("image", "warm", devImageName)
	r.MakeSeconds = time.Since(t0).Seconds()
	ts := e.templates()
	if len(ts) != 1 {
		b.Fatalf("templates after warm: %+v", ts)
	}
	r.TemplateBytes = ts[0].SizeBytes
	id := ts[0].ID

	runEnv := func(env []string, extra ...string) float64 {
		args := append([]string{"vm", "run", "--rm", "--image", devImageName}, extra...)
		args = append(args, repo, "--", "true")
		res := e.bangerEnvT(b, env, "", nil, args...)
		if res.code != 0 {
			b.Fatalf("vm run %v: %s", extra, res)
		}
		return res.took.Seconds()
	}
	runOnce := func(extra ...string) float64 { return runEnv(nil, extra...) }
	// rpcs returns the daemon's rpc records (method: duration) logged by
	// run, to show where a restored vm run spends its time.
	rpcs := func(run func() float64) (float64, string) {
		logPath := filepath.Join(e.dir, "bangerd.log")
		before, _ := os.ReadFile(logPath)
		took := run()
		after, _ := os.ReadFile(logPath)
		var out []string
		if len(after) >= len(before) {
			for _, l := range strings.Split(string(after[len(before):]), "\n") {
				var rec struct {
					Msg      string `json:"msg"`
					Method   string `json:"method"`
					Duration int64  `json:"duration"`
				}
				if json.Unmarshal([]byte(l), &rec) == nil && rec.Msg == "rpc" && rec.Method != "" {
					out = append(out, fmt.Sprintf("%s %s", rec.Method, time.Duration(rec.Duration).Round(time.Millisecond)))
				}
			}
		}
		return took, strings.Join(out, ", ")
	}
	viaSSH := []string{"BANGER_EXEC_VIA=ssh"}
	// Warm-up of every path (page cache); the first restore also tells
	// the daemon which shape to keep a standby VM of.
	runOnce("--no-standby")
	runOnce("--cold")
	runOnce()
	var lastWarm, lastRestore, lastSSH string
	for i := 0; i < rounds; i++ {
		var took float64
		took, lastRestore = rpcs(func() float64 { return runOnce("--no-standby") })
		r.Restore = append(r.Restore, took)
		took, lastSSH = rpcs(func() float64 { return runEnv(viaSSH, "--no-standby") })
		r.WarmSSH = append(r.WarmSSH, took)
		r.Cold = append(r.Cold, runOnce("--cold"))
		e.waitStandby(2 * time.Minute)
		took, lastWarm = rpcs(func() float64 { return runOnce() })
		if !strings.Contains(lastWarm, "vm.create") {
			b.Fatalf("no vm.create in the standby run's log: %s", lastWarm)
		}
		r.Warm = append(r.Warm, took)
	}
	if ts := e.templates(); len(ts) != 1 || ts[0].ID != id {
		b.Fatalf("the template changed during the bench: %+v", ts)
	}

	warm, restore, warmSSH, cold := median(r.Warm), median(r.Restore), median(r.WarmSSH), median(r.Cold)
	table := fmt.Sprintf("\n%-56s %10s %10s %8s\n", "", "template", "--cold", "ratio") +
		fmt.Sprintf("%-56s %9.2fs %9.2fs %7.2fx\n", "vm run --rm REPO -- true: template vs --cold", warm, cold, cold/warm) +
		fmt.Sprintf("%-56s %9.2fs %9.2fs %7.2fx\n", "same, --no-standby (the create restores the template)", restore, cold, cold/restore) +
		fmt.Sprintf("%-56s %9.2fs %9.2fs %7.2fx\n", "same, --no-standby, the command over ssh", warmSSH, cold, cold/warmSSH) +
		fmt.Sprintf("last standby run, daemon side: %s\n", lastWarm) +
		fmt.Sprintf("last --no-standby run: %s\n", lastRestore) +
		fmt.Sprintf("same over ssh: %s\n", lastSSH) +
		fmt.Sprintf("template: made in %.1fs (image warm), %.1f MiB on disk\n", r.MakeSeconds, float64(r.TemplateBytes)/(1<<20)) +
		fmt.Sprintf("(medians of %d rounds; ratio = cold / template, goal >= 8)", rounds)
	b.Log(table)
	b.ReportMetric(cold/warm, "cold/template")
	b.ReportMetric(warm, "template-s")
	b.ReportMetric(cold/restore, "cold/no-standby")
	b.ReportMetric(warmSSH, "no-standby-ssh-s")
	out := os.Getenv("BANGER_BENCH_JSON")
	if out == "" {
		out = os.Getenv("BANGER_BENCH_OUT")
	}
	if out != "" {
		data, _ := json.MarshalIndent(map[string]any{"benchmark": "vm_run_template", "rounds": rounds, "samples": r,
			"median_template_s": warm, "median_no_standby_s": restore, "median_no_standby_ssh_s": warmSSH, "median_cold_s": cold,
			"ratio_cold_template": cold / warm, "ratio_cold_no_standby": cold / restore}, "", "  ")
		if err := os.WriteFile(out, data, 0o644); err != nil {
			b.Error(err)
		}
	}
}
