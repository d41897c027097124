package daemon

import (
	"context"
	"sync"
)

// keyLocks is a set of mutexes keyed by string (VM name or id, image name,
// kernel name). Acquire honours ctx cancellation.
//
// Lock order (outermost first), to avoid deadlocks:
//  1. VM name lock ("name:<name>") — held by create for the whole create
//  2. VM id lock ("vm:<id>") — held by every lifecycle operation on one VM
//  3. artifact locks inside the image/kernel stores (per image/kernel name)
//  4. store transactions (short; never held across the locks above)
//
// No code path takes a lock of a lower number while holding a higher one,
// and no path holds two locks of the same level (multi-ref commands lock
// each VM in its own goroutine).
type keyLocks struct {
	mu    sync.Mutex
	locks map[string]*keyLock
}

type keyLock struct {
	ch   chan struct{}
	refs int
}

func newKeyLocks() *keyLocks { return &keyLocks{locks: map[string]*keyLock{}} }

// Lock acquires the lock for key, or returns ctx.Err(). The returned func
// releases it.
func (k *keyLocks) Lock(ctx context.Context, key string) (func(), error) {
	k.mu.Lock()
	l, ok := k.locks[key]
	if !ok {
		l = &keyLock{ch: make(chan struct{}, 1)}
		k.locks[key] = l
	}
	l.refs++
	k.mu.Unlock()

	select {
	case l.ch <- struct{}{}:
		return func() {
			<-l.ch
			k.release(key, l)
		}, nil
	case <-ctx.Done():
		k.release(key, l)
		return nil, ctx.Err()
	}
}

func (k *keyLocks) release(key string, l *keyLock) {
	k.mu.Lock()
	l.refs--
	if l.refs == 0 {
		delete(k.locks, key)
	}
	k.mu.Unlock()
}
