package vm

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/agent"
	"github.com/bangerdev/banger/internal/model"
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

// One pass of KeepClocks steps the running VMs' clocks and leaves the
// others alone.
func TestSyncClocksStepsRunningVMs(t *testing.T) {
	st := newFakeStore()
	run := &model.VM{ID: "a1", Name: "run", State: model.StateRunning}
	stopped := &model.VM{ID: "b2", Name: "stopped", State: model.StateStopped}
	st.put(run)
	st.put(stopped)
	host := time.Unix(1_800_000_000, 0)
	gRun := &clockGuest{host: host, offset: 5 * time.Second, leg: time.Millisecond}
	gStopped := &clockGuest{host: host, offset: 5 * time.Second, leg: time.Millisecond}
	m := &Manager{o: Options{Store: st, Logger: slog.New(slog.DiscardHandler), Now: gRun.now}}
	m.agents.m = map[string]agent.Client{"a1": gRun, "b2": gStopped}
	m.syncClocks(context.Background())
	if len(gRun.applied) != 1 || gRun.offset != 0 {
		t.Errorf("running VM: %d steps, left %s off", len(gRun.applied), gRun.offset)
	}
	if len(gStopped.applied) != 0 {
		t.Errorf("stopped VM stepped %d times", len(gStopped.applied))
	}
	// In step now: the next pass changes nothing.
	m.syncClocks(context.Background())
	if len(gRun.applied) != 1 {
		t.Errorf("a guest in step was stepped again (%d steps)", len(gRun.applied))
	}
}
