package agent_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/agent"
	"github.com/bangerdev/banger/internal/agent/agenttest"
)

func errorsIs(err, target error) bool { return errors.Is(err, target) }

// rawSession serves one session on a pipe and returns the host end.
func rawSession(t *testing.T) (net.Conn, *bufio.Reader) {
	t.Helper()
	host, guest := net.Pipe()
	srv := agenttest.NewServer(&agenttest.FakeSystem{}, t.TempDir())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), guest) }()
	t.Cleanup(func() {
		host.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("session did not end after the host closed")
		}
	})
	_ = host.SetDeadline(time.Now().Add(10 * time.Second))
	return host, bufio.NewReaderSize(host, agent.MaxFrame)
}

func send(t *testing.T, c net.Conn, line string) {
	t.Helper()
	if _, err := c.Write([]byte(line + "\n")); err != nil {
		t.Fatal(err)
	}
}

func recv(t *testing.T, r *bufio.Reader) *agent.Frame {
	t.Helper()
	line, err := r.ReadBytes('\n')
	if err != nil {
		t.Fatal(err)
	}
	f, err := agent.DecodeFrame(line[:len(line)-1])
	if err != nil {
		t.Fatalf("guest sent %q: %v", line, err)
	}
	return f
}

func frame(id uint64, kind, token string, v int) string {
	b, _ := json.Marshal(agent.Frame{V: v, ID: id, Kind: kind, Token: token})
	return string(b)
}

func TestServerAuth(t *testing.T) {
	c, r := rawSession(t)
	cases := []struct {
		name, line string
		id         uint64
		code       string
	}{
		{"no token", frame(1, agent.KindPing, "", agent.Protocol), 1, agent.CodeUnauthorized},
		{"wrong token", frame(2, agent.KindPing, strings.Repeat("0", 64), agent.Protocol), 2, agent.CodeUnauthorized},
		{"token prefix", frame(3, agent.KindPing, agenttest.Token[:63], agent.Protocol), 3, agent.CodeUnauthorized},
		{"token longer", frame(4, agent.KindPing, agenttest.Token+"0", agent.Protocol), 4, agent.CodeUnauthorized},
		{"wrong version", frame(5, agent.KindPing, agenttest.Token, agent.Protocol+1), 5, agent.CodeBadVersion},
		{"not a request", frame(6, agent.KindResult, agenttest.Token, agent.Protocol), 6, agent.CodeBadRequest},
		{"garbage", "\x00\xffnot json at all", 0, agent.CodeBadRequest},
		{"unknown kind", `{"v":1,"id":7,"kind":"reboot","token":"` + agenttest.Token + `"}`, 0, agent.CodeBadRequest},
		{"no id", `{"v":1,"kind":"ping","token":"` + agenttest.Token + `"}`, 0, agent.CodeBadRequest},
		{"bad identity", `{"v":1,"id":8,"kind":"identity","token":"` + agenttest.Token + `","body":{"hostname":"-x"}}`, 8, agent.CodeBadRequest},
		{"identity not an object", `{"v":1,"id":9,"kind":"identity","token":"` + agenttest.Token + `","body":[1]}`, 9, agent.CodeBadRequest},
	}
	for _, tc := range cases {
		send(t, c, tc.line)
		f := recv(t, r)
		if f.Kind != agent.KindError || f.ID != tc.id || f.Error.Code != tc.code {
			t.Errorf("%s: got %+v (error %+v), want error %s for id %d", tc.name, f, f.Error, tc.code, tc.id)
		}
	}
	// The session survived all of it.
	send(t, c, frame(10, agent.KindPing, agenttest.Token, agent.Protocol))
	if f := recv(t, r); f.Kind != agent.KindResult || f.ID != 10 {
		t.Fatalf("ping after rejects: %+v", f)
	}
}

