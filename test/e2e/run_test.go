package e2e

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// repoRoot is the top of banger's own repository (the test runs in
// test/e2e).
func repoRoot(t testing.TB) string {
	t.Helper()
	return strings.TrimSpace(gitIn(t, ".", "rev-parse", "--show-toplevel"))
}

// brokenHello copies examples/hello into a repository of its own and
// breaks hello.sh (an uncommitted change, which the workspace carries).
func brokenHello(t testing.TB, root string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "hello")
	gitIn(t, filepath.Dir(dir), "init", "-q", dir)
	src := filepath.Join(root, "examples", "hello")
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, ent := range ents {
		fi, err := ent.Info()
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(filepath.Join(src, ent.Name()))
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, dir, ent.Name(), data, fi.Mode().Perm())
	}
	gitIn(t, dir, "add", "-A")
	gitIn(t, dir, "commit", "-q", "-m", "hello")
	writeFile(t, dir, "hello.sh", []byte("#!/bin/sh\necho \"bye, ${1:-world}\"\n"), 0o755)
	return dir
}

// TestE2EVMRunExample is the README's main job: `banger vm run
// ./examples/hello -- make test` from banger's own repository exits 0 and
// prints the tests' output; the same example broken on purpose (in a
// repository of its own) exits with make's failing status. Both use --rm
// and run at the same time (two boots); afterwards no VM, lease, tap,
// disk or process is left.
func TestE2EVMRunExample(t *testing.T) {
	e := newRunEnv(t, envOptions{TapPool: 2})
	root := repoRoot(t)
	broken := brokenHello(t, root)
	var good, bad result
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		good = e.bangerT(t, root, nil, "vm", "run", "--rm", "--image", devImageName, "./examples/hello", "--", "make", "test")
	}()
	go func() {
		defer wg.Done()
		bad = e.bangerT(t, broken, nil, "vm", "run", "--rm", "--image", devImageName, ".", "--", "make test")
	}()
	wg.Wait()
	t.Logf("example: %s; broken example: %s", good.took.Round(time.Millisecond), bad.took.Round(time.Millisecond))
	if good.code != 0 || !strings.Contains(good.stdout, "all tests passed") || !strings.Contains(good.stdout, "ok   hello.sh banger -> hello, banger") {
		t.Errorf("vm run ./examples/hello -- make test: %s", good)
	}
	for _, want := range []string{"runs in:", "/root/repo/examples/hello", "the whole repository is copied", "deleted VM"} {
		if !strings.Contains(good.stderr, want) {
			t.Errorf("example stderr lacks %q:\n%s", want, good.stderr)
		}
	}
	if bad.code != 2 || !strings.Contains(bad.stdout, "FAIL hello.sh") || !strings.Contains(bad.stdout, "some tests failed") ||
		!strings.Contains(bad.stderr, "deleted VM") {
		t.Errorf("broken example: %s; want make's exit status 2", bad)
	}
	if vms := e.list(); len(vms) != 0 {
		t.Errorf("--rm left VMs: %+v", vms)
	}
	e.assertNoLeaks("after vm run --rm")
}

// TestE2EVMRunInterrupt: Ctrl-C during `vm run --rm -- CMD` reaches the
// command, banger exits 130 and the VM is still deleted. One boot.
func TestE2EVMRunInterrupt(t *testing.T) {
	e := newRunEnv(t, envOptions{TapPool: 1})
	cmd := exec.Command("ip", "netns", "exec", e.ns, filepath.Join(e.bin, "banger"), "vm", "run", "--rm", "--image", devImageName,
		"--", "echo started; sleep 600; echo not-reached")
	cmd.Env = e.environ()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var serr bytes.Buffer
	cmd.Stderr = &serr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	guard := time.AfterFunc(5*time.Minute, func() { _ = cmd.Process.Kill() })
	defer guard.Stop()
	buf := make([]byte, 8)
	if _, err := io.ReadFull(stdout, buf); err != nil || string(buf) != "started\n" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("read %q: %v\nstderr: %s", buf, err, serr.String())
	}
	time.Sleep(300 * time.Millisecond)
	t0 := time.Now()
	_ = cmd.Process.Signal(syscall.SIGINT)
	rest, _ := io.ReadAll(stdout)
	_ = cmd.Wait()
	t.Logf("Ctrl-C -> exit and delete in %s", time.Since(t0).Round(time.Millisecond))
	if code := cmd.ProcessState.ExitCode(); code != 130 || strings.Contains(string(rest), "not-reached") || !strings.Contains(serr.String(), "deleted VM") {
		t.Errorf("after Ctrl-C: exit %d, stdout %q, stderr:\n%s", code, rest, serr.String())
	}
	if vms := e.list(); len(vms) != 0 {
		t.Errorf("--rm after Ctrl-C left VMs: %+v", vms)
	}
	e.assertNoLeaks("after Ctrl-C with --rm")
}
