package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestPrintLogLastLines(t *testing.T) {
	p := filepath.Join(t.TempDir(), "console.log")
	os.WriteFile(p, []byte("a\nb\nc\nd\n"), 0o644)
	for n, want := range map[int]string{0: "a\nb\nc\nd\n", 2: "c\nd\n", 10: "a\nb\nc\nd\n"} {
		var out bytes.Buffer
		if err := printLog(context.Background(), &out, p, n, false); err != nil || out.String() != want {
			t.Errorf("n=%d: %q %v", n, out.String(), err)
		}
	}
	if err := printLog(context.Background(), &bytes.Buffer{}, filepath.Join(t.TempDir(), "none"), 0, false); err == nil {
		t.Error("missing log accepted")
	}
}

func TestPrintLogFollowsAppendsAndTruncation(t *testing.T) {
	p := filepath.Join(t.TempDir(), "console.log")
	os.WriteFile(p, []byte("boot\n"), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	out := &syncBuffer{}
	done := make(chan error, 1)
	go func() { done <- printLog(ctx, out, p, 0, true) }()
	waitFor := func(want string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for out.String() != want {
			if time.Now().After(deadline) {
				t.Fatalf("output %q, want %q", out.String(), want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor("boot\n")
	f, _ := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("more\n")
	f.Close()
	waitFor("boot\nmore\n")
	os.WriteFile(p, []byte("new\n"), 0o644) // truncated by a new start
	waitFor("boot\nmore\nnew\n")
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
