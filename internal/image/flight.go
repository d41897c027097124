package image

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/progress"
)

// flight is one running Build/Pull/Register/Delete of a name. Callers with
// the same key join it; callers with another key wait for it to end and
// then start their own. The work runs on a context of its own that is
// cancelled when every joined caller has gone away, and its progress
// events fan out to every joined caller.
type flight struct {
	key    string
	done   chan struct{}
	img    *model.Image
	err    error
	cancel context.CancelFunc

	mu      sync.Mutex
	waiters int
	sinks   map[int]progress.Sink
	nextID  int
}

func (f *flight) report(e progress.Event) {
	f.mu.Lock()
	sinks := make([]progress.Sink, 0, len(f.sinks))
	for _, s := range f.sinks {
		sinks = append(sinks, s)
	}
	f.mu.Unlock()
	for _, s := range sinks {
		s(e)
	}
}

// join registers a caller; leave must be called once.
func (f *flight) join(ctx context.Context) (leave func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.waiters++
	id := f.nextID
	f.nextID++
	f.sinks[id] = func(e progress.Event) { progress.Report(ctx, e) }
	return func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		delete(f.sinks, id)
		f.waiters--
		if f.waiters == 0 {
			f.cancel()
		}
	}
}

// coalesce runs fn for name unless a flight with the same key is running,
// in which case it waits for that one and returns its result.
func (s *Store) coalesce(ctx context.Context, name, key string, fn func(context.Context) (*model.Image, error)) (*model.Image, error) {
	for {
		s.mu.Lock()
		if s.flights == nil {
			s.flights = map[string]*flight{}
		}
		f, running := s.flights[name]
		if running && f.key != key {
			s.mu.Unlock()
			progress.Stage(ctx, "wait", fmt.Sprintf("another operation on image %q is running", name))
			select {
			case <-f.done:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		var leave func()
		if !running {
			fctx, cancel := context.WithCancel(context.Background())
			f = &flight{key: key, done: make(chan struct{}), cancel: cancel, sinks: map[int]progress.Sink{}}
			fctx = progress.WithSink(fctx, f.report)
			s.flights[name] = f
			// Joined before the work starts: its first events (a cached
			// debootstrap tree is reported within a millisecond) reach
			// this caller too.
			leave = f.join(ctx)
			go func() {
				img, err := fn(fctx)
				s.mu.Lock()
				f.img, f.err = img, err
				delete(s.flights, name)
				s.mu.Unlock()
				close(f.done)
				cancel()
			}()
		}
		if leave == nil {
			leave = f.join(ctx)
		}
		s.mu.Unlock()
		select {
		case <-f.done:
			leave()
			if errors.Is(f.err, context.Canceled) && ctx.Err() == nil {
				continue // every earlier caller gave up; run it again for this one
			}
			if f.err != nil {
				return nil, f.err
			}
			if f.img == nil {
				return nil, nil
			}
			img := *f.img
			return &img, nil
		case <-ctx.Done():
			leave()
			return nil, ctx.Err()
		}
	}
}
