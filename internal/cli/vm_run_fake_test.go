package cli

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/progress"
	"github.com/bangerdev/banger/internal/rpc"
	"github.com/bangerdev/banger/internal/testreq"
)

// fakeDaemon serves the methods vm run uses on the test's daemon socket
// and records the calls.
type fakeDaemon struct {
	mu    sync.Mutex
	calls []string
	vms   map[string]*model.VM
	// createErr: vm.create records the VM (state error) and fails.
	createErr *rpc.Error
	// prepareErr: vm.workspace.prepare fails.
	prepareErr *rpc.Error
	// exec, when set, serves vm.exec (else the method is unknown, as on
	// an older daemon).
	exec       func(ctx context.Context, p api.VMExecParams, st *rpc.Stream) (*api.VMExecResult, error)
	execParams []api.VMExecParams
}

func (f *fakeDaemon) record(m string) {
	f.mu.Lock()
	f.calls = append(f.calls, m)
	f.mu.Unlock()
}

func (f *fakeDaemon) called(m string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.calls {
		if c == m {
			return true
		}
	}
	return false
}

// startFakeDaemon listens on the layout's daemon socket (the env vars
// runMain sets must already be in place: call after t.Setenv).
func startFakeDaemon(t *testing.T, f *fakeDaemon, socket string) {
	t.Helper()
	if f.vms == nil {
		f.vms = map[string]*model.VM{}
	}
	s := rpc.NewServer(rpc.ServerOptions{})
	s.Handle(api.MethodPing, rpc.Typed(func(ctx context.Context, _ api.Empty) (*api.PingResult, error) {
		return &api.PingResult{Protocol: rpc.ProtocolVersion, Mode: "user"}, nil
	}))
	s.Handle(api.MethodVMList, rpc.Typed(func(ctx context.Context, _ api.VMListParams) (*api.VMList, error) {
		f.record(api.MethodVMList)
		return &api.VMList{VMs: []*model.VM{}}, nil
	}))
	s.Handle(api.MethodVMCreate, rpc.Typed(func(ctx context.Context, p api.VMCreateParams) (*model.VM, error) {
		f.record(api.MethodVMCreate)
		vm := &model.VM{ID: "id-" + p.Name, Name: p.Name, State: model.StateRunning, IP: "192.0.2.10"}
		progress.Stage(ctx, "vmm", "")
		f.mu.Lock()
		f.vms[p.Name], f.vms[vm.ID] = vm, vm
		f.mu.Unlock()
		if f.createErr != nil {
			vm.State = model.StateError
			return nil, f.createErr
		}
		return vm, nil
	}))
	s.Handle(api.MethodVMShow, rpc.Typed(func(ctx context.Context, p api.Ref) (*model.VM, error) {
		f.record(api.MethodVMShow)
		f.mu.Lock()
		defer f.mu.Unlock()
		if vm := f.vms[p.Ref]; vm != nil {
			return vm, nil
		}
		return nil, rpc.Errorf(rpc.CodeNotFound, "no VM matches %q", p.Ref)
	}))
	s.Handle(api.MethodVMDelete, rpc.Typed(func(ctx context.Context, p api.Ref) (*model.VM, error) {
		f.record(api.MethodVMDelete)
		return &model.VM{Name: p.Ref}, nil
	}))
	s.Handle(api.MethodVMWorkspacePrepare, rpc.Typed(func(ctx context.Context, p api.WorkspacePrepareParams) (*api.WorkspacePrepareResult, error) {
		f.record(api.MethodVMWorkspacePrepare)
		return nil, f.prepareErr
	}))
	if f.exec != nil {
		s.HandleStream(api.MethodVMExec, rpc.TypedStream(func(ctx context.Context, p api.VMExecParams, st *rpc.Stream) (*api.VMExecResult, error) {
			f.record(api.MethodVMExec)
			f.mu.Lock()
			f.execParams = append(f.execParams, p)
			f.mu.Unlock()
			return f.exec(ctx, p, st)
		}))
	}
	if err := os.MkdirAll(filepath.Dir(socket), 0o700); err != nil {
		t.Fatal(err)
	}
	ln, err := rpc.Listen(socket)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = s.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

// runWithFake runs the CLI against a fake daemon.
func runWithFake(t *testing.T, f *fakeDaemon, dir string, args ...string) (string, string, int) {
	t.Helper()
	return runWithFakeIn(t, f, "", dir, args...)
}

// runWithFakeIn is runWithFake with stdin.
func runWithFakeIn(t *testing.T, f *fakeDaemon, stdin, dir string, args ...string) (string, string, int) {
	t.Helper()
	root := t.TempDir()
	for k, v := range map[string]string{
		"BANGER_STATE_DIR": filepath.Join(root, "state"), "BANGER_CACHE_DIR": filepath.Join(root, "cache"),
		"BANGER_RUNTIME_DIR": filepath.Join(root, "run"), "BANGER_CONFIG_DIR": filepath.Join(root, "config"),
		"BANGER_DAEMON": "/nonexistent/bangerd",
	} {
		t.Setenv(k, v)
	}
	startFakeDaemon(t, f, filepath.Join(root, "run", "bangerd.sock"))
	if dir != "" {
		t.Chdir(dir)
	}
	var out, errb bytes.Buffer
	code := Main(context.Background(), Env{Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errb, Getenv: os.Getenv}, args)
	return out.String(), errb.String(), code
}

// A VM that was created but never came up is kept, even with --rm, and
// banger says how to see why.
func TestVMRunKeepsVMWhoseSSHNeverCameUp(t *testing.T) {
	f := &fakeDaemon{createErr: rpc.Errorf(rpc.CodeOperationFailed, "create x: ssh: guest ssh not ready")}
	_, stderr, code := runWithFake(t, f, "", "vm", "run", "--rm", "--name", "x", "--", "true")
	if code != exitBanger || !strings.Contains(stderr, "VM x was kept") || !strings.Contains(stderr, "banger vm logs x") {
		t.Fatalf("exit %d stderr %q", code, stderr)
	}
	if f.called(api.MethodVMDelete) {
		t.Fatal("--rm deleted a VM whose ssh never came up")
	}
}

// A name taken by another VM is not ours to keep or delete.
func TestVMRunNameTaken(t *testing.T) {
	f := &fakeDaemon{createErr: rpc.Errorf(rpc.CodeAlreadyExists, "a VM named \"x\" already exists")}
	_, stderr, code := runWithFake(t, f, "", "vm", "run", "--rm", "--name", "x", "--", "true")
	if code != exitBanger || !strings.Contains(stderr, "already exists") || strings.Contains(stderr, "kept") || f.called(api.MethodVMDelete) {
		t.Fatalf("exit %d stderr %q calls %v", code, stderr, f.calls)
	}
}

// A failed workspace copy after ssh came up: --rm deletes the VM; without
// --rm it is kept and banger says how to reach it.
func TestVMRunPrepareFailure(t *testing.T) {
	testreq.Tools(t, "git")
	repo := t.TempDir()
	if out, err := runGit(repo, "init", "-q"); err != nil {
		t.Fatalf("git init: %v %s", err, out)
	}
	for _, rm := range []bool{true, false} {
		f := &fakeDaemon{prepareErr: rpc.Errorf(rpc.CodeOperationFailed, "workspace prepare in the guest: exit status 3")}
		args := []string{"vm", "run", "--name", "y", ".", "--", "true"}
		if rm {
			args = append([]string{"vm", "run", "--rm"}, args[2:]...)
		}
		_, stderr, code := runWithFake(t, f, repo, args...)
		if code != exitBanger || !strings.Contains(stderr, "copy the workspace into y") {
			t.Fatalf("rm=%v: exit %d stderr %q", rm, code, stderr)
		}
		if f.called(api.MethodVMDelete) != rm {
			t.Fatalf("rm=%v: delete called = %v", rm, f.called(api.MethodVMDelete))
		}
		if !rm && !strings.Contains(stderr, "banger vm delete y") {
			t.Fatalf("no hint on how to delete the kept VM: %q", stderr)
		}
	}
}

// -d returns after the copy and prints the name on stdout.
func TestVMRunDetachWithoutWorkspace(t *testing.T) {
	f := &fakeDaemon{}
	stdout, stderr, code := runWithFake(t, f, "", "vm", "run", "-d")
	if code != 0 || !strings.HasSuffix(stdout, "\n") || strings.Count(stdout, "\n") != 1 || !strings.Contains(stderr, "banger vm ssh") {
		t.Fatalf("exit %d stdout %q stderr %q", code, stdout, stderr)
	}
	if !f.called(api.MethodVMList) || !f.called(api.MethodVMCreate) || f.called(api.MethodVMWorkspacePrepare) || f.called(api.MethodVMDelete) {
		t.Fatalf("calls %v", f.calls)
	}
}

func runGit(dir string, args ...string) ([]byte, error) {
	return exec.Command("git", append([]string{"-C", dir}, args...)...).CombinedOutput()
}
