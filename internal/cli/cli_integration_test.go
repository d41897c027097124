package cli_test

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// binaries returns the directory holding banger and bangerd: $BANGER_BIN
// when set (make builds them first), else a fresh build of this tree.
func binaries(t *testing.T) string {
	t.Helper()
	if dir := os.Getenv("BANGER_BIN"); dir != "" {
		return dir
	}
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", dir+"/", "../../cmd/banger", "../../cmd/bangerd")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build binaries: %v\n%s", err, out)
	}
	return dir
}

type env struct {
	t   *testing.T
	bin string
	dir string
}

func newEnv(t *testing.T) *env {
	e := &env{t: t, bin: binaries(t), dir: t.TempDir()}
	t.Cleanup(func() {
		// Stop the daemon this test started.
		_, _, _ = e.run("daemon", "stop")
	})
	return e
}

func (e *env) environ() []string {
	return append(os.Environ(),
		"BANGER_STATE_DIR="+filepath.Join(e.dir, "state"),
		"BANGER_CACHE_DIR="+filepath.Join(e.dir, "cache"),
		"BANGER_RUNTIME_DIR="+filepath.Join(e.dir, "run"),
		"BANGER_CONFIG_DIR="+filepath.Join(e.dir, "config"),
		"BANGER_DAEMON="+filepath.Join(e.bin, "bangerd"),
		"NO_COLOR=1",
	)
}

func (e *env) run(args ...string) (string, string, int) {
	cmd := exec.Command(filepath.Join(e.bin, "banger"), args...)
	cmd.Env = e.environ()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			e.t.Fatalf("run banger %v: %v", args, err)
		}
		code = ee.ExitCode()
	}
	return stdout.String(), stderr.String(), code
}

func TestCLIRecordRoundTripWithAutoStart(t *testing.T) {
	e := newEnv(t)
	out, errOut, code := e.run("vm", "create", "--no-start", "--name", "a1")
	if code != 0 {
		t.Fatalf("create: exit %d: %s%s", code, out, errOut)
	}
	out, _, code = e.run("vm", "list", "--json")
	var vms []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &vms) != nil || len(vms) != 1 || vms[0]["name"] != "a1" {
		t.Fatalf("list --json: exit %d: %s", code, out)
	}
	_, errOut, code = e.run("vm", "create", "--no-start", "--name", "-bad")
	if code == 0 || !strings.Contains(errOut, "DNS label") {
		t.Fatalf("bad name: exit %d, stderr %q", code, errOut)
	}
	_, errOut, code = e.run("vm", "create", "--no-start", "--name", "a1")
	if code == 0 || !strings.Contains(errOut, "already exists") || !strings.Contains(errOut, "(op op-") {
		t.Fatalf("duplicate: exit %d, stderr %q", code, errOut)
	}
	_, errOut, code = e.run("vm", "create", "--no-start", "--memory", "0")
	if code == 0 || !strings.Contains(errOut, "--memory") {
		t.Fatalf("zero memory: exit %d, stderr %q", code, errOut)
	}
	// Several refs, one missing: the others still happen, exit 1.
	e.run("vm", "create", "--no-start", "--name", "a2")
	out, errOut, code = e.run("vm", "delete", "a1", "missing", "a2")
	if code != 1 || !strings.Contains(out, "a1 deleted") || !strings.Contains(out, "a2 deleted") || !strings.Contains(errOut, "missing") {
		t.Fatalf("multi delete: exit %d, out %q, err %q", code, out, errOut)
	}
	out, _, _ = e.run("daemon", "status", "--json")
	if !strings.Contains(out, `"running": true`) {
		t.Fatalf("daemon status: %s", out)
	}
}

func TestCLIAutoStartRaceStartsOneDaemon(t *testing.T) {
	e := newEnv(t)
	var wg sync.WaitGroup
	codes := make([]int, 4)
	for i := range codes {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, _, codes[i] = e.run("vm", "list")
		}(i)
	}
	wg.Wait()
	for i, c := range codes {
		if c != 0 {
			t.Fatalf("cli %d exited %d", i, c)
		}
	}
	// Exactly one daemon for this state dir.
	time.Sleep(100 * time.Millisecond)
	logData, _ := os.ReadFile(filepath.Join(e.dir, "state", "logs", "bangerd.log"))
	if n := strings.Count(string(logData), "bangerd serving"); n != 1 {
		t.Fatalf("daemon started %d times:\n%s", n, logData)
	}
}

