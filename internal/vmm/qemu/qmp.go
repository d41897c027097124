package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// QMP is a small client for the QEMU Machine Protocol over a unix socket:
// greeting and capabilities negotiation, synchronous command execution and
// asynchronous events. Execute calls are serialised; events received at any
// time are delivered on Events (dropped when nobody drains the buffer).
type QMP struct {
	conn   net.Conn
	mu     sync.Mutex // one command in flight
	resp   chan qmpMessage
	events chan Event
	done   chan struct{}
	errMu  sync.Mutex
	err    error
	nextID int
}

// Event is an asynchronous QMP event (SHUTDOWN, STOP, RESUME, ...).
type Event struct {
	Name      string          `json:"event"`
	Data      json.RawMessage `json:"data,omitempty"`
	Timestamp struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// QMPError is an error answer from QEMU.
type QMPError struct {
	Command string
	Class   string `json:"class"`
	Desc    string `json:"desc"`
}

func (e *QMPError) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

type qmpMessage struct {
	QMP    json.RawMessage `json:"QMP,omitempty"`
	Return json.RawMessage `json:"return,omitempty"`
	Error  *QMPError       `json:"error,omitempty"`
	Event  string          `json:"event,omitempty"`
	ID     json.RawMessage `json:"id,omitempty"`
	raw    []byte
}

// DialQMP connects to the QMP socket at path, reads the greeting and
// negotiates capabilities. ctx bounds the whole handshake.
func DialQMP(ctx context.Context, path string) (*QMP, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp connect %s: %w", path, err)
	}
	q := &QMP{conn: conn, resp: make(chan qmpMessage, 1), events: make(chan Event, 64), done: make(chan struct{})}
	greeting := make(chan error, 1)
	go q.read(greeting)
	select {
	case err := <-greeting:
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("qmp greeting from %s: %w", path, err)
		}
	case <-ctx.Done():
		conn.Close()
		return nil, fmt.Errorf("qmp greeting from %s: %w", path, ctx.Err())
	}
	if err := q.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		conn.Close()
		return nil, err
	}
	return q, nil
}

func (q *QMP) read(greeting chan<- error) {
	defer close(q.done)
	defer close(q.events)
	sc := bufio.NewScanner(q.conn)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	first := true
	for sc.Scan() {
		var m qmpMessage
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			q.fail(fmt.Errorf("qmp: bad message %q: %w", sc.Bytes(), err))
			if first {
				greeting <- err
			}
			return
		}
		m.raw = append([]byte(nil), sc.Bytes()...)
		switch {
		case first:
			first = false
			if m.QMP == nil {
				greeting <- fmt.Errorf("unexpected first message %s", m.raw)
				return
			}
			greeting <- nil
		case m.Event != "":
			var ev Event
			_ = json.Unmarshal(m.raw, &ev)
			select {
			case q.events <- ev:
			default:
			}
		default:
			select {
			case q.resp <- m:
			default: // an answer nobody waits for (timed out command)
			}
		}
	}
	err := sc.Err()
	if err == nil {
		err = errors.New("qmp: connection closed by qemu")
	}
	q.fail(err)
	if first {
		greeting <- err
	}
}

func (q *QMP) fail(err error) {
	q.errMu.Lock()
	if q.err == nil {
		q.err = err
	}
	q.errMu.Unlock()
}

func (q *QMP) failure() error {
	q.errMu.Lock()
	defer q.errMu.Unlock()
	if q.err == nil {
		return errors.New("qmp: connection closed")
	}
	return q.err
}

// Execute runs one QMP command with optional arguments and decodes its
// "return" value into out (when non-nil). QEMU's error answers are returned
// as *QMPError.
func (q *QMP) Execute(ctx context.Context, command string, args any, out any) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.nextID++
	req := map[string]any{"execute": command, "id": q.nextID}
	if args != nil {
		req["arguments"] = args
	}
	data, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = q.conn.SetWriteDeadline(dl)
	} else {
		_ = q.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	}
	if _, err := q.conn.Write(append(data, '\n')); err != nil {
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	for {
		select {
		case m := <-q.resp:
			if string(m.ID) != fmt.Sprint(q.nextID) {
				continue // a late answer to an earlier, abandoned command
			}
			if m.Error != nil {
				m.Error.Command = command
				return m.Error
			}
			if out != nil {
				if err := json.Unmarshal(m.Return, out); err != nil {
					return fmt.Errorf("qmp %s: decode %s: %w", command, m.Return, err)
				}
			}
			return nil
		case <-q.done:
			return fmt.Errorf("qmp %s: %w", command, q.failure())
		case <-ctx.Done():
			return fmt.Errorf("qmp %s: %w", command, ctx.Err())
		}
	}
}

// Events delivers asynchronous events until the connection closes.
func (q *QMP) Events() <-chan Event { return q.events }

// WaitEvent returns the next event called name, or an error when ctx ends or
// the connection closes first.
func (q *QMP) WaitEvent(ctx context.Context, name string) (Event, error) {
	for {
		select {
		case ev, ok := <-q.events:
			if !ok {
				return Event{}, fmt.Errorf("qmp: waiting for %s: %w", name, q.failure())
			}
			if ev.Name == name {
				return ev, nil
			}
		case <-ctx.Done():
			return Event{}, fmt.Errorf("qmp: waiting for %s: %w", name, ctx.Err())
		}
	}
}

// Status is the answer of query-status.
type Status struct {
	Running bool   `json:"running"`
	Status  string `json:"status"` // "running", "paused", "prelaunch", "shutdown", ...
}

// QueryStatus runs query-status.
func (q *QMP) QueryStatus(ctx context.Context) (Status, error) {
	var st Status
	err := q.Execute(ctx, "query-status", nil, &st)
	return st, err
}

// Close closes the connection.
func (q *QMP) Close() error {
	err := q.conn.Close()
	<-q.done
	return err
}
