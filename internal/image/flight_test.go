package image

import (
	"context"
	"sync"
	"testing"

	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/progress"
)

// TestCoalesceDeliversTheFirstEvents: the caller that starts a flight sees
// the events its work reports at once (a cached debootstrap tree reports
// "debootstrap" and "mkfs" within a millisecond). Before the fix the work
// started before the caller joined, and those events were often lost.
func TestCoalesceDeliversTheFirstEvents(t *testing.T) {
	s := &Store{}
	for i := 0; i < 200; i++ {
		var mu sync.Mutex
		seen := map[string]bool{}
		ctx := progress.WithSink(context.Background(), func(e progress.Event) {
			mu.Lock()
			seen[e.Stage] = true
			mu.Unlock()
		})
		_, err := s.coalesce(ctx, "img", "k", func(ctx context.Context) (*model.Image, error) {
			progress.Stage(ctx, "first", "")
			progress.Stage(ctx, "second", "")
			return &model.Image{Name: "img"}, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		ok := seen["first"] && seen["second"]
		mu.Unlock()
		if !ok {
			t.Fatalf("round %d: events seen %v, want first and second", i, seen)
		}
	}
}
