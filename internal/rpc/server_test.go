package rpc

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/progress"
	"github.com/bangerdev/banger/internal/testreq"
)

// childEnv makes the test binary act as a one-shot client (see TestMain).
const childEnv = "BANGER_RPC_TEST_CHILD_SOCKET"

func TestMain(m *testing.M) {
	if sock := os.Getenv(childEnv); sock != "" {
		os.Exit(runChildClient(sock))
	}
	os.Exit(m.Run())
}

// runChildClient calls "ping" and prints the outcome as JSON on stdout.
func runChildClient(sock string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var res string
	err := NewClient(sock).Call(ctx, "ping", nil, &res)
	out := map[string]string{"result": res, "uid": fmt.Sprint(os.Getuid())}
	var re *Error
	if errors.As(err, &re) {
		out["code"], out["message"], out["op_id"] = string(re.Code), re.Message, re.OpID
	} else if err != nil {
		out["err"] = err.Error()
	}
	_ = json.NewEncoder(os.Stdout).Encode(out)
	return 0
}

// syncBuffer is a log sink safe for concurrent writes and reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) records(t *testing.T) []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(s.b.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

type testServer struct {
	sock   string
	srv    *Server
	logs   *syncBuffer
	cancel context.CancelFunc
	done   chan error
}

// start serves srv on a fresh socket; the server is stopped at cleanup.
func start(t *testing.T, opts ServerOptions, register func(s *Server)) *testServer {
	t.Helper()
	ts := &testServer{logs: &syncBuffer{}, done: make(chan error, 1)}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewJSONHandler(ts.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	ts.srv = NewServer(opts)
	register(ts.srv)
	ts.sock = filepath.Join(t.TempDir(), "test.sock")
	ln, err := Listen(ts.sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts.cancel = cancel
	go func() { ts.done <- ts.srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-ts.done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after shutdown")
		}
	})
	return ts
}

func (ts *testServer) client() *Client { return NewClient(ts.sock) }

