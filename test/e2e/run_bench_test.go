package e2e

import (
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/testguest"
	"github.com/bangerdev/banger/internal/testreq"
	"github.com/bangerdev/banger/internal/workspace/workspacebench"
)

// BenchmarkVMRun measures the one command against baselines measured in
// the same run, on the same kernel, image and netns:
//
//   - vm-run: wall time of `banger vm run --rm -- true` with a warm image
//     (create, first boot, ssh, the command, delete) versus bare: a bare
//     QEMU boot of the same kernel and disks until its first `ssh true`
//     (bareBoot, shared with BenchmarkCreateVsBareQEMU). Goal ≤ 1.10×.
//   - workspace: `banger vm workspace prepare` (work tree plus a shallow
//     .git) versus `tar -c | ssh VM tar -x` of the same work tree (no .git)
//     into the same guest, on three corpora: a generated ~200 MB repository
//     (half text in 2000 files, half incompressible binaries) and the
//     mixed and source repositories of internal/workspace/workspacebench
//     (the local BenchmarkPrepareVsTar's). Throughput ratio banger/tar per
//     corpus (goal ≥ 1.0).
//
// Rounds: BANGER_BENCH_ROUNDS (default 3). A table is logged; JSON goes to
// BANGER_BENCH_JSON (or BANGER_BENCH_OUT) when set. Run it with
//
//	BANGER_E2E=1 go test -run '^$' -bench VMRun -benchtime 1x ./test/e2e
func BenchmarkVMRun(b *testing.B) {
	rounds := 3
	if v, err := strconv.Atoi(os.Getenv("BANGER_BENCH_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	for i := 0; i < b.N; i++ {
		benchVMRun(b, rounds)
	}
}

type vmRunBench struct {
	RunTrue []float64   `json:"vm_run_true_s"`
	Bare    []float64   `json:"bare_qemu_ssh_s"`
	Copies  []copyBench `json:"workspace_copies"`
}

// copyBench is the workspace copy of one corpus against tar | ssh tar.
type copyBench struct {
	Corpus      string    `json:"corpus"`
	Prepare     []float64 `json:"workspace_prepare_s"`
	Tar         []float64 `json:"tar_ssh_s"`
	RepoBytes   int64     `json:"repo_work_tree_bytes"`
	RepoFiles   int       `json:"repo_files"`
	StreamBytes int64     `json:"prepare_stream_bytes"`
}

func benchVMRun(b *testing.B, rounds int) {
	e := newRunEnv(b, envOptions{TapPool: 2})
	k := testguest.Kernel(b)
	var r vmRunBench

	// Warm: the image and kernel are in the store; a first run also warms
	// the page cache.
	if res := e.bangerIn("", nil, "vm", "run", "--rm", "--image", devImageName, "--", "true"); res.code != 0 {
		b.Fatalf("warm-up vm run: %s", res)
	}
	e.must("vm", "create", "--name", "bare", "--image", devImageName)
	e.must("vm", "stop", "bare")
	for i := 0; i < rounds; i++ {
		res := e.bangerIn("", nil, "vm", "run", "--rm", "--image", devImageName, "--", "true")
		if res.code != 0 {
			b.Fatalf("vm run -- true: %s", res)
		}
		r.RunTrue = append(r.RunTrue, res.took.Seconds())
		r.Bare = append(r.Bare, e.bareBoot("bare", k).Seconds())
	}
	e.must("vm", "delete", "bare")

	e.must("vm", "create", "--name", "wsb", "--image", devImageName, "--disk-size", "3G", "--memory", "1G", "--vcpu", "2")
	ip := e.show("wsb").IP
	corpora := []struct {
		name string
		repo string
	}{{"e2e-200m", benchRepo200(b)}}
	for _, c := range workspacebench.Corpora() {
		corpora = append(corpora, struct {
			name string
			repo string
		}{c.Name, c.Make(b, testreq.CacheDir(b, "workspace-bench"))})
	}
	for _, c := range corpora {
		w := copyBench{Corpus: c.name}
		w.RepoBytes, w.RepoFiles = treeSize(b, c.repo)
		for i := 0; i < rounds; i++ {
			prep, tar, stream := e.copyRound(b, ip, c.repo, w.RepoFiles)
			w.Prepare, w.Tar, w.StreamBytes = append(w.Prepare, prep), append(w.Tar, tar), stream
		}
		r.Copies = append(r.Copies, w)
	}
	e.must("vm", "delete", "wsb")

	run, bare := median(r.RunTrue), median(r.Bare)
	table := fmt.Sprintf("\n%-48s %10s %10s %8s\n", "", "banger", "baseline", "ratio") +
		fmt.Sprintf("%-48s %9.2fs %9.2fs %7.3fx\n", "vm run --rm -- true  vs  bare qemu to ssh", run, bare, run/bare)
	summary := map[string]any{"benchmark": "vm_run", "rounds": rounds, "samples": r,
		"median_vm_run_true_s": run, "median_bare_qemu_ssh_s": bare, "ratio_run_bare": run / bare}
	b.ReportMetric(run/bare, "run/bare")
	for _, w := range r.Copies {
		prep, tar := median(w.Prepare), median(w.Tar)
		mb := float64(w.RepoBytes) / 1e6
		table += fmt.Sprintf("%-48s %7.1fMB/s %7.1fMB/s %7.3fx\n",
			fmt.Sprintf("workspace copy %s (%.0f MB, %d files) vs tar|ssh", w.Corpus, mb, w.RepoFiles), mb/prep, mb/tar, tar/prep)
		summary["ratio_throughput_prepare_tar_"+w.Corpus] = tar / prep
		b.ReportMetric(tar/prep, "prepare/tar-"+w.Corpus)
	}
	table += fmt.Sprintf("(medians of %d rounds; copy ratio = banger throughput / tar|ssh throughput, goal >= 1.0)", rounds)
	b.Log(table)
	out := os.Getenv("BANGER_BENCH_JSON")
	if out == "" {
		out = os.Getenv("BANGER_BENCH_OUT")
	}
	if out != "" {
		data, _ := json.MarshalIndent(summary, "", "  ")
		if err := os.WriteFile(out, data, 0o644); err != nil {
			b.Error(err)
		}
	}
}

// copyRound copies repo into the guest at ip once with `vm workspace
// prepare` and once with `tar -c | ssh tar -x` (work tree only), checks
// both copies hold the same files, and returns both wall times and the
// prepare stream's size.
func (e *env) copyRound(b *testing.B, ip, repo string, files int) (prep, tar float64, streamBytes int64) {
	b.Helper()
	e.mustSSH(ip, "rm -rf /root/bench-ws /root/bench-tar; sync; echo 3 > /proc/sys/vm/drop_caches")
	start := time.Now()
	out := e.must("vm", "workspace", "prepare", "wsb", repo, "--guest-path", "/root/bench-ws", "--json")
	prep = time.Since(start).Seconds()
	var pr struct {
		StreamBytes int64 `json:"stream_bytes"`
		Files       int   `json:"files"`
	}
	if err := json.Unmarshal([]byte(out), &pr); err != nil || pr.Files != files {
		b.Fatalf("prepare result %q: %v (want %d files)", out, err, files)
	}
	e.mustSSH(ip, "sync")

	start = time.Now()
	args := append([]string{"netns", "exec", e.ns, "sh", "-c",
		`r=$1; shift; tar -c -C "$r" --exclude=./.git . | ssh "$@" 'mkdir -p /root/bench-tar && tar -x -p -C /root/bench-tar'`, "sh", repo}, e.sshArgs()...)
	args = append(args, "root@"+ip)
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		b.Fatalf("tar | ssh tar: %v\n%s", err, out)
	}
	tar = time.Since(start).Seconds()
	// Same content either way.
	sum := `cd "$1" && find . -path ./.git -prune -o -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum`
	a := e.mustSSH(ip, "sh -c '"+sum+"' sh /root/bench-ws")
	t := e.mustSSH(ip, "sh -c '"+sum+"' sh /root/bench-tar")
	if a != t {
		b.Fatalf("workspace and tar copies of %s differ: %s vs %s", repo, a, t)
	}
	return prep, tar, pr.StreamBytes
}

