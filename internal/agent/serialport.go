package agent

import (
	"errors"
	"io"
	"time"
)

// A virtio-serial port reads EOF whenever the guest driver believes no host
// is connected. The driver learns of a host connection from a control
// message that a work queue handles, while the connection's first bytes
// arrive through the receive interrupt: the agent can read a request, and
// its next read returns EOF because the "host connected" message is still
// queued. Ending the session there cut off the answer to that request (the
// session's end sets a write deadline, and the write was still waiting for
// the same message) and left the host waiting for good: seen as a ping
// that timed out after a reconnect, about once in a few hundred reconnects
// on a loaded TCG guest.
//
// So an EOF ends a serial session only when it lasts: eofReader reads
// again every EOFPoll until EOFConfirm has passed. A read that blocks means
// the host is there after all, and the session goes on.

// Defaults of eofReader. SerialEOFConfirm is also how long after the host
// hangs up a serial session ends in the guest: a host that pauses the guest
// waits that long first, or the half-ended session meets its next
// connection.
const (
	SerialEOFConfirm = 500 * time.Millisecond
	serialEOFPoll    = 20 * time.Millisecond
)

// eofReader passes reads through, except that an EOF is returned only once
// every read for confirm (polled every poll) returned EOF too.
type eofReader struct {
	r       io.Reader
	confirm time.Duration
	poll    time.Duration
	now     func() time.Time
	sleep   func(time.Duration)
}

func newEOFReader(r io.Reader) *eofReader {
	return &eofReader{r: r, confirm: SerialEOFConfirm, poll: serialEOFPoll, now: time.Now, sleep: time.Sleep}
}

func (e *eofReader) Read(b []byte) (int, error) {
	var first time.Time
	for {
		n, err := e.r.Read(b)
		if n > 0 || !errors.Is(err, io.EOF) {
			return n, err
		}
		now := e.now()
		if first.IsZero() {
			first = now
		} else if now.Sub(first) >= e.confirm {
			return 0, io.EOF
		}
		e.sleep(e.poll)
	}
}
