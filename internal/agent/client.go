package agent

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// DialFunc opens a new byte stream to the agent (one session).
type DialFunc func(ctx context.Context) (io.ReadWriteCloser, error)

// Conn is the Client over any stream transport: it dials lazily, keeps one
// session open while calls are in flight (and IdleClose after the last),
// multiplexes calls over it by frame id and redials after the session broke
// or was closed idle. Use NewConn.
//
// Closing idle sessions matters on QEMU's virtio-serial chardev, which
// serves one host connection at a time: a session held open forever by the
// daemon would lock out every other client (a debugging tool, a test, the
// next daemon after a hand-off).
type Conn struct {
	dial  DialFunc
	token string
	name  string // transport, for errors
	// IdleClose is how long a session stays open with no call in flight
	// (DefaultIdleClose from NewConn; ≤ 0 keeps it open). Set it before
	// the first call.
	IdleClose time.Duration

	mu     sync.Mutex
	sess   *session
	closed bool
	nextID uint64
}

var _ Client = (*Conn)(nil)

// NewConn returns a Client that reaches the agent with dial and
// authenticates with token. name describes the transport in errors
// ("virtio-serial /run/.../agent.sock").
func NewConn(dial DialFunc, token, name string) *Conn {
	var b [8]byte
	_, _ = rand.Read(b[:])
	// Random start, top bit clear: ids never repeat across reconnects, so a
	// late reply meant for an earlier host session matches nothing.
	start := binary.BigEndian.Uint64(b[:])>>1 | 1
	return &Conn{dial: dial, token: token, name: name, nextID: start, IdleClose: DefaultIdleClose}
}

// DefaultIdleClose is how long a Conn keeps a session with no call in
// flight: long enough for a burst of calls (a clock sync, a readiness
// poll) to share one, short enough to free a one-client channel at once.
const DefaultIdleClose = 2 * time.Second

// errIdle ends a session closed for want of calls (not a failure: the next
// call redials).
var errIdle = errors.New("session closed while idle")

type session struct {
	rwc     io.ReadWriteCloser
	w       *FrameWriter
	mu      sync.Mutex
	pending map[uint64]chan *Frame
	done    chan struct{}
	err     error // set before done is closed
	idle    time.Duration
	timer   *time.Timer // armed while pending is empty (idle > 0)

	health *Health // the last ping's answer on this session (s.mu)
}

// armIdleLocked starts the idle countdown when no call is in flight.
// s.mu is held.
func (s *session) armIdleLocked() {
	if s.idle <= 0 || len(s.pending) > 0 {
		return
	}
	if s.timer != nil {
		s.timer.Stop()
	}
	var t *time.Timer
	t = time.AfterFunc(s.idle, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		// Checked and closed under one lock: a call that registers
		// meanwhile either stopped this timer or finds the session done.
		if s.timer == t && len(s.pending) == 0 {
			s.failLocked(errIdle)
		}
	})
	s.timer = t
}

func (s *session) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failLocked(err)
}

// failLocked is fail with s.mu held.
func (s *session) failLocked(err error) {
	select {
	case <-s.done:
		return
	default:
	}
	s.err = err
	close(s.done)
	_ = s.rwc.Close()
}

func (s *session) readLoop() {
	fr := NewFrameReader(s.rwc, MaxFrame)
	for {
		f, err := fr.ReadFrame()
		if errors.Is(err, ErrBadFrame) || errors.Is(err, ErrFrameTooLarge) {
			continue // resynchronised at the next line
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("connection closed by the guest")
			}
			s.fail(err)
			return
		}
		s.mu.Lock()
		ch := s.pending[f.ID]
		s.mu.Unlock()
		if ch == nil {
			continue // an abandoned call, or a reply to an earlier host
		}
		select {
		case ch <- f:
		case <-s.done:
			return
		}
	}
}

// session returns the open session, dialing a new one if needed.
func (c *Conn) session(ctx context.Context) (*session, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	if c.sess != nil {
		select {
		case <-c.sess.done:
			c.sess = nil
		default:
			return c.sess, nil
		}
	}
	rwc, err := c.dial(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrUnavailable, c.name, err)
	}
	s := &session{rwc: rwc, w: NewFrameWriter(rwc), pending: map[uint64]chan *Frame{}, done: make(chan struct{}), idle: c.IdleClose}
	s.mu.Lock()
	s.armIdleLocked()
	s.mu.Unlock()
	go s.readLoop()
	c.sess = s
	return s, nil
}

// register adds a call to the session, stopping the idle countdown; false
// when the session has ended.
func (s *session) register(id uint64, ch chan *Frame) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.done:
		return false
	default:
	}
	s.pending[id] = ch
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
	return true
}

// call is one request in flight.
type call struct {
	c  *Conn
	s  *session
	id uint64
	ch chan *Frame
}

