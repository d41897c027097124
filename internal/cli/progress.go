package cli

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/bangerdev/banger/internal/progress"
)

// stageRenderer shows the stages of a long operation: on a TTY a live line
// per stage with its elapsed time (rewritten in place), otherwise one plain
// line when a stage starts and one when it ends.
type stageRenderer struct {
	mu      sync.Mutex
	w       io.Writer
	tty     bool
	now     func() time.Time
	start   time.Time
	stage   string
	message string
	frac    float64
	since   time.Time
	ticker  *time.Ticker
	done    chan struct{}
}

func newStageRenderer(w io.Writer) *stageRenderer {
	r := &stageRenderer{w: w, tty: isTTY(w), now: time.Now, done: make(chan struct{})}
	r.start = r.now()
	if r.tty {
		r.ticker = time.NewTicker(200 * time.Millisecond)
		go func() {
			for {
				select {
				case <-r.ticker.C:
					r.mu.Lock()
					r.drawLocked()
					r.mu.Unlock()
				case <-r.done:
					return
				}
			}
		}()
	}
	return r
}

// Event consumes one progress event.
func (r *stageRenderer) Event(e progress.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e.Stage != r.stage {
		r.finishLocked()
		r.stage, r.since = e.Stage, r.now()
		r.message, r.frac = e.Message, e.Fraction
		if !r.tty {
			if e.Message != "" {
				fmt.Fprintf(r.w, "==> %s: %s\n", e.Stage, e.Message)
			} else {
				fmt.Fprintf(r.w, "==> %s\n", e.Stage)
			}
		}
	} else {
		r.message, r.frac = e.Message, e.Fraction
	}
	r.drawLocked()
}

func (r *stageRenderer) drawLocked() {
	if !r.tty || r.stage == "" {
		return
	}
	line := fmt.Sprintf("  %s %s", r.stage, dim(r.w, fmt.Sprintf("%.1fs", r.now().Sub(r.since).Seconds())))
	if r.frac >= 0 && r.frac <= 1 {
		line += fmt.Sprintf(" %3.0f%%", r.frac*100)
	}
	if r.message != "" {
		line += " " + dim(r.w, truncateRunes(r.message, 60))
	}
	fmt.Fprintf(r.w, "\r\x1b[K%s", line)
}

func (r *stageRenderer) finishLocked() {
	if r.stage == "" {
		return
	}
	took := r.now().Sub(r.since)
	if r.tty {
		fmt.Fprintf(r.w, "\r\x1b[K  ✓ %s %s\n", r.stage, dim(r.w, fmt.Sprintf("(%.1fs)", took.Seconds())))
	} else {
		fmt.Fprintf(r.w, "    %s done in %.1fs\n", r.stage, took.Seconds())
	}
	r.stage = ""
}

// Close finishes the current stage line.
func (r *stageRenderer) Close(failed bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ticker != nil {
		r.ticker.Stop()
		close(r.done)
		r.ticker = nil
	}
	if failed && r.stage != "" {
		if r.tty {
			fmt.Fprintf(r.w, "\r\x1b[K  ✗ %s\n", r.stage)
		} else {
			fmt.Fprintf(r.w, "    %s failed after %.1fs\n", r.stage, r.now().Sub(r.since).Seconds())
		}
		r.stage = ""
		return
	}
	r.finishLocked()
}

func truncateRunes(s string, n int) string {
	rs := []rune(s)
	if len(rs) <= n {
		return s
	}
	return string(rs[:n-1]) + "…"
}
