package rpc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
)

// Stream limits (see the package doc, "Streams").
const (
	// StreamChunk is the most data one stream frame carries; Send splits
	// larger writes.
	StreamChunk = 32 << 10
	// StreamWindow is how much a sender may have unacknowledged: the sum of
	// streamCost over the messages the peer has not acknowledged yet.
	StreamWindow = 256 << 10
	// MaxStreamCtl bounds a control message (its JSON).
	MaxStreamCtl = 4 << 10
	// MaxStreamChannel is the highest channel number.
	MaxStreamChannel = 15
	// maxStreamFrame bounds one frame a client sends after its request:
	// a full chunk in base64 plus room for the envelope.
	maxStreamFrame = 64 << 10
	// streamOverhead is what every message costs in the window besides its
	// data, so a peer cannot flood its receiver with empty frames.
	streamOverhead = 256
	// streamCtlReserve is the part of the window data never takes.
	streamCtlReserve = 16 * streamOverhead
)

// StreamMsg is one message of a stream: Data on channel Ch, the end of
// channel Ch (EOF), or a control message (Ctl, any JSON object the method
// defines). Exactly one of non-empty Data, EOF and Ctl is set.
type StreamMsg struct {
	Ch   int             `json:"ch,omitempty"`
	Data []byte          `json:"data,omitempty"`
	EOF  bool            `json:"eof,omitempty"`
	Ctl  json.RawMessage `json:"ctl,omitempty"`
}

// validate checks the shape of a message.
func (m *StreamMsg) validate() error {
	if m.Ch < 0 || m.Ch > MaxStreamChannel {
		return fmt.Errorf("stream channel %d out of range 0-%d", m.Ch, MaxStreamChannel)
	}
	n := 0
	if len(m.Data) > 0 {
		n++
	}
	if m.EOF {
		n++
	}
	if len(m.Ctl) > 0 {
		n++
		if len(m.Ctl) > MaxStreamCtl {
			return fmt.Errorf("stream control message larger than %d bytes", MaxStreamCtl)
		}
		if t := bytes.TrimSpace(m.Ctl); len(t) == 0 || t[0] != '{' {
			return errors.New("stream control message is not a JSON object")
		}
	}
	if n != 1 {
		return errors.New("stream message must carry exactly one of data, eof and ctl")
	}
	if len(m.Data) > StreamChunk {
		return fmt.Errorf("stream data chunk larger than %d bytes", StreamChunk)
	}
	return nil
}

// streamCost is what a message counts against the window.
func streamCost(m *StreamMsg) int { return len(m.Data) + streamOverhead }

// streamFrame is a frame of a stream, in either direction: a message, or an
// acknowledgement of N bytes of window.
type streamFrame struct {
	Stream *StreamMsg `json:"stream,omitempty"`
	Ack    int        `json:"ack,omitempty"`
}

// ErrStreamClosed is returned by Send and Recv once the stream ended: the
// call finished, or the peer hung up.
var ErrStreamClosed = errors.New("stream closed")

// Stream is one side of a streaming call: messages both ways, flow
// controlled. Send is safe for concurrent use (messages go out whole, in
// some order); Recv and RecvHold are for one receiving goroutine.
//
// Flow control: a sender keeps at most StreamWindow bytes (data plus
// streamOverhead per message) unacknowledged; the receiver acknowledges
// what Recv has handed out. So a side that stops calling Recv stalls its
// peer's Send, never anyone's memory; a peer that sends beyond the window
// breaks the protocol and the stream ends.
type Stream struct {
	write func(v any) error // sends one frame

	in chan StreamMsg // from the peer; closed by the reader

	mu       sync.Mutex
	credit   int           // bytes we may still send
	credited chan struct{} // signalled when credit grows
	rcvd     int           // received and not yet acknowledged by us (buffered or handed out)
	consumed int           // handed out by Recv and not yet acknowledged
	end      error         // why the stream ended (Send fails with it)
	done     chan struct{} // closed when the stream ended
}

func newStream(write func(v any) error) *Stream {
	return &Stream{
		write:    write,
		in:       make(chan StreamMsg, StreamWindow/streamOverhead+1),
		credit:   StreamWindow,
		credited: make(chan struct{}, 1),
		done:     make(chan struct{}),
	}
}