func (c *Conn) start(ctx context.Context, kind string, body any) (*call, error) {
	f := &Frame{V: Protocol, Kind: kind, Token: c.token}
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("agent %s: encode: %w", kind, err)
		}
		f.Body = b
	}
	c.mu.Lock()
	id := c.nextID
	c.nextID++
	if c.nextID == 0 {
		c.nextID = 1
	}
	c.mu.Unlock()
	f.ID = id
	cl := &call{c: c, id: id, ch: make(chan *Frame, 64)}
	for {
		s, err := c.session(ctx)
		if err != nil {
			return nil, err
		}
		if s.register(id, cl.ch) {
			cl.s = s
			break
		}
		// Closed idle between session() and register: dial again.
	}
	if err := cl.s.w.WriteFrame(f); err != nil {
		cl.end()
		if errors.Is(err, ErrFrameTooLarge) {
			return nil, fmt.Errorf("agent %s: %w", kind, err)
		}
		cl.s.fail(err)
		return nil, fmt.Errorf("%w: %s: %w", ErrUnavailable, c.name, err)
	}
	return cl, nil
}

func (cl *call) end() {
	cl.s.mu.Lock()
	delete(cl.s.pending, cl.id)
	cl.s.armIdleLocked()
	cl.s.mu.Unlock()
}

func (cl *call) send(f *Frame) error {
	f.V, f.ID, f.Token = Protocol, cl.id, cl.c.token
	if err := cl.s.w.WriteFrame(f); err != nil {
		cl.s.fail(err)
		return fmt.Errorf("%w: %s: %w", ErrUnavailable, cl.c.name, err)
	}
	return nil
}

// next returns the next frame of the call.
func (cl *call) next(ctx context.Context) (*Frame, error) {
	select {
	case f := <-cl.ch:
		return f, nil
	default:
	}
	select {
	case f := <-cl.ch:
		return f, nil
	case <-cl.s.done:
		// Frames delivered before the session broke still count.
		select {
		case f := <-cl.ch:
			return f, nil
		default:
		}
		return nil, fmt.Errorf("%w: %s: %w", ErrUnavailable, cl.c.name, cl.s.err)
	case <-ctx.Done():
		_ = cl.send(&Frame{Kind: KindCancel})
		return nil, fmt.Errorf("agent: %w", ctx.Err())
	}
}

// do runs a request with a single result frame.
func (c *Conn) do(ctx context.Context, kind string, body, result any) error {
	_, err := c.doOn(ctx, kind, body, result)
	return err
}

// doOn is do that also returns the session the request went over.
func (c *Conn) doOn(ctx context.Context, kind string, body, result any) (*session, error) {
	cl, err := c.start(ctx, kind, body)
	if err != nil {
		return nil, err
	}
	defer cl.end()
	for {
		f, err := cl.next(ctx)
		if err != nil {
			return nil, err
		}
		switch f.Kind {
		case KindResult:
			if result == nil {
				return cl.s, nil
			}
			if err := json.Unmarshal(f.Body, result); err != nil {
				return nil, fmt.Errorf("agent %s: decode result: %w", kind, err)
			}
			return cl.s, nil
		case KindError:
			return nil, f.Error
		}
	}
}

// Ping implements Client. The answer is kept on the session: what the
// agent supports (Health.Features) decides how Exec sends stdin.
func (c *Conn) Ping(ctx context.Context) (Health, error) {
	var h Health
	s, err := c.doOn(ctx, KindPing, nil, &h)
	if err != nil {
		return Health{}, err
	}
	s.mu.Lock()
	s.health = &h
	s.mu.Unlock()
	return h, nil
}

// health is the agent's last ping answer on the open session, or a new
// one's (nil when it does not answer).
func (c *Conn) health(ctx context.Context) *Health {
	c.mu.Lock()
	s := c.sess
	c.mu.Unlock()
	if s != nil {
		s.mu.Lock()
		h := s.health
		s.mu.Unlock()
		if h != nil {
			return h
		}
	}
	h, err := c.Ping(ctx)
	if err != nil {
		return nil
	}
	return &h
}

// ApplyIdentity implements Client.
func (c *Conn) ApplyIdentity(ctx context.Context, id Identity) (IdentityResult, error) {
	var r IdentityResult
	err := c.do(ctx, KindIdentity, id, &r)
	return r, err
}

// Ports implements Client.
func (c *Conn) Ports(ctx context.Context) ([]Port, error) {
	var p []Port
	err := c.do(ctx, KindPorts, nil, &p)
	return p, err
}

// Halt implements Client.
func (c *Conn) Halt(ctx context.Context) error {
	return c.do(ctx, KindHalt, nil, nil)
}