func TestServerOversizedFrame(t *testing.T) {
	c, r := rawSession(t)
	big := `{"v":1,"id":1,"kind":"ping","token":"` + agenttest.Token + `","body":"` + strings.Repeat("x", agent.MaxFrame) + `"}`
	go func() {
		_, _ = c.Write([]byte(big + "\n" + frame(2, agent.KindPing, agenttest.Token, agent.Protocol) + "\n"))
	}()
	f := recv(t, r)
	if f.Kind != agent.KindError || f.Error.Code != agent.CodeTooLarge || f.ID != 0 {
		t.Fatalf("oversized frame: got %+v", f)
	}
	if f := recv(t, r); f.Kind != agent.KindResult || f.ID != 2 {
		t.Fatalf("frame after the oversized one: %+v", f)
	}
}

func TestServerTokenRotation(t *testing.T) {
	c, r := rawSession(t)
	newTok := strings.Repeat("ab", 32)
	body, _ := json.Marshal(agent.Identity{Token: newTok})
	f := agent.Frame{V: agent.Protocol, ID: 1, Kind: agent.KindIdentity, Token: agenttest.Token, Body: body}
	b, _ := json.Marshal(f)
	send(t, c, string(b))
	if got := recv(t, r); got.Kind != agent.KindResult {
		t.Fatalf("identity: %+v %+v", got, got.Error)
	}
	send(t, c, frame(2, agent.KindPing, agenttest.Token, agent.Protocol))
	if got := recv(t, r); got.Kind != agent.KindError || got.Error.Code != agent.CodeUnauthorized {
		t.Fatalf("old token after rotation: %+v", got)
	}
	send(t, c, frame(3, agent.KindPing, newTok, agent.Protocol))
	if got := recv(t, r); got.Kind != agent.KindResult {
		t.Fatalf("new token: %+v %+v", got, got.Error)
	}
}

func TestServerEmptyTokenRejectsAll(t *testing.T) {
	host, guest := net.Pipe()
	defer host.Close()
	srv := &agent.Server{System: &agenttest.FakeSystem{}}
	go srv.Serve(context.Background(), guest)
	_ = host.SetDeadline(time.Now().Add(5 * time.Second))
	send(t, host, frame(1, agent.KindPing, "", agent.Protocol))
	if f := recv(t, bufio.NewReader(host)); f.Kind != agent.KindError || f.Error.Code != agent.CodeUnauthorized {
		t.Fatalf("got %+v", f)
	}
}

// recordingConn keeps a copy of what the host sent.
type recordingConn struct {
	net.Conn
	mu  sync.Mutex
	got bytes.Buffer
}

func (r *recordingConn) Read(p []byte) (int, error) {
	n, err := r.Conn.Read(p)
	r.mu.Lock()
	r.got.Write(p[:n])
	r.mu.Unlock()
	return n, err
}

// recordedConn is a Conn to srv over a pipe, and what the host sent on
// its last session so far.
func recordedConn(t *testing.T, srv *agent.Server) (*agent.Conn, func() string) {
	t.Helper()
	var mu sync.Mutex
	var rec *recordingConn
	dial := func(context.Context) (io.ReadWriteCloser, error) {
		host, guest := net.Pipe()
		r := &recordingConn{Conn: guest}
		mu.Lock()
		rec = r
		mu.Unlock()
		go srv.Serve(context.Background(), r)
		return host, nil
	}
	c := agent.NewConn(dial, agenttest.Token, "pipe")
	t.Cleanup(func() { c.Close() })
	return c, func() string {
		mu.Lock()
		r := rec
		mu.Unlock()
		if r == nil {
			return ""
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.got.String()
	}
}

// TestExecStdinEncoding: stdin travels as raw payloads to an agent that
// reports FeatureBinary and as base64 to one that does not, with the same
// bytes arriving either way; output comes back raw when asked.
func TestExecStdinEncoding(t *testing.T) {
	in := make([]byte, 3*agent.RawChunkSize+123)
	for i := range in {
		in[i] = byte(i*7 + i>>9)
	}
	for _, tc := range []struct {
		name     string
		features []string
		raw      bool
	}{{"binary agent", nil, true}, {"older agent", []string{agent.FeatureSignal}, false}} {
		t.Run(tc.name, func(t *testing.T) {
			srv := agenttest.NewServer(&agenttest.FakeSystem{}, t.TempDir())
			srv.Features = tc.features
			c, sent := recordedConn(t, srv)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var out bytes.Buffer
			res, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"cat"}, Stdin: bytes.NewReader(in), Stdout: &out})
			if err != nil || res.ExitCode != 0 {
				t.Fatalf("exec: %+v %v", res, err)
			}
			if !bytes.Equal(out.Bytes(), in) {
				t.Fatalf("%d bytes back of %d, or different", out.Len(), len(in))
			}
			rawFrames := strings.Count(sent(), `"kind":"stdin","token":"`+agenttest.Token+`","size":`)
			b64Frames := strings.Count(sent(), `"kind":"stdin","token":"`+agenttest.Token+`","data":`)
			if tc.raw && (rawFrames != 4 || b64Frames != 0) || !tc.raw && (rawFrames != 0 || b64Frames < len(in)/agent.ChunkSize) {
				t.Fatalf("stdin frames: %d raw, %d base64", rawFrames, b64Frames)
			}
		})
	}
}

