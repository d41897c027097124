package vm

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/agent"
)

// clockGuest is an agent.Client whose guest wall clock runs offset from a
// fake host clock; every call advances the host clock by half a round trip.
type clockGuest struct {
	agent.Client
	mu      sync.Mutex
	host    time.Time
	offset  time.Duration
	leg     time.Duration // one-way latency
	applied []time.Time
	pingErr error
}

func (g *clockGuest) now() time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.host
}

func (g *clockGuest) Ping(ctx context.Context) (agent.Health, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.pingErr != nil {
		return agent.Health{}, g.pingErr
	}
	g.host = g.host.Add(g.leg)
	h := agent.Health{Time: g.host.Add(g.offset)}
	g.host = g.host.Add(g.leg)
	return h, nil
}

func (g *clockGuest) ApplyIdentity(ctx context.Context, id agent.Identity) (agent.IdentityResult, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.host = g.host.Add(g.leg)
	g.applied = append(g.applied, id.Time)
	g.offset = id.Time.Sub(g.host)
	g.host = g.host.Add(g.leg)
	return agent.IdentityResult{}, nil
}

func TestSyncClockStepsAGuestThatIsOff(t *testing.T) {
	for _, off := range []time.Duration{12 * time.Second, -3 * time.Second, 200 * time.Millisecond} {
		g := &clockGuest{host: time.Unix(1_800_000_000, 0), offset: off, leg: 4 * time.Millisecond}
		s, err := syncClock(context.Background(), g, g.now)
		if err != nil {
			t.Fatal(err)
		}
		if s.Offset != off || s.RTT != 8*time.Millisecond || !s.Stepped {
			t.Errorf("offset %s: %+v", off, s)
		}
		if len(g.applied) != 1 || g.offset != 0 {
			t.Errorf("offset %s: guest left %s off after %d steps", off, g.offset, len(g.applied))
		}
	}
}

func TestSyncClockLeavesAGuestWithinTolerance(t *testing.T) {
	g := &clockGuest{host: time.Unix(1_800_000_000, 0), offset: 30 * time.Millisecond, leg: time.Millisecond}
	s, err := syncClock(context.Background(), g, g.now)
	if err != nil || s.Stepped || len(g.applied) != 0 || s.Offset != 30*time.Millisecond {
		t.Errorf("%+v %v, %d steps", s, err, len(g.applied))
	}
}

func TestSyncClockErrors(t *testing.T) {
	g := &clockGuest{pingErr: agent.ErrUnavailable}
	if _, err := syncClock(context.Background(), g, time.Now); !errors.Is(err, agent.ErrUnavailable) {
		t.Errorf("err %v", err)
	}
	g = &clockGuest{leg: 0}
	// The agent's time is the zero time when the host clock is.
	if _, err := syncClock(context.Background(), g, g.now); err == nil {
		t.Error("a ping without a time was accepted")
	}
}
