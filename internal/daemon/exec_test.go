package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/agent"
	"github.com/bangerdev/banger/internal/agent/agenttest"
	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/rpc"
)

// execHarness serves vm.exec over a real rpc socket, backed by a real
// agent server (commands run on this host) reached through net.Pipe.
func execHarness(t *testing.T, c agent.Client) *rpc.Client {
	t.Helper()
	srv := rpc.NewServer(rpc.ServerOptions{})
	srv.HandleStream(api.MethodVMExec, rpc.TypedStream(func(ctx context.Context, p api.VMExecParams, st *rpc.Stream) (*api.VMExecResult, error) {
		return execThroughAgent(ctx, slog.New(slog.DiscardHandler), c, p, st)
	}))
	sock := filepath.Join(t.TempDir(), "d.sock")
	ln, err := rpc.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = srv.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return rpc.NewClient(sock)
}

func fakeAgent(t *testing.T) agent.Client {
	t.Helper()
	gs := agenttest.NewServer(&agenttest.FakeSystem{}, t.TempDir())
	ctx, cancel := context.WithCancel(context.Background())
	c := agent.NewConn(func(context.Context) (io.ReadWriteCloser, error) {
		host, guest := net.Pipe()
		go func() { _ = gs.Serve(ctx, guest); guest.Close() }()
		return host, nil
	}, agenttest.Token, "pipe")
	t.Cleanup(func() { c.Close(); cancel() })
	return c
}

// runExec runs p through the stream, feeding stdin, sending ctls once
// output contains trigger, and returns stdout, stderr and the answer.
func runExec(t *testing.T, rc *rpc.Client, p api.VMExecParams, stdin string, trigger string, ctls ...string) (string, string, *api.VMExecResult, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := rc.OpenStream(ctx, api.MethodVMExec, p)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if p.Stdin {
		go func() {
			_ = st.Send(ctx, rpc.StreamMsg{Ch: api.ExecStdin, Data: []byte(stdin)})
			_ = st.Send(ctx, rpc.StreamMsg{Ch: api.ExecStdin, EOF: true})
		}()
	}
	var out, errb bytes.Buffer
	sent := false
	for {
		m, err := st.Recv(ctx)
		if err != nil {
			break
		}
		switch m.Ch {
		case api.ExecStdout:
			out.Write(m.Data)
		case api.ExecStderr:
			errb.Write(m.Data)
		}
		if !sent && trigger != "" && strings.Contains(out.String(), trigger) {
			sent = true
			for _, c := range ctls {
				if err := st.Send(ctx, rpc.StreamMsg{Ctl: json.RawMessage(c)}); err != nil {
					t.Errorf("send %s: %v", c, err)
				}
			}
		}
	}
	var res api.VMExecResult
	err = st.Wait(ctx, &res)
	return out.String(), errb.String(), &res, err
}