// raw sends one raw line and returns every frame the server wrote.
func (ts *testServer) raw(t *testing.T, line string) []map[string]json.RawMessage {
	t.Helper()
	conn, err := net.Dial("unix", ts.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// The server may answer (and close) before reading everything, e.g.
	// for oversized requests: a failed write still leaves its answer.
	if _, err := io.WriteString(conn, line); err != nil {
		t.Logf("write: %v", err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var frames []map[string]json.RawMessage
	sc := bufio.NewScanner(conn)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var f map[string]json.RawMessage
		if err := json.Unmarshal(sc.Bytes(), &f); err != nil {
			t.Fatalf("frame %q: %v", sc.Text(), err)
		}
		frames = append(frames, f)
	}
	return frames
}

func echoServer(s *Server) {
	s.Handle("echo", Typed(func(ctx context.Context, p map[string]any) (map[string]any, error) {
		if p == nil {
			p = map[string]any{}
		}
		p["op_id"] = OpIDFrom(ctx)
		peer, ok := PeerFrom(ctx)
		p["peer_uid"], p["peer_ok"] = peer.UID, ok
		return p, nil
	}))
	s.Handle("fail", Typed(func(ctx context.Context, p struct{}) (any, error) {
		return nil, fmt.Errorf("vm ghost: %w", model.ErrNotFound)
	}))
	s.Handle("nothing", Typed(func(ctx context.Context, p struct{}) (any, error) { return nil, nil }))
}

func TestOpIDOnResultsAndErrors(t *testing.T) {
	ts := start(t, ServerOptions{}, echoServer)
	c := ts.client()
	ctx := context.Background()

	var res map[string]any
	if err := c.Call(WithOpID(ctx, "cli-op-7"), "echo", map[string]any{"x": "y"}, &res); err != nil {
		t.Fatal(err)
	}
	if res["x"] != "y" || res["op_id"] != "cli-op-7" || res["peer_ok"] != true || res["peer_uid"] != float64(os.Geteuid()) {
		t.Fatalf("result %v", res)
	}
	// Without a client op id the server makes one.
	if err := c.Call(ctx, "echo", nil, &res); err != nil {
		t.Fatal(err)
	}
	if id, _ := res["op_id"].(string); !strings.HasPrefix(id, "op-") {
		t.Fatalf("server op id %q", id)
	}

	err := c.Call(WithOpID(ctx, "cli-op-8"), "fail", nil, nil)
	var re *Error
	if !errors.As(err, &re) || re.Code != CodeNotFound || re.OpID != "cli-op-8" || re.Message != "vm ghost: not found" {
		t.Fatalf("error %#v", err)
	}
	if !errors.Is(err, model.ErrNotFound) {
		t.Fatal("client error does not match model.ErrNotFound")
	}
	err = c.Call(ctx, "fail", nil, nil)
	if !errors.As(err, &re) || !strings.HasPrefix(re.OpID, "op-") {
		t.Fatalf("server op id missing on error: %#v", err)
	}
	if err := c.Call(ctx, "nothing", nil, &res); err != nil {
		t.Fatal(err)
	}

	// The op id is on result frames too, and a malformed one is replaced.
	frames := ts.raw(t, `{"v":1,"method":"nothing","op_id":"x y"}`+"\n")
	if len(frames) != 1 || string(frames[0]["result"]) != "null" {
		t.Fatalf("frames %v", frames)
	}
	var id string
	_ = json.Unmarshal(frames[0]["op_id"], &id)
	if !strings.HasPrefix(id, "op-") {
		t.Fatalf("result frame op id %q", id)
	}

	// Each request is logged with method, op id, code and duration. The
	// record is written after the reply, so the client may see the reply
	// before it: wait for it a little.
	found := false
	for deadline := time.Now().Add(5 * time.Second); !found && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		for _, r := range ts.logs.records(t) {
			if r["msg"] == "rpc" && r["method"] == "fail" && r["op_id"] == "cli-op-8" && r["code"] == "not_found" && r["duration"] != nil {
				found = true
			}
		}
	}
	if !found {
		t.Fatalf("no log record for the failed call: %v", ts.logs.records(t))
	}
}

func TestProtocolErrors(t *testing.T) {
	ts := start(t, ServerOptions{Version: "v9.9.9"}, echoServer)
	check := func(line string, code Code, msg string) {
		t.Helper()
		frames := ts.raw(t, line)
		if len(frames) != 1 {
			t.Fatalf("%q: %d frames", line, len(frames))
		}
		var e Error
		if err := json.Unmarshal(frames[0]["error"], &e); err != nil {
			t.Fatalf("%q: %v (%s)", line, err, frames[0])
		}
		if e.Code != code || !strings.Contains(e.Message, msg) || !strings.HasPrefix(e.OpID, "op-") {
			t.Errorf("%q: got %+v, want %s containing %q with op id", line, e, code, msg)
		}
	}
	check(`{"v":2,"method":"echo"}`+"\n", CodeBadVersion, "client speaks protocol version 2, this server (version v9.9.9) speaks 1")
	check(`{"method":"echo"}`+"\n", CodeBadVersion, "no protocol version")
	check(`{"v":1,"method":"vm.explode"}`+"\n", CodeUnknownMethod, `"vm.explode"`)
	check(`{"v":1,"method":"echo","params":{"a":1},"bogus":1}`+"\n", CodeBadRequest, `"bogus"`)
	check("not json\n", CodeBadRequest, "malformed request")
	check(`{"v":1,"method":"fail","params":{"unexpected":true}}`+"\n", CodeBadRequest, `"unexpected"`)
	// A request larger than the cap is refused without buffering it all.
	big := `{"v":1,"method":"echo","params":{"x":"` + strings.Repeat("a", MaxRequestSize) + `"}}` + "\n"
	check(big, CodeBadRequest, "larger than 4 MiB")

	// The client sees bad_version as an *Error too.
	err := ts.client().Call(context.Background(), "vm.explode", nil, nil)
	if CodeOf(err) != CodeUnknownMethod {
		t.Fatalf("unknown method via client: %v", err)
	}
}

func TestEvents(t *testing.T) {
	const n = 20
	ts := start(t, ServerOptions{}, func(s *Server) {
		s.Handle("build", Typed(func(ctx context.Context, p struct{}) (string, error) {
			for i := range n {
				progress.Report(ctx, progress.Event{Stage: fmt.Sprintf("stage-%02d", i), Fraction: float64(i) / n})
			}
			return "built", nil
		}))
	})
	var got []progress.Event
	var res string
	err := ts.client().Call(context.Background(), "build", nil, &res, WithEvents(func(e progress.Event) {
		got = append(got, e)
	}))
	if err != nil || res != "built" {
		t.Fatalf("call: %q %v", res, err)
	}
	if len(got) != n {
		t.Fatalf("got %d events, want %d", len(got), n)
	}
	for i, e := range got {
		if e.Stage != fmt.Sprintf("stage-%02d", i) || e.Time.IsZero() {
			t.Fatalf("event %d out of order or incomplete: %+v", i, e)
		}
	}
	// Without events=true the server sends only the result.
	frames := ts.raw(t, `{"v":1,"method":"build"}`+"\n")
	if len(frames) != 1 || frames[0]["result"] == nil {
		t.Fatalf("unrequested events sent: %v", frames)
	}
	frames = ts.raw(t, `{"v":1,"method":"build","events":true}`+"\n")
	if len(frames) != n+1 || frames[0]["event"] == nil || frames[n]["result"] == nil {
		t.Fatalf("raw stream: %d frames", len(frames))
	}
}

func TestCancelOnHangUp(t *testing.T) {
	started := make(chan struct{}, 1)
	observed := make(chan time.Time, 1)
	ts := start(t, ServerOptions{}, func(s *Server) {
		s.Handle("slow", Typed(func(ctx context.Context, p struct{}) (any, error) {
			started <- struct{}{}
			select {
			case <-ctx.Done():
				observed <- time.Now()
				return nil, ctx.Err()
			case <-time.After(30 * time.Second):
				return "finished", nil
			}
		}))
	})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- ts.client().Call(ctx, "slow", nil, nil) }()
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		t.Fatal("handler never started")
	}
	cancelled := time.Now()
	cancel()
	select {
	case at := <-observed:
		if d := at.Sub(cancelled); d > time.Second {
			t.Fatalf("handler saw cancellation after %v", d)
		} else {
			t.Logf("handler observed hang-up after %v", d)
		}
	case <-time.After(time.Second):
		t.Fatal("handler not cancelled within 1s of the client hanging up")
	}
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Call returned %v, want context.Canceled", err)
	}

	// A raw client that just closes its connection cancels too.
	conn, err := net.Dial("unix", ts.sock)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(conn, `{"v":1,"method":"slow"}`+"\n"); err != nil {
		t.Fatal(err)
	}
	<-started
	conn.Close()
	select {
	case <-observed:
	case <-time.After(time.Second):
		t.Fatal("handler not cancelled when the raw connection closed")
	}
}

