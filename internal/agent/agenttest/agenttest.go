// Package agenttest is the conformance suite every agent.Client transport
// passes (see agent.Client for the contract), plus a fake System.
//
// A transport test provides a Harness: a running guest side (normally an
// agent.Server with the suite's System behind the transport under test) and
// a way to make Clients for it with any token.
package agenttest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/agent"
)

// Token is the token the suite's guest side expects.
const Token = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// FakeSystem is an agent.System that records identities and serves a fixed
// port list.
type FakeSystem struct {
	mu         sync.Mutex
	Identities []agent.Identity
	PortList   []agent.Port
	Halts      int
	OnHalt     func()
}

// Health implements agent.System.
func (f *FakeSystem) Health(ctx context.Context) (agent.Health, error) {
	return agent.Health{Agent: "test", Hostname: "fake", BootID: "boot-1", Time: time.Now()}, nil
}

// ApplyIdentity implements agent.System.
func (f *FakeSystem) ApplyIdentity(ctx context.Context, id agent.Identity) (agent.IdentityResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Identities = append(f.Identities, id)
	return agent.IdentityResult{Hostname: id.Hostname, MachineID: id.MachineID}, nil
}

// Ports implements agent.System.
func (f *FakeSystem) Ports(ctx context.Context) ([]agent.Port, error) {
	return f.PortList, nil
}

// Halt implements agent.System: it counts, and runs OnHalt when set (a
// fake VMM exits there).
func (f *FakeSystem) Halt(ctx context.Context) error {
	f.mu.Lock()
	f.Halts++
	on := f.OnHalt
	f.mu.Unlock()
	if on != nil {
		on()
	}
	return nil
}

// HaltCount returns how many halts were asked for.
func (f *FakeSystem) HaltCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.Halts
}

// NewServer returns the guest side the suite expects: Token, sys, commands
// run in dir.
func NewServer(sys agent.System, dir string) *agent.Server {
	return &agent.Server{Token: Token, System: sys, Transport: "test", ExecDir: dir}
}

// Harness is one transport under test.
type Harness struct {
	// Client returns a new Client for the guest side, authenticating with
	// token. The suite closes it.
	Client func(t *testing.T, token string) agent.Client
	// Drop breaks the current connection from the guest side (the suite
	// checks the client reconnects). Nil skips that test.
	Drop func(t *testing.T)
	// System is the System behind the guest side.
	System *FakeSystem
}