func TestVMExecThroughAgent(t *testing.T) {
	rc := execHarness(t, fakeAgent(t))
	dir := t.TempDir()
	t.Run("streams and status", func(t *testing.T) {
		in := strings.Repeat("0123456789", 100_000) // 1 MB: beyond both windows
		out, errs, res, err := runExec(t, rc, api.VMExecParams{Ref: "vm", Dir: dir, Stdin: true, Env: []string{"X=42"},
			Argv: []string{"/bin/sh", "-c", `cat; echo "err $X $(pwd)" >&2; exit 3`}}, in, "")
		if err != nil {
			t.Fatal(err)
		}
		if out != in || errs != "err 42 "+dir+"\n" || res.Status != 3 || res.ExitCode != 3 || res.Signal != "" {
			t.Errorf("stdout %d bytes (want %d), stderr %q, result %+v", len(out), len(in), errs, res)
		}
	})
	t.Run("no stdin", func(t *testing.T) {
		out, _, res, err := runExec(t, rc, api.VMExecParams{Ref: "vm", Argv: []string{"/bin/sh", "-c", "wc -c"}}, "", "")
		if err != nil || strings.TrimSpace(out) != "0" || res.Status != 0 {
			t.Errorf("out %q res %+v err %v", out, res, err)
		}
	})
	t.Run("signal forwarded", func(t *testing.T) {
		// TERM rather than INT: a test started from a non-interactive
		// shell's background job inherits INT ignored.
		out, _, res, err := runExec(t, rc, api.VMExecParams{Ref: "vm",
			Argv: []string{"/bin/sh", "-c", "trap 'echo got-term; exit 9' TERM; echo up; sleep 60 & wait"}}, "", "up", `{"signal":"TERM"}`)
		if err != nil || !strings.Contains(out, "got-term") || res.Status != 9 {
			t.Errorf("out %q res %+v err %v", out, res, err)
		}
	})
	t.Run("signal behind unread stdin", func(t *testing.T) {
		// The command never reads its stdin: 2 MB of it wait in the
		// windows, and the signal sent after them still arrives.
		out, _, res, err := runExec(t, rc, api.VMExecParams{Ref: "vm", Stdin: true,
			Argv: []string{"/bin/sh", "-c", "trap 'echo got-term; exit 9' TERM; echo up; sleep 60 & wait"}}, strings.Repeat("x", 2<<20), "up", `{"signal":"TERM"}`)
		if err != nil || !strings.Contains(out, "got-term") || res.Status != 9 {
			t.Errorf("out %q res %+v err %v", out, res, err)
		}
	})
	t.Run("killed by a signal", func(t *testing.T) {
		_, _, res, err := runExec(t, rc, api.VMExecParams{Ref: "vm", Argv: []string{"/bin/sh", "-c", "echo up; sleep 60"}}, "", "up", `{"signal":"KILL"}`)
		if err != nil || res.Status != 128+9 || res.Signal != "KILL" || res.ExitCode != -1 {
			t.Errorf("res %+v err %v", res, err)
		}
	})
	t.Run("bad control", func(t *testing.T) {
		_, _, _, err := runExec(t, rc, api.VMExecParams{Ref: "vm", Argv: []string{"/bin/sh", "-c", "echo up; sleep 60"}}, "", "up", `{"signal":"STOP"}`)
		if rpc.CodeOf(err) != rpc.CodeBadRequest || !strings.Contains(err.Error(), "unknown signal") {
			t.Errorf("err %v", err)
		}
	})
	t.Run("not found", func(t *testing.T) {
		_, _, _, err := runExec(t, rc, api.VMExecParams{Ref: "vm", Argv: []string{"/nonexistent/x"}}, "", "")
		if rpc.CodeOf(err) != rpc.CodeOperationFailed || !strings.Contains(err.Error(), "in the guest") {
			t.Errorf("err %v", err)
		}
	})
	t.Run("bad params", func(t *testing.T) {
		for _, p := range []api.VMExecParams{{Argv: []string{"x"}}, {Ref: "vm"}, {Ref: "vm", Argv: []string{"x"}, Dir: "rel"},
			{Ref: "vm", Argv: []string{"x"}, Env: []string{"NOEQUALS"}}, {Ref: "vm", Argv: []string{strings.Repeat("a", api.MaxExecArgs+1)}}} {
			_, _, _, err := runExec(t, rc, p, "", "")
			if rpc.CodeOf(err) != rpc.CodeBadRequest {
				t.Errorf("%+v: err %v", p, err)
			}
		}
	})
}

// Hanging up kills the command's process group in the guest.
func TestVMExecHangUpKills(t *testing.T) {
	rc := execHarness(t, fakeAgent(t))
	pidFile := filepath.Join(t.TempDir(), "pid")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := rc.OpenStream(ctx, api.MethodVMExec, api.VMExecParams{Ref: "vm",
		Argv: []string{"/bin/sh", "-c", "sleep 120 & echo $! > " + pidFile + "; echo up; wait"}})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := st.Recv(ctx); err != nil || !strings.Contains(string(m.Data), "up") {
		t.Fatalf("first output %q %v", m.Data, err)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	st.Close()
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("guest process %d still runs after the client hung up", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// An agent that does not answer is not_supported (the CLI then uses ssh).
func TestVMExecSilentAgent(t *testing.T) {
	c := agent.NewConn(func(context.Context) (io.ReadWriteCloser, error) {
		host, guest := net.Pipe()
		go func() { _, _ = io.Copy(io.Discard, guest) }()
		return host, nil
	}, agenttest.Token, "silent")
	defer c.Close()
	rc := execHarness(t, c)
	_, _, _, err := runExec(t, rc, api.VMExecParams{Ref: "vm", Argv: []string{"true"}}, "", "")
	if rpc.CodeOf(err) != rpc.CodeNotSupported {
		t.Fatalf("err %v, want not_supported", err)
	}
}