func TestCLIVersionAndHelp(t *testing.T) {
	e := newEnv(t)
	out, _, code := e.run("--version")
	if code != 0 || !strings.HasPrefix(out, "banger ") {
		t.Fatalf("--version: %d %q", code, out)
	}
	out, _, code = e.run("vm", "create", "--help")
	if code != 0 || !strings.Contains(out, "Examples:") {
		t.Fatalf("help lacks examples: %q", out)
	}
	out, _, code = e.run("completion", "bash")
	if code != 0 || !strings.Contains(out, "bash completion") {
		t.Fatalf("completion: %d", code)
	}
}

// buildVersion builds banger and bangerd stamped with version into a new
// directory.
func buildVersion(t *testing.T, version string) string {
	t.Helper()
	dir := t.TempDir()
	ld := "-X github.com/bangerdev/banger/internal/buildinfo.Version=" + version
	cmd := exec.Command("go", "build", "-ldflags", ld, "-o", dir+"/", "../../cmd/banger", "../../cmd/bangerd")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", version, err, out)
	}
	return dir
}

func TestCLIRestartsDaemonOfAnotherVersion(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two versions of the binaries")
	}
	old := &env{t: t, bin: buildVersion(t, "v-old"), dir: t.TempDir()}
	cur := &env{t: t, bin: buildVersion(t, "v-new"), dir: old.dir}
	t.Cleanup(func() { _, _, _ = cur.run("daemon", "stop") })
	if _, errOut, code := old.run("vm", "create", "--no-start", "--name", "keep"); code != 0 {
		t.Fatalf("old create: %s", errOut)
	}
	out, _, _ := old.run("daemon", "status", "--json")
	if !strings.Contains(out, `"version": "v-old"`) {
		t.Fatalf("old daemon not running: %s", out)
	}
	// The new CLI finds the old daemon, restarts it, and the VM record survives.
	out, errOut, code := cur.run("vm", "list", "--json")
	if code != 0 || !strings.Contains(out, `"keep"`) {
		t.Fatalf("new list: exit %d: %s %s", code, out, errOut)
	}
	out, _, _ = cur.run("daemon", "status", "--json")
	if !strings.Contains(out, `"version": "v-new"`) {
		t.Fatalf("daemon was not restarted at the new version: %s", out)
	}
}

func TestCLICompletesLiveVMNames(t *testing.T) {
	e := newEnv(t)
	if _, errOut, code := e.run("vm", "create", "--no-start", "--name", "zeta"); code != 0 {
		t.Fatal(errOut)
	}
	out, _, code := e.run("__complete", "vm", "show", "")
	if code != 0 || !strings.Contains(out, "zeta\tstopped") {
		t.Fatalf("completion: %d %q", code, out)
	}
}

func TestCLITemplatesListAndColdFlag(t *testing.T) {
	e := newEnv(t)
	out, errOut, code := e.run("image", "templates", "--json")
	if code != 0 || strings.TrimSpace(out) != "[]" {
		t.Fatalf("image templates --json: %d %q %q", code, out, errOut)
	}
	if _, errOut, code := e.run("image", "templates"); code != 0 || !strings.Contains(errOut, "no templates") {
		t.Errorf("image templates: %d %q", code, errOut)
	}
	if _, errOut, code := e.run("vm", "create", "--no-start", "--cold", "--name", "c1"); code != 0 {
		t.Fatalf("create --cold: %d %s", code, errOut)
	}
	out, _, _ = e.run("vm", "show", "--json", "c1")
	var vms []struct {
		Runtime struct {
			Cold bool `json:"cold"`
		} `json:"runtime"`
	}
	if err := json.Unmarshal([]byte(out), &vms); err != nil {
		var one struct {
			Runtime struct {
				Cold bool `json:"cold"`
			} `json:"runtime"`
		}
		if err := json.Unmarshal([]byte(out), &one); err != nil || !one.Runtime.Cold {
			t.Fatalf("vm show c1: %q (%v)", out, err)
		}
		return
	}
	if len(vms) != 1 || !vms[0].Runtime.Cold {
		t.Fatalf("vm show c1: %q", out)
	}
}