func TestConcurrentRequests(t *testing.T) {
	const n = 50
	var inFlight, peak atomic.Int32
	ts := start(t, ServerOptions{}, func(s *Server) {
		s.Handle("work", Typed(func(ctx context.Context, p struct{ N int }) (int, error) {
			cur := inFlight.Add(1)
			defer inFlight.Add(-1)
			for {
				old := peak.Load()
				if cur <= old || peak.CompareAndSwap(old, cur) {
					break
				}
			}
			time.Sleep(100 * time.Millisecond)
			return p.N * 2, nil
		}))
	})
	c := ts.client()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	t0 := time.Now()
	for i := range n {
		wg.Go(func() {
			var out int
			if err := c.Call(WithOpID(context.Background(), fmt.Sprintf("c-%d", i)), "work", struct{ N int }{i}, &out); err != nil {
				errs <- err
				return
			}
			if out != 2*i {
				errs <- fmt.Errorf("request %d got %d", i, out)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	elapsed := time.Since(t0)
	t.Logf("%d concurrent requests in %v, peak %d in flight", n, elapsed, peak.Load())
	if peak.Load() < n/2 {
		t.Errorf("requests were not served concurrently: peak %d", peak.Load())
	}
	if elapsed > 5*time.Second {
		t.Errorf("50 concurrent 100ms requests took %v", elapsed)
	}
}

func TestShutdownWithHandlersRunning(t *testing.T) {
	const n = 3
	started := make(chan struct{}, n)
	var finished atomic.Int32
	ts := start(t, ServerOptions{}, func(s *Server) {
		s.Handle("long", Typed(func(ctx context.Context, p struct{}) (any, error) {
			started <- struct{}{}
			<-ctx.Done()
			time.Sleep(200 * time.Millisecond) // cleanup work after cancellation
			finished.Add(1)
			return nil, ctx.Err()
		}))
	})
	errc := make(chan error, n)
	for i := range n {
		go func() {
			errc <- ts.client().Call(WithOpID(context.Background(), fmt.Sprintf("s-%d", i)), "long", nil, nil)
		}()
	}
	for range n {
		<-started
	}
	ts.cancel()
	select {
	case err := <-ts.done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
		ts.done <- nil // for the cleanup
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
	}
	if got := finished.Load(); got != n {
		t.Fatalf("Serve returned with %d of %d handlers finished", got, n)
	}
	for range n {
		err := <-errc
		var re *Error
		if !errors.As(err, &re) || re.Code != CodeOperationFailed || !strings.Contains(re.Message, "shutting down") || !strings.HasPrefix(re.OpID, "s-") {
			t.Errorf("client got %#v", err)
		}
	}
	if _, err := os.Lstat(ts.sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
	if err := ts.client().Call(context.Background(), "long", nil, nil); !errors.Is(err, ErrUnreachable) {
		t.Errorf("after shutdown: %v, want ErrUnreachable", err)
	}
}

func TestPanicRecovered(t *testing.T) {
	ts := start(t, ServerOptions{}, func(s *Server) {
		s.Handle("boom", Typed(func(ctx context.Context, p struct{}) (any, error) { panic("kaboom") }))
		s.Handle("ok", Typed(func(ctx context.Context, p struct{}) (string, error) { return "fine", nil }))
	})
	err := ts.client().Call(WithOpID(context.Background(), "p-1"), "boom", nil, nil)
	var re *Error
	if !errors.As(err, &re) || re.Code != CodeOperationFailed || !strings.Contains(re.Message, "internal error") || re.OpID != "p-1" {
		t.Fatalf("panic answer %#v", err)
	}
	var s string
	if err := ts.client().Call(context.Background(), "ok", nil, &s); err != nil || s != "fine" {
		t.Fatalf("server unusable after a panic: %v", err)
	}
	logged := false
	for _, r := range ts.logs.records(t) {
		if r["op_id"] == "p-1" && r["panic"] == "kaboom" && strings.Contains(fmt.Sprint(r["stack"]), "server_test.go") {
			logged = true
		}
	}
	if !logged {
		t.Fatal("panic not logged with op id and stack")
	}
}

func TestUnreachable(t *testing.T) {
	dir := t.TempDir()
	c := NewClient(filepath.Join(dir, "missing.sock"))
	if err := c.Call(context.Background(), "ping", nil, nil); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("missing socket: %v", err)
	}
	// A socket file nobody listens on (a crashed daemon) refuses connections.
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	if err := NewClient(stale).Call(context.Background(), "ping", nil, nil); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("stale socket: %v", err)
	}
}

func TestListen(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "d.sock")
	ln, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Lstat(sock)
	if err != nil || st.Mode().Type() != os.ModeSocket || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v %v", st, err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("leftovers next to the socket: %v", entries)
	}
	// A live socket is not taken over.
	if _, err := Listen(sock); err == nil || !strings.Contains(err.Error(), "already listening") {
		t.Fatalf("second Listen on a live socket: %v", err)
	}
	ln.Close()
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Close left the socket: %v", err)
	}

	// A stale socket is replaced.
	raw, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	raw.SetUnlinkOnClose(false)
	raw.Close()
	ln, err = Listen(sock)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	ln.Close()

	// Anything else at the path is left alone.
	if err := os.WriteFile(sock, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(sock); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("regular file at socket path: %v", err)
	}
	if b, _ := os.ReadFile(sock); string(b) != "data" {
		t.Fatal("regular file clobbered")
	}
	if _, err := Listen(filepath.Join(dir, "nodir", "x.sock")); err == nil {
		t.Fatal("missing parent dir accepted")
	}
}

