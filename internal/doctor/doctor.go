// Package doctor runs named host checks in parallel and reports each as
// PASS, WARN or FAIL with a fix hint. Checks are plain values built by the
// packages that know the subject (netw, vmm, store...) or by the host checks
// in this package; the CLI assembles the list.
package doctor

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Status is a check's verdict.
type Status string

const (
	Pass Status = "PASS"
	Warn Status = "WARN"
	Fail Status = "FAIL"
)

// Result is what one check found. Hint says how to fix a WARN or FAIL.
type Result struct {
	Status  Status `json:"status"`
	Message string `json:"message"`
	Hint    string `json:"hint,omitempty"`
}

// Check is one named check. Run must honour ctx and must not panic (a
// panic is reported as FAIL).
type Check struct {
	Name string
	Run  func(ctx context.Context) Result
}

// Outcome is a check's result with its name and duration.
type Outcome struct {
	Name string `json:"name"`
	Result
	Took time.Duration `json:"took_ns"`
}

// Run runs every check concurrently, each bounded by timeout, and returns
// the outcomes in the order of checks.
func Run(ctx context.Context, checks []Check, timeout time.Duration) []Outcome {
	out := make([]Outcome, len(checks))
	var wg sync.WaitGroup
	for i, c := range checks {
		wg.Add(1)
		go func(i int, c Check) {
			defer wg.Done()
			start := time.Now()
			cctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			res := make(chan Result, 1)
			go func() {
				defer func() {
					if r := recover(); r != nil {
						res <- Result{Status: Fail, Message: fmt.Sprintf("check crashed: %v", r), Hint: "report this as a banger bug"}
					}
				}()
				res <- c.Run(cctx)
			}()
			var r Result
			select {
			case r = <-res:
			case <-cctx.Done():
				r = Result{Status: Fail, Message: fmt.Sprintf("check did not finish within %s", timeout), Hint: "the host may be overloaded or a tool hangs; rerun with --log-level debug"}
			}
			out[i] = Outcome{Name: c.Name, Result: r, Took: time.Since(start)}
		}(i, c)
	}
	wg.Wait()
	return out
}

// Failed reports whether any outcome is FAIL.
func Failed(outs []Outcome) bool {
	for _, o := range outs {
		if o.Status == Fail {
			return true
		}
	}
	return false
}
