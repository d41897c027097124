package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"syscall"
	"testing"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/rpc"
)

// upperExec is a vm.exec that upper-cases stdin to stdout, says "err" on
// stderr and exits 3.
func upperExec(ctx context.Context, p api.VMExecParams, st *rpc.Stream) (*api.VMExecResult, error) {
	var in bytes.Buffer
	for p.Stdin {
		m, err := st.Recv(ctx)
		if err != nil {
			return nil, err
		}
		if m.EOF {
			break
		}
		in.Write(m.Data)
	}
	if err := st.Send(ctx, rpc.StreamMsg{Ch: api.ExecStdout, Data: bytes.ToUpper(in.Bytes())}); err != nil {
		return nil, err
	}
	if err := st.Send(ctx, rpc.StreamMsg{Ch: api.ExecStderr, Data: []byte("err\n")}); err != nil {
		return nil, err
	}
	return &api.VMExecResult{ExitCode: 3, Status: 3}, nil
}

// Without a pty, vm run runs the command through vm.exec: stdin in,
// stdout and stderr apart, the exit status out, the login-shell wrapper in
// the workspace directory, and no ssh at all.
func TestVMRunThroughAgent(t *testing.T) {
	f := &fakeDaemon{exec: upperExec}
	stdout, stderr, code := runWithFakeIn(t, f, "hello stdin", "", "--log-level", "debug", "vm", "run", "--rm", "--name", "x", "--", "make test")
	if code != 3 || stdout != "HELLO STDIN" || !strings.Contains(stderr, "err\n") {
		t.Fatalf("exit %d stdout %q stderr %q", code, stdout, stderr)
	}
	if !strings.Contains(stderr, "through the guest agent") {
		t.Errorf("no debug line says which path was taken: %q", stderr)
	}
	if strings.Contains(stderr, "ssh") {
		t.Errorf("the agent path went near ssh: %q", stderr)
	}
	if len(f.execParams) != 1 {
		t.Fatalf("exec calls %v", f.execParams)
	}
	p := f.execParams[0]
	if p.Ref != "id-x" || !p.Stdin || len(p.Argv) != 3 || p.Argv[0] != "/bin/sh" || p.Argv[1] != "-c" ||
		!strings.Contains(p.Argv[2], "cd -- /root") || !strings.Contains(p.Argv[2], "bash -lc 'make test'") {
		t.Errorf("exec params %+v", p)
	}
	if !f.called(api.MethodVMDelete) {
		t.Error("--rm did not delete the VM")
	}
}

// vm exec takes the same path.
func TestVMExecThroughAgent(t *testing.T) {
	vm := &model.VM{ID: "id-x", Name: "x", State: model.StateRunning, IP: "192.0.2.10"}
	f := &fakeDaemon{exec: upperExec, vms: map[string]*model.VM{"x": vm, "id-x": vm}}
	stdout, _, code := runWithFakeIn(t, f, "abc", "", "vm", "exec", "--guest-path", "/srv", "x", "--", "cat")
	if code != 3 || stdout != "ABC" {
		t.Fatalf("exit %d stdout %q", code, stdout)
	}
	if p := f.execParams[len(f.execParams)-1]; !strings.Contains(p.Argv[2], "cd -- /srv") {
		t.Errorf("exec params %+v", p)
	}
}

// A daemon that cannot use the VM's agent (not_supported), or that has no
// vm.exec (unknown_method), makes the CLI fall back to ssh: here the fake
// daemon has no ssh credentials, so the fallback fails at that step, as
// banger's own failure.
func TestVMRunFallsBackToSSH(t *testing.T) {
	for name, f := range map[string]*fakeDaemon{
		"not_supported": {exec: func(ctx context.Context, p api.VMExecParams, st *rpc.Stream) (*api.VMExecResult, error) {
			return nil, rpc.Errorf(rpc.CodeNotSupported, "VM x has no guest agent")
		}},
		"unknown_method": {},
	} {
		t.Run(name, func(t *testing.T) {
			_, stderr, code := runWithFake(t, f, "", "--log-level", "debug", "vm", "run", "--name", "x", "--", "true")
			if code != exitBanger || !strings.Contains(stderr, "ssh credentials") || !strings.Contains(stderr, "using ssh") {
				t.Fatalf("exit %d stderr %q", code, stderr)
			}
		})
	}
}

// BANGER_EXEC_VIA=ssh and -t skip the agent.
func TestVMRunForcedSSH(t *testing.T) {
	for _, tc := range []struct {
		env  string
		args []string
	}{{"ssh", nil}, {"", []string{"-t"}}} {
		t.Setenv(envExecVia, tc.env)
		f := &fakeDaemon{exec: upperExec}
		args := append(append([]string{"vm", "run", "--name", "x"}, tc.args...), "--", "true")
		_, stderr, code := runWithFake(t, f, "", args...)
		if code != exitBanger || f.called(api.MethodVMExec) || !strings.Contains(stderr, "ssh credentials") {
			t.Fatalf("%+v: exit %d calls %v stderr %q", tc, code, f.calls, stderr)
		}
	}
}

// A failure of the agent path itself (not a fallback) is banger's: 125.
func TestVMExecAgentFailure(t *testing.T) {
	f := &fakeDaemon{exec: func(ctx context.Context, p api.VMExecParams, st *rpc.Stream) (*api.VMExecResult, error) {
		return nil, rpc.Errorf(rpc.CodeOperationFailed, "in the guest: exec /bin/sh: no such file")
	}}
	_, stderr, code := runWithFake(t, f, "", "vm", "run", "--name", "x", "--", "true")
	if code != exitBanger || !strings.Contains(stderr, "through its guest agent") || strings.Contains(stderr, "ssh credentials") {
		t.Fatalf("exit %d stderr %q calls %v", code, stderr, f.calls)
	}
}

// Ctrl-C is forwarded as a signal control message; the command's status
// (here 130) is banger's.
func TestVMRunForwardsSignal(t *testing.T) {
	f := &fakeDaemon{exec: func(ctx context.Context, p api.VMExecParams, st *rpc.Stream) (*api.VMExecResult, error) {
		_ = syscall.Kill(syscall.Getpid(), syscall.SIGINT)
		for {
			m, err := st.Recv(ctx)
			if err != nil {
				return nil, err
			}
			var c api.VMExecControl
			if len(m.Ctl) > 0 && json.Unmarshal(m.Ctl, &c) == nil {
				_ = st.Send(ctx, rpc.StreamMsg{Ch: api.ExecStderr, Data: []byte("got " + c.Signal + "\n")})
				return &api.VMExecResult{ExitCode: -1, Signal: c.Signal, Status: 130}, nil
			}
		}
	}}
	_, stderr, code := runWithFake(t, f, "", "vm", "run", "-T", "--name", "x", "--", "sleep 60")
	if code != 130 || !strings.Contains(stderr, "got INT") || !strings.Contains(stderr, "sending SIGINT") {
		t.Fatalf("exit %d stderr %q", code, stderr)
	}
}