// TestUnauthorizedPeer runs a client as uid 65534 (nobody) against a
// server that only admits its own uid, then admits 65534 to show the
// refusal was the uid check.
func TestUnauthorizedPeer(t *testing.T) {
	testreq.Root(t)
	const nobody = 65534
	var allowNobody atomic.Bool
	var calls atomic.Int32
	ts := start(t, ServerOptions{AllowUID: func(uid uint32) bool {
		return uid == uint32(os.Geteuid()) || (allowNobody.Load() && uid == nobody)
	}}, func(s *Server) {
		s.Handle("ping", Typed(func(ctx context.Context, p struct{}) (string, error) {
			calls.Add(1)
			peer, _ := PeerFrom(ctx)
			return fmt.Sprintf("pong uid=%d", peer.UID), nil
		}))
	})
	// Open the path to the socket for this test only.
	dir := filepath.Dir(ts.sock)
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(ts.sock, 0o666); err != nil {
		t.Fatal(err)
	}
	// The test binary may sit in a directory nobody cannot enter: copy it.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "client.test")
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	runAsNobody := func() map[string]string {
		t.Helper()
		cmd := exec.Command(bin)
		cmd.Env = []string{childEnv + "=" + ts.sock}
		cmd.Dir = "/"
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("child client: %v\n%s", err, stderr.String())
		}
		var m map[string]string
		if err := json.Unmarshal(out, &m); err != nil {
			t.Fatalf("child output %q: %v", out, err)
		}
		return m
	}

	got := runAsNobody()
	if got["uid"] != "65534" || got["code"] != string(CodeUnauthorized) || !strings.HasPrefix(got["op_id"], "op-") ||
		!strings.Contains(got["message"], "uid 65534 may not use this socket") {
		t.Fatalf("nobody got %v, want unauthorized", got)
	}
	if calls.Load() != 0 {
		t.Fatal("handler ran for an unauthorized peer")
	}
	allowNobody.Store(true)
	got = runAsNobody()
	if got["result"] != "pong uid=65534" || got["code"] != "" {
		t.Fatalf("admitted nobody got %v", got)
	}
	refused := false
	for _, r := range ts.logs.records(t) {
		if r["msg"] == "rpc refused" && r["code"] == "unauthorized" && r["peer_uid"] == float64(nobody) {
			refused = true
		}
	}
	if !refused {
		t.Fatal("refusal not logged")
	}
}

