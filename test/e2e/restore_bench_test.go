package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/agent"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/vmm/qemu"
)

// BenchmarkTemplateRestoreVsBareQEMU measures a restore through banger
// against the same migration file restored by a bare QEMU, in one run:
//
//   - create: `banger vm create` from the image's template until it
//     returns (disks cloned, VMM restored, identity applied, ssh port open);
//   - bare: qemu-system-x86_64 launched directly with the argv banger's
//     driver used for that VM (read from /proc), on copies of the
//     template's disks and a tap made by hand, until the restored guest's
//     agent answers a ping with the template's token (nothing of banger
//     involved; the disk copies are made before the clock starts).
//
// Goal: create/bare ≤ 1.3. The create runs with --no-standby: it is the
// restore itself that is compared. A second row times the default create,
// which claims the standby VM the daemon restored ahead of need (waited
// for before each round, like every create here: no background restore
// competes with a timed one). Rounds: BANGER_BENCH_ROUNDS (default 3); JSON
// to BANGER_BENCH_JSON. Run it with
//
//	BANGER_E2E=1 go test -run '^$' -bench TemplateRestoreVsBareQEMU -benchtime 1x ./test/e2e
func BenchmarkTemplateRestoreVsBareQEMU(b *testing.B) {
	rounds := 3
	if v, err := strconv.Atoi(os.Getenv("BANGER_BENCH_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	for i := 0; i < b.N; i++ {
		benchRestoreVsBare(b, rounds)
	}
}

func benchRestoreVsBare(b *testing.B, rounds int) {
	e := newRunEnv(b, envOptions{TapPool: 2, Templates: true, Standby: 1})
	e.must("image", "warm", devImageName)
	ts := e.templates()
	if len(ts) != 1 {
		b.Fatalf("templates after warm: %+v", ts)
	}
	tdir := filepath.Join(e.layout.StateDir, "templates", ts[0].ID)
	// The first restore tells the daemon the shape to keep ready.
	e.must("vm", "create", "--image", devImageName, "--name", "shape", "--no-standby")
	e.must("vm", "delete", "shape")
	var create, claim, bare []float64
	for r := 0; r < rounds; r++ {
		e.waitStandby(2 * time.Minute)
		t0 := time.Now()
		e.must("vm", "create", "--image", devImageName, "--name", fmt.Sprintf("claim%d", r))
		claim = append(claim, time.Since(t0).Seconds())
		e.must("vm", "delete", fmt.Sprintf("claim%d", r))
		e.waitStandby(2 * time.Minute)

		name := fmt.Sprintf("restore%d", r)
		t0 = time.Now()
		e.must("vm", "create", "--image", devImageName, "--name", name, "--no-standby")
		create = append(create, time.Since(t0).Seconds())
		v := e.show(name)
		if v.Runtime.Template == "" {
			b.Fatalf("%s was not restored from a template: %+v", name, v.Runtime)
		}
		argv := procArgv(b, v.Runtime.PID)
		e.must("vm", "delete", name)
		bare = append(bare, e.bareRestore(v, argv, tdir).Seconds())
	}
	c, cl, bb := median(create), median(claim), median(bare)
	table := fmt.Sprintf("\n%-52s %8s %8s %8s\n%-52s %7.2fs %7.2fs %7.2fx\n%-52s %7.2fs %7.2fs %7.2fx\n(medians of %d rounds; goal <= 1.3 for the restore)",
		"restore from a template (median)", "create", "bare", "ratio",
		"create --no-standby -> ready vs bare qemu -> agent", c, bb, c/bb,
		"create (claims the standby VM) -> ready vs bare", cl, bb, cl/bb, rounds)
	b.Log(table)
	b.ReportMetric(c/bb, "create/bare")
	b.ReportMetric(cl/bb, "claim/bare")
	b.ReportMetric(bb, "bare-s")
	if out := os.Getenv("BANGER_BENCH_JSON"); out != "" {
		data, _ := json.MarshalIndent(map[string]any{"benchmark": "template_restore_vs_bare_qemu", "rounds": rounds,
			"create_s": create, "claim_s": claim, "bare_qemu_s": bare, "median_create_s": c, "median_claim_s": cl, "median_bare_s": bb,
			"ratio_create_bare": c / bb, "ratio_claim_bare": cl / bb}, "", "  ")
		if err := os.WriteFile(out, data, 0o644); err != nil {
			b.Error(err)
		}
	}
}

// procArgv is the command line of a running process.
func procArgv(t testing.TB, pid int) []string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || len(data) == 0 {
		t.Fatalf("argv of pid %d: %v", pid, err)
	}
	return strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
}

// bareRestore runs argv (a restored VM's QEMU command line) again with the
// VM's directories, disks and tap replaced by scratch copies, and returns
// the time until the guest's agent answers.
func (e *env) bareRestore(v *model.VM, argv []string, tdir string) time.Duration {
	t := e.t
	t.Helper()
	dir, err := os.MkdirTemp("", "bgbare-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	for _, f := range []string{"root.ext4", "work.ext4"} {
		run(t, "cp", "--sparse=always", filepath.Join(tdir, f), filepath.Join(dir, f))
	}
	tap := "bgbare" + randHex(2) // not bgtap*: see bareBoot
	run(t, "ip", "-n", e.ns, "tuntap", "add", "dev", tap, "mode", "tap")
	defer func() { _ = exec.Command("ip", "-n", e.ns, "link", "del", tap).Run() }()
	run(t, "ip", "-n", e.ns, "link", "set", tap, "master", "br-banger", "up")
	repl := strings.NewReplacer(
		v.Runtime.RootDisk, filepath.Join(dir, "root.ext4"),
		v.Runtime.WorkDisk, filepath.Join(dir, "work.ext4"),
		v.Runtime.RuntimeDir, dir,
		filepath.Dir(v.Runtime.LogPath), dir,
		"ifname="+v.Runtime.Tap+",", "ifname="+tap+",",
	)
	args := make([]string, len(argv))
	for i, a := range argv {
		args[i] = repl.Replace(a)
	}
	for _, a := range args {
		if strings.Contains(a, v.ID) {
			t.Fatalf("bare restore argv still names the VM %s: %q", v.ID, a)
		}
	}
	tok, err := os.ReadFile(filepath.Join(tdir, "agent.token"))
	if err != nil {
		t.Fatal(err)
	}
	token, err := agent.ParseToken(tok)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	cmd := exec.Command("ip", append([]string{"netns", "exec", e.ns}, args...)...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	// QEMU loads the state, then (saved paused) waits for `cont`.
	qmpPath := filepath.Join(dir, qemu.QMPSocketName)
	for {
		if ctx.Err() != nil {
			t.Fatalf("bare restore: QEMU never left inmigrate: %v", ctx.Err())
		}
		q, err := qemu.DialQMP(ctx, qmpPath)
		if err == nil {
			st, serr := q.QueryStatus(ctx)
			if serr == nil && st.Status != "prelaunch" && st.Status != "inmigrate" {
				if !st.Running {
					if err := q.Execute(ctx, "cont", nil, nil); err != nil {
						t.Fatalf("bare restore: cont: %v", err)
					}
				}
				q.Close()
				break
			}
			q.Close()
		}
		time.Sleep(10 * time.Millisecond)
	}
	c := agent.NewConn(agent.DialUnix(filepath.Join(dir, "agent.sock")), token, "bare restore")
	defer c.Close()
	for {
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := c.Ping(pctx)
		pcancel()
		if err == nil {
			return time.Since(start)
		}
		if ctx.Err() != nil {
			t.Fatalf("bare restore: the agent never answered: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
