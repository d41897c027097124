package daemon

import (
	"context"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/progress"
	"github.com/bangerdev/banger/internal/rpc"
)

// opStore persists operations (implemented by *store.Store).
type opStore interface {
	PutOperation(ctx context.Context, op *model.Operation) error
	ListOperations(ctx context.Context, includeDone bool) ([]*model.Operation, error)
	PruneOperations(ctx context.Context, cutoff time.Time) (int64, error)
}

// Operations is the registry of long-running operations (create, pull,
// build). Each operation's current stage follows the progress events its
// context receives; `daemon.operations.list` shows them.
type Operations struct {
	mu     sync.Mutex
	ops    map[string]*model.Operation
	store  opStore
	now    func() time.Time
	logger *slog.Logger
	keep   time.Duration // how long finished operations stay listed in memory
	// Retention is how long finished operations stay in the store's
	// history; older ones are pruned (at start and as operations end).
	Retention time.Duration
}

// NewOperations returns an empty registry persisting to st (may be nil).
func NewOperations(st opStore, now func() time.Time, logger *slog.Logger) *Operations {
	if now == nil {
		now = time.Now
	}
	return &Operations{ops: map[string]*model.Operation{}, store: st, now: now, logger: logger, keep: 10 * time.Minute}
}

// Op is a handle on one registered operation.
type Op struct {
	reg *Operations
	id  string
}

// Begin registers an operation of kind on target. The returned context
// carries a progress sink that records stages on the operation; use it for
// the work. The operation id is the request's op id when there is one.
func (r *Operations) Begin(ctx context.Context, kind, target string) (context.Context, *Op) {
	id := rpc.OpIDFrom(ctx)
	if id == "" {
		id = rpc.NewOpID()
	}
	op := &model.Operation{ID: id, Kind: kind, Target: target, Stage: "starting", Progress: -1, StartedAt: r.now()}
	r.mu.Lock()
	r.ops[id] = op
	r.gcLocked()
	r.mu.Unlock()
	r.persist(ctx, id)
	h := &Op{reg: r, id: id}
	ctx = progress.WithSink(ctx, func(e progress.Event) {
		r.mu.Lock()
		if o, ok := r.ops[id]; ok {
			o.Stage = e.Stage
			o.Progress = e.Fraction
		}
		r.mu.Unlock()
	})
	return ctx, h
}

// End marks the operation finished with err (nil = success).
func (o *Op) End(err error) {
	r := o.reg
	r.mu.Lock()
	if op, ok := r.ops[o.id]; ok {
		t := r.now()
		op.EndedAt = &t
		op.Done = true
		if err != nil {
			op.Error = err.Error()
		} else {
			op.Progress = 1
		}
	}
	r.mu.Unlock()
	r.persist(context.Background(), o.id)
	r.Prune(context.Background())
}

// errInterrupted is the error of an operation whose daemon stopped before
// it ended.
const errInterrupted = "interrupted (the daemon stopped before it ended)"

// Recover marks the store's operations that a previous daemon never ended
// as finished with errInterrupted (call it at start, before serving: one
// daemon owns the store), so history shows them and retention prunes them.
func (r *Operations) Recover(ctx context.Context) {
	if r.store == nil {
		return
	}
	ops, err := r.store.ListOperations(ctx, false)
	if err != nil {
		if r.logger != nil {
			r.logger.Warn("recover operations", "err", err)
		}
		return
	}
	for _, op := range ops {
		t := r.now()
		op.Done, op.EndedAt, op.Error = true, &t, errInterrupted
		if err := r.store.PutOperation(ctx, op); err != nil && r.logger != nil {
			r.logger.Warn("recover operation", "op_id", op.ID, "err", err)
		}
	}
}

// Prune deletes finished operations older than the retention from the
// store's history.
func (r *Operations) Prune(ctx context.Context) {
	if r.store == nil || r.Retention <= 0 {
		return
	}
	n, err := r.store.PruneOperations(ctx, r.now().Add(-r.Retention))
	if err != nil && r.logger != nil {
		r.logger.Warn("prune operations", "err", err)
	} else if n > 0 && r.logger != nil {
		r.logger.Debug("operations pruned", "count", n, "retention", r.Retention)
	}
}

// ID returns the operation id.
func (o *Op) ID() string { return o.id }

func (r *Operations) persist(ctx context.Context, id string) {
	if r.store == nil {
		return
	}
	r.mu.Lock()
	op, ok := r.ops[id]
	var cp model.Operation
	if ok {
		cp = *op
	}
	r.mu.Unlock()
	if !ok {
		return
	}
	if err := r.store.PutOperation(context.WithoutCancel(ctx), &cp); err != nil && r.logger != nil {
		r.logger.Warn("persist operation", "op_id", id, "err", err)
	}
}

func (r *Operations) gcLocked() {
	cutoff := r.now().Add(-r.keep)
	for id, op := range r.ops {
		if op.Done && op.EndedAt != nil && op.EndedAt.Before(cutoff) {
			delete(r.ops, id)
		}
	}
}

// List returns the operations, running ones first, newest first: those of
// this daemon from memory (with live stages), and with includeDone the
// store's history too (earlier daemons' operations, within the retention).
func (r *Operations) List(ctx context.Context, includeDone bool) []*model.Operation {
	r.mu.Lock()
	r.gcLocked()
	seen := map[string]bool{}
	var out []*model.Operation
	for _, op := range r.ops {
		seen[op.ID] = true
		if op.Done && !includeDone {
			continue
		}
		cp := *op
		out = append(out, &cp)
	}
	r.mu.Unlock()
	if includeDone && r.store != nil {
		hist, err := r.store.ListOperations(ctx, true)
		if err != nil && r.logger != nil {
			r.logger.Warn("list operation history", "err", err)
		}
		for _, op := range hist {
			// An operation a dead daemon never ended is not running.
			if !seen[op.ID] {
				if !op.Done {
					op.Done, op.Error = true, errInterrupted
				}
				out = append(out, op)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Done != out[j].Done {
			return !out[i].Done
		}
		return out[i].StartedAt.After(out[j].StartedAt)
	})
	return out
}

// Running reports how many operations are in flight.
func (r *Operations) Running() int {
	return len(r.List(context.Background(), false))
}
