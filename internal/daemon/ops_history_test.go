package daemon

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/model"
)

// memOpStore is an in-memory opStore.
type memOpStore struct {
	mu  sync.Mutex
	ops map[string]model.Operation
}

func (m *memOpStore) PutOperation(_ context.Context, op *model.Operation) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ops[op.ID] = *op
	return nil
}

func (m *memOpStore) ListOperations(_ context.Context, includeDone bool) ([]*model.Operation, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*model.Operation
	for _, op := range m.ops {
		if op.Done && !includeDone {
			continue
		}
		cp := op
		out = append(out, &cp)
	}
	return out, nil
}

func (m *memOpStore) PruneOperations(_ context.Context, cutoff time.Time) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var n int64
	for id, op := range m.ops {
		if op.Done && op.EndedAt != nil && op.EndedAt.Before(cutoff) {
			delete(m.ops, id)
			n++
		}
	}
	return n, nil
}

// TestOperationsHistory: `daemon operations --all` lists from the store,
// so a restarted daemon shows its predecessors' operations (an operation a
// dead daemon never ended shows as interrupted), and finished operations
// older than the retention are pruned (#16 defect 7: the table was written,
// never read, never pruned).
func TestOperationsHistory(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	st := &memOpStore{ops: map[string]model.Operation{}}

	first := NewOperations(st, clock, nil)
	_, a := first.Begin(ctx, "vm.create", "a")
	a.End(nil)
	first.Begin(ctx, "image.pull", "debian") // the daemon dies mid-way

	// A new daemon on the same store.
	second := NewOperations(st, clock, nil)
	second.Retention = 30 * 24 * time.Hour
	second.Recover(ctx)
	if got := second.List(ctx, false); len(got) != 0 {
		t.Fatalf("in flight after a restart: %+v", got)
	}
	hist := second.List(ctx, true)
	if len(hist) != 2 {
		t.Fatalf("history: %+v", hist)
	}
	for _, op := range hist {
		if !op.Done {
			t.Errorf("%s listed as running", op.Kind)
		}
		if op.Kind == "image.pull" && !strings.Contains(op.Error, "interrupted") {
			t.Errorf("an operation the dead daemon never ended: %+v", op)
		}
	}

	// Forty days on, finishing another operation prunes the old ones.
	now = now.Add(40 * 24 * time.Hour)
	_, b := second.Begin(ctx, "vm.delete", "a")
	b.End(nil)
	hist = second.List(ctx, true)
	var kinds []string
	for _, op := range hist {
		kinds = append(kinds, op.Kind)
	}
	if len(st.ops) != 1 { // vm.delete; the interrupted pull was ended at restart, then pruned
		t.Errorf("store after prune holds %d operations: %v", len(st.ops), kinds)
	}
	if _, ok := st.ops[a.ID()]; ok {
		t.Errorf("the 40-day-old create was not pruned")
	}
}
