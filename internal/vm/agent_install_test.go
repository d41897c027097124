package vm

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/agent"
	"github.com/bangerdev/banger/internal/agent/agenttest"
	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/testreq"
	"github.com/bangerdev/banger/internal/workspace"
)

// pipeAgent is a Conn to an in-process agent server.
func pipeAgent(t *testing.T, srv *agent.Server) *agent.Conn {
	t.Helper()
	conn := agent.NewConn(func(ctx context.Context) (io.ReadWriteCloser, error) {
		host, guest := net.Pipe()
		go func() { _ = srv.Serve(ctx, guest); guest.Close() }()
		return host, nil
	}, agenttest.Token, "pipe")
	t.Cleanup(func() { conn.Close() })
	return conn
}

// An agent with the workspace-install builtin gets workspaces as native
// streams through agentInstaller; one without it gets the script.
func TestAgentInstallerPreparesNatively(t *testing.T) {
	testreq.Tools(t, "git", "tar", "sh")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	repo := t.TempDir()
	env := []string{"GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null", "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.org", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.org"}
	run := hostexec.Real{Env: append(os.Environ(), env...)}
	if err := os.WriteFile(filepath.Join(repo, "a.txt"), []byte("one\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"init", "-q"}, {"add", "a.txt"}, {"commit", "-qm", "one"}} {
		if _, err := run.Run(ctx, hostexec.Cmd{Name: "git", Args: append([]string{"-C", repo}, args...)}); err != nil {
			t.Fatal(err)
		}
	}
	for _, builtin := range []bool{true, false} {
		srv := agenttest.NewServer(&agenttest.FakeSystem{}, t.TempDir())
		if builtin {
			srv.Builtins = map[string]agent.Builtin{agent.BuiltinWorkspaceInstall: workspace.InstallCommand}
		}
		conn := pipeAgent(t, srv)
		h, err := conn.Ping(ctx)
		if err != nil {
			t.Fatal(err)
		}
		r := agentRunner(h, agentRemote{c: conn})
		if _, ok := r.(workspace.Installer); ok != builtin {
			t.Fatalf("builtin %v: runner %T", builtin, r)
		}
		snap, err := workspace.Inspect(ctx, run, repo, workspace.Options{})
		if err != nil {
			t.Fatal(err)
		}
		dest := filepath.Join(t.TempDir(), "ws")
		st, err := workspace.Prepare(ctx, r, snap, dest)
		if err != nil || st.Native != builtin {
			t.Fatalf("builtin %v: prepare %+v %v", builtin, st, err)
		}
		if builtin && (st.Guest == nil || st.Guest.GitRuns != 0) {
			t.Fatalf("native install reported %+v", st.Guest)
		}
		if data, err := os.ReadFile(filepath.Join(dest, "a.txt")); err != nil || string(data) != "one\n" {
			t.Fatalf("a.txt: %q %v", data, err)
		}
	}
}

// The template warm-up runs the install builtin on WarmStream, into
// warmDir, then the shell warm-up.
func TestWarmGuest(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var mu sync.Mutex
	var got []string
	var stdin []byte
	srv := agenttest.NewServer(&agenttest.FakeSystem{}, t.TempDir())
	srv.Builtins = map[string]agent.Builtin{agent.BuiltinWorkspaceInstall: func(ctx context.Context, args []string, in io.Reader, stdout, stderr io.Writer) int {
		data, _ := io.ReadAll(in)
		mu.Lock()
		got, stdin = args, data
		mu.Unlock()
		return 0
	}}
	warmGuest(ctx, pipeAgent(t, srv), slog.New(slog.DiscardHandler))
	mu.Lock()
	defer mu.Unlock()
	want := workspace.InstallArgs(workspace.InstallRequest{Dest: warmDir, Replace: true})
	if len(got) != 1 || got[0] != want[0] || !bytes.Equal(stdin, workspace.WarmStream()) {
		t.Fatalf("install builtin got %q and %d bytes, want %q and the warm stream", got, len(stdin), want)
	}
}
