package rpc

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// streamServer registers the streaming methods the tests use.
func streamServer(sent *atomic.Int64, handlerDone chan error) func(s *Server) {
	return func(s *Server) {
		// upper echoes channel 0 upper-cased on channel 1 until EOF, counts
		// control messages, and answers the byte count.
		s.HandleStream("upper", TypedStream(func(ctx context.Context, p struct{}, st *Stream) (map[string]int, error) {
			n, ctls := 0, 0
			for {
				m, err := st.Recv(ctx)
				if err != nil {
					return nil, err
				}
				switch {
				case m.EOF:
					if err := st.Send(ctx, StreamMsg{Ch: 2, EOF: true}); err != nil {
						return nil, err
					}
					return map[string]int{"bytes": n, "ctls": ctls}, nil
				case len(m.Ctl) > 0:
					ctls++
				default:
					n += len(m.Data)
					if err := st.Send(ctx, StreamMsg{Ch: 1, Data: bytes.ToUpper(m.Data)}); err != nil {
						return nil, err
					}
				}
			}
		}))
		// flood sends 4 MiB on channel 1, counting what Send accepted.
		s.HandleStream("flood", TypedStream(func(ctx context.Context, p struct{}, st *Stream) (int, error) {
			chunk := bytes.Repeat([]byte("x"), 16<<10)
			for i := 0; i < 256; i++ {
				if err := st.Send(ctx, StreamMsg{Ch: 1, Data: chunk}); err != nil {
					return 0, err
				}
				sent.Add(int64(len(chunk)))
			}
			return 256 * len(chunk), nil
		}))
		// hold receives with RecvHold and releases nothing until the
		// client sends a control message, which it must still see.
		s.HandleStream("hold", TypedStream(func(ctx context.Context, p struct{}, st *Stream) (int, error) {
			var held []StreamMsg
			n := 0
			for {
				m, err := st.RecvHold(ctx)
				if err != nil {
					return 0, err
				}
				if len(m.Ctl) > 0 {
					for _, h := range held {
						st.Release(h)
					}
					held = nil
					continue
				}
				if m.EOF {
					return n, nil
				}
				n += len(m.Data)
				held = append(held, m)
			}
		}))
		// hang waits for the client to go.
		s.HandleStream("hang", TypedStream(func(ctx context.Context, p struct{}, st *Stream) (any, error) {
			_, err := st.Recv(context.Background())
			<-ctx.Done()
			select {
			case handlerDone <- err:
			default:
			}
			return nil, ctx.Err()
		}))
		s.Handle("plain", Typed(func(ctx context.Context, p struct{}) (string, error) { return "ok", nil }))
	}
}

func TestStreamRoundTrip(t *testing.T) {
	ctx, st := openTestStream(t, streamServer(nil, nil), "upper")
	// 3 MiB: far more than the window both ways, in odd sizes (Send
	// splits what is over StreamChunk).
	in := bytes.Repeat([]byte("abcdefghij"), 300<<10)
	go func() {
		for p := in; len(p) > 0; {
			c := min(len(p), 100_000)
			if err := st.Send(ctx, StreamMsg{Data: p[:c]}); err != nil {
				t.Errorf("send: %v", err)
				return
			}
			p = p[c:]
		}
		_ = st.Send(ctx, StreamMsg{Ctl: json.RawMessage(`{"signal":"INT"}`)})
		_ = st.Send(ctx, StreamMsg{EOF: true})
	}()
	var out bytes.Buffer
	eofs := 0
	for {
		m, err := st.Recv(ctx)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Data) > StreamChunk {
			t.Fatalf("chunk of %d bytes", len(m.Data))
		}
		switch {
		case m.EOF && m.Ch == 2:
			eofs++
		case m.Ch == 1:
			out.Write(m.Data)
		default:
			t.Fatalf("unexpected message %+v", m)
		}
	}
	var res map[string]int
	if err := st.Wait(ctx, &res); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), bytes.ToUpper(in)) || eofs != 1 {
		t.Errorf("echo: %d bytes (want %d), %d eofs", out.Len(), len(in), eofs)
	}
	if res["bytes"] != len(in) || res["ctls"] != 1 {
		t.Errorf("result %v", res)
	}
}

// A client that does not read stalls the handler's Send at the window.
func TestStreamFlowControl(t *testing.T) {
	var sent atomic.Int64
	ctx, st := openTestStream(t, streamServer(&sent, nil), "flood")
	time.Sleep(300 * time.Millisecond)
	if n := sent.Load(); n > StreamWindow || n == 0 {
		t.Fatalf("handler sent %d bytes to a client that reads nothing (window %d)", n, StreamWindow)
	}
	total := 0
	for {
		m, err := st.Recv(ctx)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		total += len(m.Data)
	}
	var n int
	if err := st.Wait(ctx, &n); err != nil || n != 4<<20 || total != n {
		t.Fatalf("flood: result %d, received %d, err %v", n, total, err)
	}
}

