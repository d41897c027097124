package progress

import (
	"context"
	"testing"
)

func TestSinksChainAndStamp(t *testing.T) {
	Report(context.Background(), Event{Stage: "nobody listens"}) // must not panic
	var outer, inner []Event
	ctx := WithSink(context.Background(), func(e Event) { outer = append(outer, e) })
	ctx = WithSink(ctx, func(e Event) { inner = append(inner, e) })
	Stage(ctx, "download", "kernel")
	Report(ctx, Event{Stage: "download", Fraction: 0.5})
	if len(outer) != 2 || len(inner) != 2 {
		t.Fatalf("events not delivered to both sinks: outer=%d inner=%d", len(outer), len(inner))
	}
	if outer[0].Fraction != -1 || outer[0].Message != "kernel" || outer[0].Time.IsZero() {
		t.Fatalf("stage event: %+v", outer[0])
	}
	if inner[1].Fraction != 0.5 {
		t.Fatalf("report event: %+v", inner[1])
	}
}