// Send sends m to the peer, waiting for window when the peer is behind.
// Data longer than StreamChunk goes out as several messages. It returns
// ctx's error, ErrStreamClosed (wrapped) when the stream ended, or the
// write's error.
func (s *Stream) Send(ctx context.Context, m StreamMsg) error {
	if len(m.Data) > StreamChunk {
		for p := m.Data; len(p) > 0; {
			c := min(len(p), StreamChunk)
			if err := s.Send(ctx, StreamMsg{Ch: m.Ch, Data: p[:c]}); err != nil {
				return err
			}
			p = p[c:]
		}
		return nil
	}
	if err := m.validate(); err != nil {
		return err
	}
	cost := streamCost(&m)
	need := cost
	if len(m.Data) > 0 {
		// Data leaves room for control messages, which a receiver
		// holding data (RecvHold) must still get.
		need += streamCtlReserve
	}
	for {
		s.mu.Lock()
		if s.end != nil {
			err := s.end
			s.mu.Unlock()
			return err
		}
		if s.credit >= need {
			s.credit -= cost
			s.mu.Unlock()
			break
		}
		s.mu.Unlock()
		select {
		case <-s.credited:
		case <-s.done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return s.write(streamFrame{Stream: &m})
}

// Recv returns the peer's next message. It returns io.EOF once the peer
// will send no more (after every message it sent was returned), ctx's
// error, or the reason the stream broke.
func (s *Stream) Recv(ctx context.Context) (StreamMsg, error) {
	return s.recv(ctx, false)
}

func (s *Stream) recv(ctx context.Context, hold bool) (StreamMsg, error) {
	select {
	case m, ok := <-s.in:
		if !ok {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.end != nil && !errors.Is(s.end, ErrStreamClosed) {
				return StreamMsg{}, s.end
			}
			return StreamMsg{}, io.EOF
		}
		if !hold || len(m.Data) == 0 {
			// Control and EOF messages are acknowledged at once: they are
			// rare, and a sender whose data is held needs their window.
			s.consumedMsg(streamCost(&m), len(m.Data) == 0)
		}
		return m, nil
	case <-ctx.Done():
		return StreamMsg{}, ctx.Err()
	}
}

// RecvHold is Recv, except that a data message's window is not returned
// to the peer until Release(m): a receiver that queues data somewhere slow
// (a pipe to a process) can keep receiving control messages behind it
// while the peer stays within the window of data not yet released.
func (s *Stream) RecvHold(ctx context.Context) (StreamMsg, error) {
	return s.recv(ctx, true)
}

// Release returns a data message's window to the peer (after RecvHold).
func (s *Stream) Release(m StreamMsg) {
	if len(m.Data) > 0 {
		s.consumedMsg(streamCost(&m), false)
	}
}

// consumedMsg records that cost bytes were handed out and acknowledges
// them once a quarter window has piled up, or at once with now.
func (s *Stream) consumedMsg(cost int, now bool) {
	s.mu.Lock()
	s.consumed += cost
	n := 0
	if (now || s.consumed >= StreamWindow/4) && s.end == nil {
		n = s.consumed
		s.consumed = 0
		s.rcvd -= n
	}
	s.mu.Unlock()
	if n > 0 {
		_ = s.write(streamFrame{Ack: n})
	}
}

// deliver is the reader's: it queues a message from the peer. An error
// means the peer broke the protocol.
func (s *Stream) deliver(m *StreamMsg) error {
	if err := m.validate(); err != nil {
		return err
	}
	cost := streamCost(m)
	s.mu.Lock()
	s.rcvd += cost
	over := s.rcvd > StreamWindow
	s.mu.Unlock()
	if over {
		return fmt.Errorf("stream data sent beyond the %d KiB window", StreamWindow>>10)
	}
	select {
	case s.in <- *m:
		return nil
	default: // cannot happen while the window holds
		return errors.New("stream receive queue full")
	}
}

// ack is the reader's: the peer acknowledged n bytes.
func (s *Stream) ack(n int) error {
	s.mu.Lock()
	s.credit += n
	over := s.credit > StreamWindow || n <= 0
	s.mu.Unlock()
	if over {
		return errors.New("stream acknowledgement of more than was sent")
	}
	select {
	case s.credited <- struct{}{}:
	default:
	}
	return nil
}

// finish ends the stream (the reader's, once: no message follows). err
// nil means the peer ended it properly.
func (s *Stream) finish(err error) {
	s.mu.Lock()
	if s.end != nil {
		s.mu.Unlock()
		return
	}
	if err == nil {
		err = ErrStreamClosed
	}
	s.end = err
	s.mu.Unlock()
	close(s.done)
	close(s.in)
}

// Done is closed when the stream ended.
func (s *Stream) Done() <-chan struct{} { return s.done }

// StreamHandler serves one streaming method: like Handler, and s carries
// messages both ways while it runs. The client's messages end (Recv
// returns an error) when it hangs up, which also cancels ctx. The handler's
// return value is the call's final frame; messages sent after it are lost.
type StreamHandler func(ctx context.Context, params json.RawMessage, s *Stream) (any, error)

// TypedStream adapts a typed function to a StreamHandler, decoding and
// validating params like Typed.
func TypedStream[P, R any](fn func(ctx context.Context, p P, s *Stream) (R, error)) StreamHandler {
	return func(ctx context.Context, raw json.RawMessage, s *Stream) (any, error) {
		var p P
		if err := decodeParams(raw, &p); err != nil {
			return nil, err
		}
		if v, ok := any(&p).(Validator); ok {
			if err := v.Validate(); err != nil {
				return nil, asBadRequest(err)
			}
		}
		r, err := fn(ctx, p, s)
		if err != nil {
			return nil, err
		}
		return r, nil
	}
}

// decodeStreamFrame parses one frame a client sent after its request.
func decodeStreamFrame(line []byte) (streamFrame, error) {
	var f streamFrame
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return f, fmt.Errorf("malformed stream frame: %s", jsonProblem(err))
	}
	if _, err := dec.Token(); err != io.EOF {
		return f, errors.New("malformed stream frame: data after the object")
	}
	if (f.Stream == nil) == (f.Ack == 0) {
		return f, errors.New("malformed stream frame: it must carry exactly one of stream and ack")
	}
	if f.Ack < 0 {
		return f, errors.New("malformed stream frame: negative ack")
	}
	return f, nil
}