// RecvHold keeps the sender within the window of unreleased data, and
// control messages still get through behind it.
func TestStreamRecvHold(t *testing.T) {
	ctx, st := openTestStream(t, streamServer(nil, nil), "hold")
	chunk := bytes.Repeat([]byte("d"), StreamChunk)
	var sent atomic.Int64
	go func() {
		for i := 0; i < 64; i++ { // 2 MiB
			if st.Send(ctx, StreamMsg{Data: chunk}) != nil {
				return
			}
			sent.Add(int64(len(chunk)))
		}
	}()
	time.Sleep(300 * time.Millisecond)
	if n := sent.Load(); n > StreamWindow || n == 0 {
		t.Fatalf("sent %d bytes that the handler holds (window %d)", n, StreamWindow)
	}
	// A control message is a separate, small cost: it passes while data
	// is held, and makes the handler release everything.
	for sent.Load() < 64*int64(len(chunk)) {
		ctl := make(chan error, 1)
		go func() { ctl <- st.Send(ctx, StreamMsg{Ctl: json.RawMessage(`{}`)}) }()
		select {
		case err := <-ctl:
			if err != nil {
				t.Fatal(err)
			}
		case <-ctx.Done():
			t.Fatal("control message stuck behind held data")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := st.Send(ctx, StreamMsg{EOF: true}); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := st.Wait(ctx, &n); err != nil || n != 64*len(chunk) {
		t.Fatalf("hold: %d %v", n, err)
	}
}

// Hanging up cancels the handler and ends its Recv with an error.
func TestStreamHangUpCancels(t *testing.T) {
	done := make(chan error, 1)
	ts := start(t, ServerOptions{}, streamServer(nil, done))
	ctx, cancel := context.WithCancel(context.Background())
	st, err := ts.client().OpenStream(ctx, "hang", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	time.Sleep(100 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err == nil || errors.Is(err, io.EOF) {
			t.Errorf("Recv after the client hung up: %v, want an error that is not EOF", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("handler not cancelled after the client hung up")
	}
	if err := st.Wait(context.Background(), nil); !errors.Is(err, context.Canceled) {
		t.Errorf("Wait after cancel: %v", err)
	}
}

// rawStream opens a streaming call by hand and sends lines after the
// request; it returns the final frame.
func rawStream(t *testing.T, ts *testServer, method string, lines ...string) map[string]json.RawMessage {
	t.Helper()
	conn, err := net.Dial("unix", ts.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	go func() {
		_, _ = io.WriteString(conn, `{"v":1,"method":"`+method+`"}`+"\n")
		for _, l := range lines {
			if _, err := io.WriteString(conn, l); err != nil {
				return
			}
		}
	}()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	sc := bufio.NewScanner(conn)
	sc.Buffer(nil, 1<<20)
	var last map[string]json.RawMessage
	for sc.Scan() {
		var f map[string]json.RawMessage
		if err := json.Unmarshal(sc.Bytes(), &f); err != nil {
			t.Fatalf("frame %q: %v", sc.Text(), err)
		}
		if f["result"] != nil || f["error"] != nil {
			return f
		}
		last = f
	}
	t.Fatalf("no final frame (last %v, err %v)", last, sc.Err())
	return nil
}

func TestStreamProtocolErrors(t *testing.T) {
	ts := start(t, ServerOptions{}, streamServer(nil, make(chan error, 8)))
	data := func(n int) string {
		b, _ := json.Marshal(streamFrame{Stream: &StreamMsg{Data: bytes.Repeat([]byte("a"), n)}})
		return string(b) + "\n"
	}
	for _, tc := range []struct {
		name, method string
		lines        []string
		want         string
	}{
		{"garbage", "hang", []string{"garbage\n"}, "malformed stream frame"},
		{"unknown field", "hang", []string{`{"stream":{"data":"YQ=="},"x":1}` + "\n"}, "malformed stream frame"},
		{"empty frame", "hang", []string{"{}\n"}, "exactly one of stream and ack"},
		{"both", "hang", []string{`{"stream":{"eof":true},"ack":3}` + "\n"}, "exactly one"},
		{"two kinds", "hang", []string{`{"stream":{"eof":true,"data":"YQ=="}}` + "\n"}, "exactly one of data"},
		{"empty message", "hang", []string{`{"stream":{}}` + "\n"}, "exactly one of data"},
		{"bad channel", "hang", []string{`{"stream":{"ch":99,"eof":true}}` + "\n"}, "out of range"},
		{"ctl not object", "hang", []string{`{"stream":{"ctl":"x"}}` + "\n"}, "not a JSON object"},
		{"ctl too large", "hang", []string{`{"stream":{"ctl":{"x":"` + strings.Repeat("a", MaxStreamCtl) + `"}}}` + "\n"}, "control message larger"},
		{"chunk too large", "hang", []string{data(StreamChunk + 1)}, "larger than"},
		{"frame too large", "hang", []string{`{"stream":{"data":"` + strings.Repeat("A", maxStreamFrame) + `"}}` + "\n"}, "stream frame larger"},
		{"negative ack", "hang", []string{`{"ack":-5}` + "\n"}, "negative ack"},
		{"ack beyond sent", "hang", []string{`{"ack":5}` + "\n"}, "more than was sent"},
		{"beyond the window", "hang", func() []string {
			// hang reads one message and then nothing: 9 full chunks
			// are more than the window.
			var l []string
			for i := 0; i < StreamWindow/StreamChunk+2; i++ {
				l = append(l, data(StreamChunk))
			}
			return l
		}(), "beyond the"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := rawStream(t, ts, tc.method, tc.lines...)
			var e Error
			if err := json.Unmarshal(f["error"], &e); err != nil {
				t.Fatalf("want an error frame, got %v", f)
			}
			if e.Code != CodeBadRequest || !strings.Contains(e.Message, tc.want) {
				t.Errorf("error %s %q, want bad_request containing %q", e.Code, e.Message, tc.want)
			}
		})
	}
	// The server still serves.
	var out string
	if err := ts.client().Call(context.Background(), "plain", nil, &out); err != nil || out != "ok" {
		t.Errorf("after the bad streams: %q %v", out, err)
	}
}

// A streaming method called with Call still gets its answer (its
// messages are skipped), and a plain method opened as a stream answers.
func TestStreamAndCallMix(t *testing.T) {
	ts := start(t, ServerOptions{}, streamServer(new(atomic.Int64), nil))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var n int
	if err := ts.client().Call(ctx, "flood", nil, &n); err != nil || n != 4<<20 {
		t.Errorf("flood through Call: %d %v", n, err)
	}
	st, err := ts.client().OpenStream(ctx, "plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var out string
	if err := st.Wait(ctx, &out); err != nil || out != "ok" {
		t.Errorf("plain through OpenStream: %q %v", out, err)
	}
	if _, err := st.Recv(ctx); !errors.Is(err, io.EOF) {
		t.Errorf("Recv after the answer: %v, want EOF", err)
	}
	st2, err := ts.client().OpenStream(ctx, "nope", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	if err := st2.Wait(ctx, nil); CodeOf(err) != CodeUnknownMethod {
		t.Errorf("unknown stream method: %v", err)
	}
}

// FuzzStreamFrame: decoding a client's stream frame and delivering it never
// panics, and whatever is accepted respects the limits.
func FuzzStreamFrame(f *testing.F) {
	for _, s := range []string{
		`{"stream":{"ch":0,"data":"YWJj"}}`, `{"stream":{"eof":true,"ch":1}}`,
		`{"stream":{"ctl":{"signal":"INT"}}}`, `{"ack":256}`, `{}`, `{"stream":null}`,
		`{"stream":{"ch":-1,"eof":true}}`, `{"ack":1e9}`, "garbage",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		fr, err := decodeStreamFrame(line)
		if err != nil {
			return
		}
		st := newStream(func(any) error { return nil })
		if fr.Stream != nil {
			if err := st.deliver(fr.Stream); err != nil {
				return
			}
			m := <-st.in
			if len(m.Data) > StreamChunk || m.Ch < 0 || m.Ch > MaxStreamChannel || len(m.Ctl) > MaxStreamCtl {
				t.Fatalf("accepted %+v", m)
			}
			return
		}
		if fr.Ack <= 0 {
			t.Fatalf("accepted ack %d", fr.Ack)
		}
	})
}

// openTestStream serves handlers and opens a stream of method on them,
// with a 30 s bound; the stream is closed when the test ends.
func openTestStream(t *testing.T, handlers func(*Server), method string) (context.Context, *ClientStream) {
	t.Helper()
	ts := start(t, ServerOptions{}, handlers)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	st, err := ts.client().OpenStream(ctx, method, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return ctx, st
}