// TestConnectionAndFrameLimits: idle and half-sent connections cannot pile
// up (#15.10): past MaxConns a connection is answered "busy" and closed at
// once, a slow sender is cut off after ReadTimeout, and a frame over
// MaxRequest is refused without being buffered whole. Once the hogs are
// gone the server answers again.
func TestConnectionAndFrameLimits(t *testing.T) {
	ts := start(t, ServerOptions{MaxConns: 8, MaxRequest: 64 << 10, ReadTimeout: 500 * time.Millisecond}, func(s *Server) {
		s.Handle("echo", Typed(func(ctx context.Context, p map[string]any) (map[string]any, error) { return p, nil }))
	})
	// 8 clients that send half a request and stall.
	var hogs []net.Conn
	for i := 0; i < 8; i++ {
		c, err := net.Dial("unix", ts.sock)
		if err != nil {
			t.Fatal(err)
		}
		hogs = append(hogs, c)
		_, _ = io.WriteString(c, `{"v":1,"method":"echo","params":{"x":"`+strings.Repeat("a", 1000))
	}
	time.Sleep(100 * time.Millisecond)
	// The ninth is refused at once with a clear message.
	c, err := net.Dial("unix", ts.sock)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, _ := bufio.NewReader(c).ReadString('\n')
	c.Close()
	if !strings.Contains(line, "busy") {
		t.Errorf("connection over the limit got %q, want a busy error", line)
	}
	// The stalled senders are cut off by the read timeout.
	for _, h := range hogs {
		_ = h.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadAll(h); err != nil {
			t.Errorf("stalled client not closed by the server: %v", err)
		}
		h.Close()
	}
	// An oversized frame is refused.
	frames := ts.raw(t, `{"v":1,"method":"echo","params":{"x":"`+strings.Repeat("a", 70<<10)+`"}}`+"\n")
	if len(frames) != 1 || !strings.Contains(string(frames[0]["error"]), "bad_request") {
		t.Errorf("oversized frame: %v", frames)
	}
	// And the server still works.
	var out map[string]any
	if err := ts.client().Call(context.Background(), "echo", map[string]any{"x": 1}, &out); err != nil || out["x"] != float64(1) {
		t.Errorf("after the hogs: %v %v", out, err)
	}
}
