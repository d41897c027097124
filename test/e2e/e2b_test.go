package e2e

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/e2b/sdktest"
	"github.com/bangerdev/banger/internal/model"
)

// syncBuffer is a bytes.Buffer safe for a writer process and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startE2B runs `banger e2b serve` in the env's netns and returns its URL.
func (e *env) startE2B() (string, *syncBuffer) {
	e.t.Helper()
	const addr = "127.0.0.1:3999" // the netns is the test's own
	cmd := exec.Command("ip", "netns", "exec", e.ns, filepath.Join(e.bin, "banger"), "e2b", "serve", "--listen", addr)
	cmd.Env = e.environ()
	log := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	e.t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(log.String(), "serving on") {
		select {
		case <-done:
			e.t.Fatalf("banger e2b serve exited:\n%s", log.String())
		default:
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("banger e2b serve did not come up:\n%s", log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return "http://" + addr, log
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

var keyRE = regexp.MustCompile(`^e2b_[0-9a-f]{40}$`)

// TestE2EE2BSDK drives real guests with the real e2b SDK (npm e2b,
// pinned): create, commands (stdout, stderr, exit codes, users), files
// (text and binary), connect, isolation between two sandboxes, a wrong
// key, another key's sandbox, kill; then a sandbox's timeout deleting its
// VM, visible in `vm list` until then.
func TestE2EE2BSDK(t *testing.T) {
	sdktest.Install(t)
	e := newEnv(t, envOptions{TapPool: 2})
	keyA := lastLine(e.must("e2b", "key", "create", "--name", "a"))
	keyB := lastLine(e.must("e2b", "key", "create", "--name", "b"))
	if !keyRE.MatchString(keyA) || !keyRE.MatchString(keyB) || keyA == keyB {
		t.Fatalf("keys %q %q", keyA, keyB)
	}
	if out := e.must("e2b", "key", "list"); strings.Contains(out, keyA[4:]) || !strings.Contains(out, "a") {
		t.Fatalf("key list shows a secret or misses a key:\n%s", out)
	}
	url, log := e.startE2B()
	env := sdktest.Env(url, keyA)
	env["OTHER_API_KEY"] = keyB
	env["CHECK_ISOLATION"] = "1"
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	wrap := []string{"ip", "netns", "exec", e.ns}
	out := sdktest.Check(t, ctx, env, wrap...)
	t.Logf("sdk check:\n%s", out)
	if vms := e.list(); len(vms) != 0 {
		t.Fatalf("VMs left after the SDK killed its sandboxes: %+v", vms)
	}

	// A sandbox's timeout deletes its VM; until then `vm list` shows it
	// with its key.
	script := sdktest.Script(t, "timeout.mjs", []byte(`import { Sandbox } from 'e2b'
const sb = await Sandbox.create('base', { timeoutMs: 30_000 })
console.log(sb.sandboxId)
`))
	id := lastLine(sdktest.RunNode(t, ctx, script, env, wrap...))
	listing := e.must("vm", "list")
	if !strings.Contains(listing, "E2B SANDBOX") || !regexp.MustCompile(`key k[0-9a-f]{8}, \d+s left`).MatchString(listing) {
		t.Fatalf("vm list does not show the sandbox:\n%s", listing)
	}
	var sb *model.VM
	for _, v := range e.list() {
		if v.ID == id {
			sb = v
		}
	}
	if sb == nil || sb.Sandbox == nil || sb.State != model.StateRunning {
		t.Fatalf("sandbox %s not running as a VM: %+v", id, e.list())
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		gone := true
		for _, v := range e.list() {
			if v.ID == id {
				gone = false
			}
		}
		if gone {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox %s outlived its timeout (ends %v)\n--- daemon log ---\n%s", id, sb.Sandbox.EndAt, e.daemonLog())
		}
		time.Sleep(time.Second)
	}
	t.Logf("e2b serve log:\n%s", log.String())
}