// Run runs the conformance suite.
func Run(t *testing.T, h Harness) {
	ctx := func(t *testing.T) context.Context {
		c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		t.Cleanup(cancel)
		return c
	}
	client := func(t *testing.T) agent.Client {
		c := h.Client(t, Token)
		t.Cleanup(func() { c.Close() })
		return c
	}
	t.Run("Ping", func(t *testing.T) {
		hl, err := client(t).Ping(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if hl.Protocol != agent.Protocol || hl.Hostname != "fake" || hl.BootID != "boot-1" {
			t.Fatalf("health = %+v", hl)
		}
	})
	t.Run("BadToken", func(t *testing.T) {
		c := h.Client(t, strings.Repeat("f", 64))
		defer c.Close()
		_, err := c.Ping(ctx(t))
		if !agent.IsCode(err, agent.CodeUnauthorized) {
			t.Fatalf("ping with a wrong token: err = %v, want %s", err, agent.CodeUnauthorized)
		}
		if _, err := c.Exec(ctx(t), agent.ExecRequest{Argv: []string{"true"}}); !agent.IsCode(err, agent.CodeUnauthorized) {
			t.Fatalf("exec with a wrong token: err = %v", err)
		}
	})
	t.Run("EmptyToken", func(t *testing.T) {
		c := h.Client(t, "")
		defer c.Close()
		if _, err := c.Ping(ctx(t)); !agent.IsCode(err, agent.CodeUnauthorized) {
			t.Fatalf("ping without a token: err = %v", err)
		}
	})
	t.Run("ApplyIdentity", func(t *testing.T) {
		res, err := client(t).ApplyIdentity(ctx(t), agent.Identity{Hostname: "vm1", MachineID: strings.Repeat("a", 32), Entropy: bytes.Repeat([]byte{1}, 32)})
		if err != nil {
			t.Fatal(err)
		}
		if res.Hostname != "vm1" || res.MachineID != strings.Repeat("a", 32) {
			t.Fatalf("result = %+v", res)
		}
		h.System.mu.Lock()
		n := len(h.System.Identities)
		last := h.System.Identities[n-1]
		h.System.mu.Unlock()
		if last.Hostname != "vm1" || len(last.Entropy) != 32 {
			t.Fatalf("system got %+v", last)
		}
	})
	t.Run("ApplyIdentityInvalid", func(t *testing.T) {
		_, err := client(t).ApplyIdentity(ctx(t), agent.Identity{Hostname: "bad name!"})
		if !agent.IsCode(err, agent.CodeBadRequest) {
			t.Fatalf("err = %v, want %s", err, agent.CodeBadRequest)
		}
	})
	t.Run("Ports", func(t *testing.T) {
		p, err := client(t).Ports(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if len(p) != len(h.System.PortList) || (len(p) > 0 && p[0] != h.System.PortList[0]) {
			t.Fatalf("ports = %+v, want %+v", p, h.System.PortList)
		}
	})
	t.Run("Halt", func(t *testing.T) {
		before := h.System.HaltCount()
		if err := client(t).Halt(ctx(t)); err != nil {
			t.Fatal(err)
		}
		if got := h.System.HaltCount(); got != before+1 {
			t.Fatalf("halts = %d, want %d", got, before+1)
		}
	})
	t.Run("ExecStreams", func(t *testing.T) {
		var out, errb bytes.Buffer
		res, err := client(t).Exec(ctx(t), agent.ExecRequest{
			Argv:   []string{"sh", "-c", "echo out; echo err >&2; exit 3"},
			Stdout: &out, Stderr: &errb,
		})
		if err != nil {
			t.Fatal(err)
		}
		if res.ExitCode != 3 || out.String() != "out\n" || errb.String() != "err\n" {
			t.Fatalf("exit %d stdout %q stderr %q", res.ExitCode, out.String(), errb.String())
		}
	})
	t.Run("ExecEnvDir", func(t *testing.T) {
		var out bytes.Buffer
		_, err := client(t).Exec(ctx(t), agent.ExecRequest{
			Argv: []string{"sh", "-c", "echo $FOO; pwd"}, Env: []string{"FOO=bar"}, Dir: "/", Stdout: &out,
		})
		if err != nil {
			t.Fatal(err)
		}
		if out.String() != "bar\n/\n" {
			t.Fatalf("stdout %q", out.String())
		}
	})
	t.Run("ExecStdinLarge", func(t *testing.T) {
		// More than the stdin window and the frame limit, so flow control
		// and chunking both run.
		in := bytes.Repeat([]byte("0123456789abcdef"), (3*agent.StdinWindow)/16+7)
		var out bytes.Buffer
		res, err := client(t).Exec(ctx(t), agent.ExecRequest{
			Argv: []string{"cat"}, Stdin: bytes.NewReader(in), Stdout: &out,
		})
		if err != nil {
			t.Fatal(err)
		}
		if res.ExitCode != 0 || !bytes.Equal(out.Bytes(), in) {
			t.Fatalf("exit %d, %d bytes back of %d", res.ExitCode, out.Len(), len(in))
		}
	})
	t.Run("ExecStdinNotRead", func(t *testing.T) {
		// A process that never reads stdin must not wedge the channel.
		c := client(t)
		in := io.LimitReader(zeroReader{}, 4*agent.StdinWindow)
		res, err := c.Exec(ctx(t), agent.ExecRequest{Argv: []string{"sh", "-c", "exec 0<&-; exit 0"}, Stdin: in})
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("exec: %+v %v", res, err)
		}
		if _, err := c.Ping(ctx(t)); err != nil {
			t.Fatalf("ping after: %v", err)
		}
	})
	t.Run("ExecNotFound", func(t *testing.T) {
		_, err := client(t).Exec(ctx(t), agent.ExecRequest{Argv: []string{"/nonexistent/banger-test"}})
		if !agent.IsCode(err, agent.CodeFailed) {
			t.Fatalf("err = %v, want %s", err, agent.CodeFailed)
		}
	})
	t.Run("ExecCancel", func(t *testing.T) {
		c := client(t)
		cctx, cancel := context.WithCancel(ctx(t))
		started := make(chan struct{})
		var once sync.Once
		go func() {
			<-started
			cancel()
		}()
		_, err := c.Exec(cctx, agent.ExecRequest{
			Argv:   []string{"sh", "-c", "echo up; sleep 60"},
			Stdout: writerFunc(func(p []byte) { once.Do(func() { close(started) }) }),
		})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
		// The channel still works.
		if _, err := c.Ping(ctx(t)); err != nil {
			t.Fatalf("ping after cancel: %v", err)
		}
	})
	t.Run("ExecSignal", func(t *testing.T) {
		c := client(t)
		hl, err := c.Ping(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if !hl.HasFeature(agent.FeatureSignal) {
			t.Fatalf("health lists no %q feature: %+v", agent.FeatureSignal, hl)
		}
		sigs := make(chan string, 2)
		var once sync.Once
		var out strings.Builder
		// The trap proves the shell got the signal (not a kill); the
		// child sleep shares its process group, so it ends too. TERM,
		// not INT: a test run from a non-interactive shell's background
		// job inherits INT ignored, and sh cannot trap it then.
		res, err := c.Exec(ctx(t), agent.ExecRequest{
			Argv: []string{"sh", "-c", "trap 'echo got-term; exit 7' TERM; echo up; sleep 60 & wait"},
			Stdout: writerFunc(func(p []byte) {
				out.Write(p)
				once.Do(func() { sigs <- "BOGUS"; sigs <- "TERM" })
			}),
			Signals: sigs,
		})
		if err != nil {
			t.Fatal(err)
		}
		if res.ExitCode != 7 || !strings.Contains(out.String(), "got-term") {
			t.Fatalf("after TERM: %+v, output %q", res, out.String())
		}
	})
	t.Run("Concurrent", func(t *testing.T) {
		c := client(t)
		var wg sync.WaitGroup
		errs := make(chan error, 16)
		for i := range 8 {
			wg.Add(2)
			go func() {
				defer wg.Done()
				var out bytes.Buffer
				want := fmt.Sprintf("n%d", i)
				res, err := c.Exec(ctx(t), agent.ExecRequest{Argv: []string{"sh", "-c", "sleep 0.05; echo " + want}, Stdout: &out})
				if err == nil && (res.ExitCode != 0 || strings.TrimSpace(out.String()) != want) {
					err = fmt.Errorf("exec %d: exit %d out %q", i, res.ExitCode, out.String())
				}
				errs <- err
			}()
			go func() {
				defer wg.Done()
				_, err := c.Ping(ctx(t))
				errs <- err
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
	})
	t.Run("Reconnect", func(t *testing.T) {
		if h.Drop == nil {
			t.Skip("transport cannot drop connections")
		}
		c := client(t)
		if _, err := c.Ping(ctx(t)); err != nil {
			t.Fatal(err)
		}
		h.Drop(t)
		// The first call may see the broken session; a later one reconnects.
		deadline := time.Now().Add(10 * time.Second)
		for {
			_, err := c.Ping(ctx(t))
			if err == nil {
				break
			}
			if !errors.Is(err, agent.ErrUnavailable) {
				t.Fatalf("ping after drop: %v (want nil or ErrUnavailable)", err)
			}
			if time.Now().After(deadline) {
				t.Fatalf("no reconnect: %v", err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	t.Run("Closed", func(t *testing.T) {
		c := h.Client(t, Token)
		c.Close()
		if _, err := c.Ping(ctx(t)); !errors.Is(err, agent.ErrClosed) {
			t.Fatalf("ping after close: %v", err)
		}
	})
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

type writerFunc func([]byte)

func (f writerFunc) Write(p []byte) (int, error) {
	f(p)
	return len(p), nil
}
