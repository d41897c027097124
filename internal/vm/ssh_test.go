package vm

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/guest"
)

// TestBootDeadlineFollowsConsoleProgress: a booting guest whose console
// keeps growing is waited for past the idle limit; once it stops, the wait
// ends about idle later, with a cause that says so.
func TestBootDeadlineFollowsConsoleProgress(t *testing.T) {
	log := filepath.Join(t.TempDir(), "console.log")
	if err := os.WriteFile(log, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	idle := time.Second
	ctx, cancel := bootDeadline(context.Background(), log, idle)
	defer cancel()
	f, err := os.OpenFile(log, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	start := time.Now()
	for time.Since(start) < 2*idle { // printing for twice the idle limit (the cap is 4×)
		if _, err := f.WriteString("[  OK  ] Started something.\n"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(idle / 8)
		if ctx.Err() != nil {
			t.Fatalf("gave up after %v while the console was growing: %v", time.Since(start), context.Cause(ctx))
		}
	}
	stopped := time.Now()
	<-ctx.Done()
	if d := time.Since(stopped); d < idle/2 || d > 19*idle/10 {
		t.Errorf("ended %v after the console went quiet, want about %v", d, idle)
	}
	cause := context.Cause(ctx)
	if !errors.Is(cause, guest.ErrNotReady) || !strings.Contains(cause.Error(), "no console output") {
		t.Errorf("cause: %v", cause)
	}
}

// TestBootDeadlineCap: a console that never stops growing is still given
// up after the cap.
func TestBootDeadlineCap(t *testing.T) {
	log := filepath.Join(t.TempDir(), "console.log")
	idle := 150 * time.Millisecond
	ctx, cancel := bootDeadline(context.Background(), log, idle)
	defer cancel()
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case <-done:
				return
			case <-time.After(idle / 10):
				f, err := os.OpenFile(log, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o644)
				if err == nil {
					_, _ = f.WriteString("loop\n")
					f.Close()
				}
			}
		}
	}()
	start := time.Now()
	<-ctx.Done()
	if d := time.Since(start); d < bootCapFactor*idle-50*time.Millisecond || d > 20*idle {
		t.Errorf("capped after %v, want %v", d, bootCapFactor*idle)
	}
	if cause := context.Cause(ctx); !errors.Is(cause, guest.ErrNotReady) || !strings.Contains(cause.Error(), "still booting") {
		t.Errorf("cause: %v", cause)
	}
}

// TestWaitOpenReportsAQuietGuest: WaitOpen on a port that never opens
// ends after the console went quiet, and the error carries its tail.
func TestWaitOpenReportsAQuietGuest(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	log := filepath.Join(t.TempDir(), "console.log")
	if err := os.WriteFile(log, []byte("Kernel panic - not syncing\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	g := &SSHGuests{Poll: 20 * time.Millisecond}
	err = g.WaitOpen(context.Background(), addr, log, 300*time.Millisecond)
	if !errors.Is(err, guest.ErrNotReady) || !strings.Contains(err.Error(), "no console output") || !strings.Contains(err.Error(), "Kernel panic") {
		t.Fatalf("err = %v", err)
	}
	// An open port answers at once.
	ln2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	if err := g.WaitOpen(context.Background(), ln2.Addr().String(), log, time.Second); err != nil {
		t.Fatal(err)
	}
}
