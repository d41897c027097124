package vm

import (
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/agent"
	"github.com/bangerdev/banger/internal/agent/agenttest"
)

// agentRemote meets the workspace.Remote contract on a real agent session
// (the guest side in process, over a pipe): stdin streamed in full, the two
// streams kept apart, exit statuses and signals reported as ssh does.
func TestAgentRemoteRunsLikeSSH(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv := agenttest.NewServer(&agenttest.FakeSystem{}, t.TempDir())
	conn := agent.NewConn(func(ctx context.Context) (io.ReadWriteCloser, error) {
		host, guest := net.Pipe()
		go func() { _ = srv.Serve(ctx, guest); guest.Close() }()
		return host, nil
	}, agenttest.Token, "pipe")
	defer conn.Close()
	for _, r := range []agentRemote{{c: conn}, {c: conn, ip: "127.0.0.1"}} {
		t.Run("ip="+r.ip, func(t *testing.T) { checkRemote(ctx, t, r) })
	}
}

// checkRemote runs the workspace.Remote contract checks on r (stdin as
// frames, or over TCP to r.ip).
func checkRemote(ctx context.Context, t *testing.T, r agentRemote) {

	// 3 MiB of stdin: more than the agent's unacknowledged-stdin window.
	in := bytes.Repeat([]byte("0123456789abcdef"), 3<<16)
	var out, errb bytes.Buffer
	st, err := r.Run(ctx, "wc -c; echo oops >&2; exit 3", bytes.NewReader(in), &out, &errb)
	if err != nil || st != 3 {
		t.Fatalf("status %d, err %v", st, err)
	}
	if got := strings.TrimSpace(out.String()); got != "3145728" {
		t.Errorf("stdout %q: the command did not get all of stdin", got)
	}
	if errb.String() != "oops\n" {
		t.Errorf("stderr %q", errb.String())
	}
	// nil stdin is empty; nil writers discard.
	if st, err := r.Run(ctx, "cat; echo x", nil, nil, nil); err != nil || st != 0 {
		t.Errorf("nil stdin: %d %v", st, err)
	}
	// A command killed by a signal is a non-zero status, not an error.
	if st, err := r.Run(ctx, "kill -9 $$", nil, nil, nil); err != nil || st == 0 {
		t.Errorf("killed: %d %v", st, err)
	}
	// A context that ends stops the command promptly.
	cctx, ccancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer ccancel()
	start := time.Now()
	if _, err := r.Run(cctx, "sleep 30", nil, nil, nil); err == nil {
		t.Error("a cancelled command returned no error")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cancel took %s", d)
	}
}
