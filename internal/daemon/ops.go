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

// List returns the operations, running ones first, newest first.
func (r *Operations) List(includeDone bool) []*model.Operation {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gcLocked()
	var out []*model.Operation
	for _, op := range r.ops {
		if op.Done && !includeDone {
			continue
		}
		cp := *op
		out = append(out, &cp)
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
	return len(r.List(false))
}
