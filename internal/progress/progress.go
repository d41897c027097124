// Package progress carries stage reports of long operations (image build,
// kernel pull, VM create) from deep inside domain packages to whoever
// listens: the RPC server streams them to the CLI, the operations registry
// records the current stage. Domain packages only call Stage/Report; they
// never know who listens.
package progress

import (
	"context"
	"time"
)

// Event is one progress report.
type Event struct {
	Stage    string    `json:"stage"`             // short stage name, e.g. "debootstrap"
	Message  string    `json:"message,omitempty"` // optional detail
	Fraction float64   `json:"fraction"`          // 0..1 within the stage, or -1 when unknown
	Time     time.Time `json:"time"`
}

// Sink receives events. It must be fast and safe for concurrent use.
type Sink func(Event)

type sinkKey struct{}

// WithSink returns a context whose reports also go to sink (sinks chain:
// earlier sinks still receive events).
func WithSink(ctx context.Context, sink Sink) context.Context {
	if prev, ok := ctx.Value(sinkKey{}).(Sink); ok && prev != nil {
		next := sink
		sink = func(e Event) { prev(e); next(e) }
	}
	return context.WithValue(ctx, sinkKey{}, sink)
}

// Report sends an event to the context's sinks, if any.
func Report(ctx context.Context, e Event) {
	sink, ok := ctx.Value(sinkKey{}).(Sink)
	if !ok || sink == nil {
		return
	}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	sink(e)
}

// Stage reports the start of a named stage with unknown progress.
func Stage(ctx context.Context, stage string, message string) {
	Report(ctx, Event{Stage: stage, Message: message, Fraction: -1})
}
