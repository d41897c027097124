package daemon

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestKeyLocksExcludeSameKeyOnly(t *testing.T) {
	k := newKeyLocks()
	ctx := context.Background()
	var inA atomic.Int32
	var maxA atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			unlock, err := k.Lock(ctx, "a")
			if err != nil {
				t.Error(err)
				return
			}
			n := inA.Add(1)
			if n > maxA.Load() {
				maxA.Store(n)
			}
			time.Sleep(time.Millisecond)
			inA.Add(-1)
			unlock()
		}()
	}
	// A different key is not blocked by "a".
	unlockA, _ := k.Lock(ctx, "a")
	done := make(chan struct{})
	go func() {
		u, _ := k.Lock(ctx, "b")
		u()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("lock b blocked by lock a")
	}
	unlockA()
	wg.Wait()
	if maxA.Load() != 1 {
		t.Fatalf("two holders of one key at once: %d", maxA.Load())
	}
	k.mu.Lock()
	n := len(k.locks)
	k.mu.Unlock()
	if n != 0 {
		t.Fatalf("lock map leaked %d entries", n)
	}
}

func TestKeyLocksCancel(t *testing.T) {
	k := newKeyLocks()
	unlock, _ := k.Lock(context.Background(), "x")
	defer unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := k.Lock(ctx, "x"); err == nil {
		t.Fatal("expected cancellation")
	}
}
