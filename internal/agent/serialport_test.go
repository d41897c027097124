package agent

import (
	"errors"
	"io"
	"testing"
	"time"
)

// scriptReader returns its steps in order: data, or EOF for "".
type scriptReader struct {
	steps []string
	reads int
}

func (s *scriptReader) Read(b []byte) (int, error) {
	s.reads++
	if len(s.steps) == 0 {
		return 0, io.EOF
	}
	step := s.steps[0]
	s.steps = s.steps[1:]
	if step == "" {
		return 0, io.EOF
	}
	return copy(b, step), nil
}

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time        { return c.t }
func (c *fakeClock) sleep(d time.Duration) { c.t = c.t.Add(d) }

func newTestEOFReader(r io.Reader) (*eofReader, *fakeClock) {
	c := &fakeClock{t: time.Unix(1000, 0)}
	return &eofReader{r: r, confirm: 100 * time.Millisecond, poll: 10 * time.Millisecond, now: c.now, sleep: c.sleep}, c
}

// The race the reader exists for: a request, then EOF while the guest has
// not yet handled "host connected", then the host's next request.
func TestEOFReaderRidesOutAShortEOF(t *testing.T) {
	s := &scriptReader{steps: []string{"ping", "", "", "next"}}
	e, c := newTestEOFReader(s)
	start := c.t
	b := make([]byte, 16)
	for _, want := range []string{"ping", "next"} {
		n, err := e.Read(b)
		if err != nil || string(b[:n]) != want {
			t.Fatalf("Read = %q, %v; want %q", b[:n], err, want)
		}
	}
	if waited := c.t.Sub(start); waited != 20*time.Millisecond {
		t.Errorf("waited %s through two EOFs, want two polls (20ms)", waited)
	}
}

// A host that is gone stays gone: EOF after the confirmation time, not
// before, and not much later.
func TestEOFReaderConfirmsALastingEOF(t *testing.T) {
	s := &scriptReader{}
	e, c := newTestEOFReader(s)
	start := c.t
	n, err := e.Read(make([]byte, 8))
	if n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("Read = %d, %v; want EOF", n, err)
	}
	if waited := c.t.Sub(start); waited < 100*time.Millisecond || waited > 110*time.Millisecond {
		t.Errorf("EOF confirmed after %s, want 100ms (+ one poll)", waited)
	}
	if s.reads != 11 {
		t.Errorf("%d reads, want 11 (one, then one per 10ms poll)", s.reads)
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

// Other errors (a deadline set to stop the agent) pass through at once.
func TestEOFReaderPassesOtherErrors(t *testing.T) {
	boom := errors.New("boom")
	e, c := newTestEOFReader(errReader{boom})
	start := c.t
	if _, err := e.Read(make([]byte, 8)); !errors.Is(err, boom) {
		t.Fatalf("err = %v, want boom", err)
	}
	if c.t != start {
		t.Error("waited before returning a non-EOF error")
	}
}