// benchRepo200 returns a generated ~200 MB repository (2000 text files of
// ~50 KB, 20 random 5 MB binaries, one commit, a couple of uncommitted
// edits), cached across runs.
func benchRepo200(b testing.TB) string {
	b.Helper()
	dir := filepath.Join(testreq.CacheDir(b, "run-bench"), "repo-200m-v1")
	if _, err := os.Stat(filepath.Join(dir, ".git", "banger-bench-complete")); err == nil {
		return dir
	}
	_ = os.RemoveAll(dir)
	tmp := dir + ".tmp"
	_ = os.RemoveAll(tmp)
	gitIn(b, filepath.Dir(tmp), "init", "-q", tmp)
	rng := rand.New(rand.NewSource(7))
	words := make([]string, 4000)
	for i := range words {
		w := make([]byte, 2+rng.Intn(9))
		for j := range w {
			w[j] = byte('a' + rng.Intn(26))
		}
		words[i] = string(w)
	}
	for d := 0; d < 40; d++ {
		for f := 0; f < 50; f++ {
			var sb strings.Builder
			for sb.Len() < 50_000 {
				sb.WriteString("\t")
				for k := 0; k < 8; k++ {
					sb.WriteString(words[rng.Intn(len(words))])
					sb.WriteByte(' ')
				}
				sb.WriteString(";\n")
			}
			writeFile(b, tmp, fmt.Sprintf("src/pkg%02d/file%02d.go", d, f), []byte(sb.String()), 0o644)
		}
	}
	for i := 0; i < 20; i++ {
		data := make([]byte, 5<<20)
		rng.Read(data)
		writeFile(b, tmp, fmt.Sprintf("assets/blob%02d.bin", i), data, 0o644)
	}
	gitIn(b, tmp, "add", "-A")
	gitIn(b, tmp, "commit", "-q", "-m", "bench")
	writeFile(b, tmp, "src/pkg00/file00.go", []byte("package changed\n"), 0o644)
	writeFile(b, tmp, ".git/banger-bench-complete", nil, 0o644)
	if err := os.Rename(tmp, dir); err != nil {
		b.Fatal(err)
	}
	return dir
}

// treeSize sums the regular files under dir (not .git).
func treeSize(b testing.TB, dir string) (int64, int) {
	b.Helper()
	var n int64
	files := 0
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if fi.IsDir() && fi.Name() == ".git" {
			return filepath.SkipDir
		}
		if fi.Mode().IsRegular() {
			n += fi.Size()
			files++
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return n, files
}
