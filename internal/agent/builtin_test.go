package agent_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/agent"
	"github.com/bangerdev/banger/internal/agent/agenttest"
)

// sumBuiltin reads stdin (up to args[0] bytes when given), prints its
// length and SHA-256 on stdout, its arguments on stderr, and exits with
// status 7.
func sumBuiltin(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	r := stdin
	if len(args) > 0 {
		var n int64
		fmt.Sscan(args[0], &n)
		r = io.LimitReader(stdin, n)
	}
	h := sha256.New()
	n, _ := io.Copy(h, r)
	fmt.Fprintf(stdout, "%d %x", n, h.Sum(nil))
	fmt.Fprint(stderr, strings.Join(args, ","))
	return 7
}

func TestExecBuiltin(t *testing.T) {
	in := make([]byte, 3<<20+5)
	for i := range in {
		in[i] = byte(i*31 + i>>10)
	}
	sum := fmt.Sprintf("%d %x", len(in), sha256.Sum256(in))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	newSrv := func() *agent.Server {
		srv := agenttest.NewServer(&agenttest.FakeSystem{}, t.TempDir())
		srv.Builtins = map[string]agent.Builtin{"sum": sumBuiltin}
		return srv
	}
	c := pipeConn(t, newSrv())
	h, err := c.Ping(ctx)
	if err != nil || !h.HasFeature(agent.BuiltinFeature("sum")) || !h.HasFeature(agent.FeatureTCPStdin) {
		t.Fatalf("health %+v %v: want the builtin listed beside the features", h, err)
	}
	for _, tc := range []struct {
		name string
		dial bool
	}{{"frames", false}, {"tcp", true}} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			var dials atomic.Int32
			req := agent.ExecRequest{Argv: []string{"sum"}, Builtin: true, Stdin: bytes.NewReader(in), Stdout: &out, Stderr: &errb}
			if tc.dial {
				req.StdinDial = loopbackDial(&dials)
			}
			res, err := c.Exec(ctx, req)
			if err != nil || res.ExitCode != 7 || out.String() != sum {
				t.Fatalf("exec: %+v %v %q, want exit 7 and %q", res, err, out.String(), sum)
			}
			if tc.dial != (dials.Load() == 1) {
				t.Fatalf("%d dials", dials.Load())
			}
		})
	}
	t.Run("arguments", func(t *testing.T) {
		var out, errb bytes.Buffer
		res, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"sum", "3", "x y"}, Builtin: true, Stdin: strings.NewReader("abcdef"), Stdout: &out, Stderr: &errb})
		if err != nil || res.ExitCode != 7 || errb.String() != "3,x y" || !strings.HasPrefix(out.String(), "3 ") {
			t.Fatalf("exec: %+v %v out %q err %q", res, err, out.String(), errb.String())
		}
	})
	for _, dial := range []bool{false, true} {
		t.Run(fmt.Sprintf("stops reading early, tcp %v", dial), func(t *testing.T) {
			var out bytes.Buffer
			req := agent.ExecRequest{Argv: []string{"sum", "10"}, Builtin: true, Stdin: bytes.NewReader(in), Stdout: &out}
			if dial {
				req.StdinDial = loopbackDial(new(atomic.Int32))
			}
			res, err := c.Exec(ctx, req)
			if err != nil || res.ExitCode != 7 || !strings.HasPrefix(out.String(), "10 ") {
				t.Fatalf("exec: %+v %v %q", res, err, out.String())
			}
			if _, err := c.Ping(ctx); err != nil {
				t.Fatalf("ping after: %v", err)
			}
		})
	}
	t.Run("unknown builtin", func(t *testing.T) {
		_, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"cat"}, Builtin: true})
		if err == nil || !strings.Contains(err.Error(), `no builtin "cat"`) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("no builtins", func(t *testing.T) {
		c := pipeConn(t, agenttest.NewServer(&agenttest.FakeSystem{}, t.TempDir()))
		h, err := c.Ping(ctx)
		if err != nil || slices.ContainsFunc(h.Features, func(f string) bool { return strings.HasPrefix(f, "builtin:") }) {
			t.Fatalf("health %+v %v", h, err)
		}
	})
}