// TestServerRawStdinWithWrongToken: a payload announced by a frame without
// the token is not skipped, so it cannot hide the frames after it.
func TestServerRawStdinWithWrongToken(t *testing.T) {
	c, r := rawSession(t)
	inner := frame(5, agent.KindPing, agenttest.Token, agent.Protocol) + "\n"
	hdr := fmt.Sprintf(`{"v":1,"id":4,"kind":"stdin","token":"%s","size":%d}`, strings.Repeat("0", 64), len(inner))
	if _, err := c.Write([]byte(hdr + "\n" + inner)); err != nil {
		t.Fatal(err)
	}
	if f := recv(t, r); f.Kind != agent.KindError || f.ID != 4 || f.Error.Code != agent.CodeUnauthorized {
		t.Fatalf("header with a wrong token: %+v", f)
	}
	if f := recv(t, r); f.Kind != agent.KindResult || f.ID != 5 {
		t.Fatalf("the frame in the refused payload: %+v", f)
	}
}

// pipeConn is a Conn to an in-process agent over net.Pipe.
func pipeConn(t *testing.T, srv *agent.Server) *agent.Conn {
	t.Helper()
	dial := func(context.Context) (io.ReadWriteCloser, error) {
		host, guest := net.Pipe()
		go srv.Serve(context.Background(), guest)
		return host, nil
	}
	c := agent.NewConn(dial, agenttest.Token, "pipe")
	t.Cleanup(func() { c.Close() })
	return c
}

// loopbackDial reaches the in-process agent's TCP stdin port, counting
// the dials.
func loopbackDial(n *atomic.Int32) func(context.Context, int) (net.Conn, error) {
	return func(ctx context.Context, port int) (net.Conn, error) {
		n.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", port))
	}
}

