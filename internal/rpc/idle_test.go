package rpc

import (
	"context"
	"encoding/json"
	"testing"
	"time"
)

// TestIdle: Idle is 0 while a call is in flight and grows from the end of
// the last call.
func TestIdle(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{})
	ts := start(t, ServerOptions{}, func(s *Server) {
		s.Handle("test.block", func(ctx context.Context, _ json.RawMessage) (any, error) {
			close(entered)
			<-release
			return "ok", nil
		})
	})
	time.Sleep(20 * time.Millisecond)
	if ts.srv.Idle() < 20*time.Millisecond {
		t.Errorf("a server that never served is idle %v, want its age", ts.srv.Idle())
	}
	done := make(chan error, 1)
	go func() {
		var out string
		done <- ts.client().Call(context.Background(), "test.block", nil, &out)
	}()
	<-entered
	time.Sleep(30 * time.Millisecond)
	if got := ts.srv.Idle(); got != 0 {
		t.Errorf("Idle during a call = %v, want 0", got)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	first := ts.srv.Idle()
	time.Sleep(30 * time.Millisecond)
	if later := ts.srv.Idle(); later < first+25*time.Millisecond || later > time.Second {
		t.Errorf("Idle after the call: %v then %v, want it to grow from the call's end", first, later)
	}
}