// Exec implements Client.
func (c *Conn) Exec(ctx context.Context, req ExecRequest) (ExecResult, error) {
	if len(req.Argv) == 0 {
		return ExecResult{}, errors.New("agent exec: empty command")
	}
	body := execBody{ExecRequest: req, Stdin: req.Stdin != nil, BinaryOutput: true}
	var raw, tcp bool
	var nonce []byte
	if req.Stdin != nil {
		if h := c.health(ctx); h != nil {
			raw = h.HasFeature(FeatureBinary)
			tcp = req.StdinDial != nil && h.HasFeature(FeatureTCPStdin)
		}
		if tcp {
			nonce = make([]byte, NonceBytes)
			if _, err := rand.Read(nonce); err != nil {
				return ExecResult{}, fmt.Errorf("agent exec: %w", err)
			}
			body.StdinTCP = hex.EncodeToString(nonce)
		}
	}
	cl, err := c.start(ctx, KindExec, body)
	if err != nil {
		return ExecResult{}, err
	}
	defer cl.end()
	acks := make(chan int, StdinWindow/ChunkSize+8) // acks come per chunk
	if req.Signals != nil {
		sigCtx, stop := context.WithCancel(ctx)
		defer stop()
		go func() {
			for {
				select {
				case name := <-req.Signals:
					body, _ := json.Marshal(signalBody{Signal: name})
					if cl.send(&Frame{Kind: KindSignal, Body: body}) != nil {
						return
					}
				case <-sigCtx.Done():
					return
				}
			}
		}()
	}
	stdinCtx, stopStdin := context.WithCancel(ctx)
	defer stopStdin()
	if req.Stdin != nil && !tcp {
		go cl.copyStdin(stdinCtx, req.Stdin, acks, raw)
	}
	stdinStarted := false
	// sendTCP sends stdin over TCP to port, or as frames when the guest
	// has no port or it cannot be reached. A connection cut short shows
	// in the guest as a short stdin (which the workspace stream, the one
	// bulk user, detects); the exec's result stays the command's.
	sendTCP := func(port int) {
		if port > 0 {
			if dialed, _ := sendStdinConn(stdinCtx, req.StdinDial, port, nonce, req.Stdin); dialed {
				return
			}
		}
		cl.copyStdin(stdinCtx, req.Stdin, acks, raw)
	}
	var werr error
	write := func(w io.Writer, p []byte) {
		if w == nil || werr != nil {
			return
		}
		if _, err := w.Write(p); err != nil {
			werr = err
			_ = cl.send(&Frame{Kind: KindCancel})
		}
	}
	for {
		f, err := cl.next(ctx)
		if err != nil {
			return ExecResult{}, err
		}
		switch f.Kind {
		case KindStdout:
			write(req.Stdout, f.Data)
		case KindStderr:
			write(req.Stderr, f.Data)
		case KindAck:
			select {
			case acks <- f.N:
			default: // more acks than chunks sent: a confused guest; ignore
			}
		case KindStdinPort:
			if tcp && !stdinStarted {
				stdinStarted = true
				go sendTCP(f.N)
			}
		case KindError:
			if werr != nil {
				return ExecResult{}, fmt.Errorf("agent exec: write output: %w", werr)
			}
			return ExecResult{}, f.Error
		case KindResult:
			if werr != nil {
				return ExecResult{}, fmt.Errorf("agent exec: write output: %w", werr)
			}
			var r ExecResult
			if err := json.Unmarshal(f.Body, &r); err != nil {
				return ExecResult{}, fmt.Errorf("agent exec: decode result: %w", err)
			}
			return r, nil
		}
	}
}

// signalBody is the body of a KindSignal frame.
type signalBody struct {
	Signal string `json:"signal"`
}

// copyStdin sends r as stdin frames (raw payloads with raw), keeping at
// most StdinWindow bytes unacknowledged.
func (cl *call) copyStdin(ctx context.Context, r io.Reader, acks <-chan int, raw bool) {
	chunk := ChunkSize
	if raw {
		chunk = RawChunkSize
	}
	buf := make([]byte, chunk)
	credit := StdinWindow
	for ctx.Err() == nil {
		for credit < chunk {
			select {
			case a := <-acks:
				credit += a
			case <-ctx.Done():
				return
			}
		}
		n, err := r.Read(buf)
		credit -= n
		if n > 0 {
			if cl.send(&Frame{Kind: KindStdin, Data: buf[:n], Raw: raw}) != nil {
				return
			}
		}
		if err != nil {
			if ctx.Err() == nil {
				_ = cl.send(&Frame{Kind: KindStdin, EOF: true})
			}
			return
		}
	}
}

// Close implements Client.
func (c *Conn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	if c.sess != nil {
		c.sess.fail(ErrClosed)
		c.sess = nil
	}
	return nil
}