// TestExecStdinTCP: with StdinDial, stdin goes over one TCP connection
// (no stdin frames at all), bytes intact; a dial that fails falls back to
// frames; a process that stops reading still ends cleanly.
func TestExecStdinTCP(t *testing.T) {
	in := make([]byte, 5<<20+77)
	for i := range in {
		in[i] = byte(i*13 + i>>11)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, sent := recordedConn(t, agenttest.NewServer(&agenttest.FakeSystem{}, t.TempDir()))
	var dials atomic.Int32
	var out bytes.Buffer
	res, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"cat"}, Stdin: bytes.NewReader(in), Stdout: &out, StdinDial: loopbackDial(&dials)})
	if err != nil || res.ExitCode != 0 || !bytes.Equal(out.Bytes(), in) {
		t.Fatalf("exec: %+v %v, %d bytes back of %d", res, err, out.Len(), len(in))
	}
	frames := strings.Count(sent(), `"kind":"stdin"`)
	if dials.Load() != 1 || frames != 0 {
		t.Fatalf("%d dials, %d stdin frames; want 1 and 0", dials.Load(), frames)
	}

	t.Run("dial fails", func(t *testing.T) {
		c := pipeConn(t, agenttest.NewServer(&agenttest.FakeSystem{}, t.TempDir()))
		refuse := func(context.Context, int) (net.Conn, error) { return nil, errors.New("no route") }
		var out bytes.Buffer
		res, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"cat"}, Stdin: bytes.NewReader(in), Stdout: &out, StdinDial: refuse})
		if err != nil || res.ExitCode != 0 || !bytes.Equal(out.Bytes(), in) {
			t.Fatalf("exec: %+v %v, %d bytes back", res, err, out.Len())
		}
	})
	t.Run("process stops reading", func(t *testing.T) {
		c := pipeConn(t, agenttest.NewServer(&agenttest.FakeSystem{}, t.TempDir()))
		var out bytes.Buffer
		res, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"sh", "-c", "head -c 10 >/dev/null; echo done"}, Stdin: bytes.NewReader(in), Stdout: &out, StdinDial: loopbackDial(new(atomic.Int32))})
		if err != nil || res.ExitCode != 0 || out.String() != "done\n" {
			t.Fatalf("exec: %+v %v %q", res, err, out.String())
		}
		if _, err := c.Ping(ctx); err != nil {
			t.Fatalf("ping after: %v", err)
		}
	})
}

// TestServerTCPStdinNonce: the guest's stdin port takes only a connection
// that starts with the nonce sent over the agent channel.
func TestServerTCPStdinNonce(t *testing.T) {
	c, r := rawSession(t)
	// A malformed nonce, or one without stdin, is refused before anything
	// runs.
	for i, body := range []string{`{"argv":["touch","/nonexistent/x"],"stdin":true,"stdin_tcp":"abcd"}`,
		fmt.Sprintf(`{"argv":["true"],"stdin_tcp":"%s"}`, strings.Repeat("ab", agent.NonceBytes))} {
		send(t, c, fmt.Sprintf(`{"v":1,"id":%d,"kind":"exec","token":"%s","body":%s}`, 20+i, agenttest.Token, body))
		if f := recv(t, r); f.Kind != agent.KindError || f.Error.Code != agent.CodeBadRequest {
			t.Fatalf("bad stdin_tcp %s: %+v", body, f)
		}
	}
	nonce := strings.Repeat("ab", agent.NonceBytes)
	body := fmt.Sprintf(`{"argv":["cat"],"stdin":true,"stdin_tcp":"%s"}`, nonce)
	send(t, c, fmt.Sprintf(`{"v":1,"id":9,"kind":"exec","token":"%s","body":%s}`, agenttest.Token, body))
	f := recv(t, r)
	if f.Kind != agent.KindStdinPort || f.ID != 9 || f.N <= 0 {
		t.Fatalf("want a stdin port, got %+v", f)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", f.N)
	// Without the nonce: closed, nothing reaches the process.
	bad, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = bad.Write([]byte(strings.Repeat("x", agent.NonceBytes) + "intruder"))
	_ = bad.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := bad.Read(make([]byte, 1)); err == nil {
		t.Fatal("a connection without the nonce was kept")
	}
	bad.Close()
	good, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := hex.DecodeString(nonce)
	_, _ = good.Write(append(raw, "hello"...))
	good.(*net.TCPConn).CloseWrite()
	var got strings.Builder
	for {
		f := recv(t, r)
		switch f.Kind {
		case agent.KindStdout:
			got.Write(f.Data)
			continue
		case agent.KindResult:
		default:
			t.Fatalf("unexpected %+v", f)
		}
		break
	}
	good.Close()
	if got.String() != "hello" {
		t.Fatalf("stdout %q, want only the nonce holder's bytes", got.String())
	}
	// Not listening any more.
	if cn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		cn.Close()
		t.Fatal("the stdin port still accepts")
	}
}
