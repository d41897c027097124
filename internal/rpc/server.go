package rpc

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bangerdev/banger/internal/progress"
)

const (
	// requestReadTimeout bounds how long a connected client may take to
	// send its request frame.
	requestReadTimeout = 30 * time.Second
	// frameWriteTimeout bounds each frame write, so a client that stops
	// reading cannot block a handler forever.
	frameWriteTimeout = 30 * time.Second
)

var (
	errClientGone = errors.New("client hung up")
	errShutdown   = errors.New("server shutting down")
)

// ServerOptions configures a Server.
type ServerOptions struct {
	// Logger receives one record per request (method, op_id, duration,
	// code). nil discards.
	Logger *slog.Logger
	// AllowUID decides which peer uids may call. nil allows only the
	// server's own effective uid.
	AllowUID func(uid uint32) bool
	// Version and Commit of the serving binary, used in logs and in the
	// bad_version / unknown_method messages.
	Version, Commit string
	// MaxConns bounds the connections served at once (default
	// DefaultMaxConns); one more is answered "busy" and closed at once, so
	// idle or slow clients cannot pile up memory or goroutines.
	MaxConns int
	// MaxRequest bounds one request frame (default MaxRequestSize). The
	// root helper's requests are small, and so is its limit.
	MaxRequest int
	// ReadTimeout bounds how long a client may take to send its request
	// (default 30 s).
	ReadTimeout time.Duration
}

// DefaultMaxConns is the default ServerOptions.MaxConns.
const DefaultMaxConns = 128

// Server serves registered methods over a unix socket listener. Register
// every method with Handle before calling Serve.
type Server struct {
	logger      *slog.Logger
	allow       func(uint32) bool
	desc        string
	slots       chan struct{} // one per connection being served
	maxRequest  int
	readTimeout time.Duration

	mu       sync.RWMutex
	handlers map[string]Handler
	streams  map[string]StreamHandler

	busy     atomic.Int64 // calls being handled
	lastDone atomic.Int64 // when the last call ended (unix ns; 0: none yet)
	started  time.Time
}

// NewServer returns a server with no methods.
func NewServer(opts ServerOptions) *Server {
	s := &Server{logger: opts.Logger, allow: opts.AllowUID, handlers: map[string]Handler{}, streams: map[string]StreamHandler{},
		maxRequest: opts.MaxRequest, readTimeout: opts.ReadTimeout, started: time.Now()}
	if opts.MaxConns <= 0 {
		opts.MaxConns = DefaultMaxConns
	}
	s.slots = make(chan struct{}, opts.MaxConns)
	if s.maxRequest <= 0 || s.maxRequest > MaxRequestSize {
		s.maxRequest = MaxRequestSize
	}
	if s.readTimeout <= 0 {
		s.readTimeout = requestReadTimeout
	}
	if s.logger == nil {
		s.logger = slog.New(slog.DiscardHandler)
	}
	if s.allow == nil {
		euid := uint32(os.Geteuid())
		s.allow = func(uid uint32) bool { return uid == euid }
	}
	s.desc = "this server"
	if opts.Version != "" {
		s.desc = "this server (version " + opts.Version + ")"
	}
	return s
}

// Handle registers h for method. It panics on a malformed method name or a
// duplicate registration (both are programming errors).
func (s *Server) Handle(method string, h Handler) {
	if !validMethod(method) {
		panic(fmt.Sprintf("rpc: malformed method name %q", method))
	}
	if h == nil {
		panic("rpc: nil handler for " + method)
	}
	s.register(method, func() { s.handlers[method] = h })
}

// HandleStream registers h for method as a streaming method (see the
// package doc, "Streams"). It panics like Handle.
func (s *Server) HandleStream(method string, h StreamHandler) {
	if !validMethod(method) {
		panic(fmt.Sprintf("rpc: malformed method name %q", method))
	}
	if h == nil {
		panic("rpc: nil handler for " + method)
	}
	s.register(method, func() { s.streams[method] = h })
}

func (s *Server) register(method string, add func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, dup := s.handlers[method]
	_, dupStream := s.streams[method]
	if dup || dupStream {
		panic("rpc: method registered twice: " + method)
	}
	add()
}

func (s *Server) handler(method string) (Handler, StreamHandler) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.handlers[method], s.streams[method]
}

// Serve accepts connections on ln until ctx is done, then closes ln,
// cancels the context of every in-flight handler, waits for them to
// return (their clients still get an answer) and returns nil. It returns
// an error if ln fails for another reason (after the same wait).
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	defer ln.Close()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()

	var delay time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("rpc listener closed: %w", err)
			}
			// EMFILE, ECONNABORTED...: back off and keep serving.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.logger.Warn("rpc accept failed; retrying", "err", err, "retry_in", delay)
			select {
			case <-time.After(delay):
			case <-ctx.Done():
				return nil
			}
			continue
		}
		delay = 0
		select {
		case s.slots <- struct{}{}:
		default:
			s.refuseBusy(conn)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-s.slots }()
			s.serveConn(ctx, conn)
		}()
	}
}

// refuseBusy answers a connection over the MaxConns limit and closes it.
func (s *Server) refuseBusy(conn net.Conn) {
	_ = conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	w := &frameWriter{conn: conn}
	_ = w.write(errorFrame{Error: &Error{Code: CodeOperationFailed, OpID: NewOpID(),
		Message: fmt.Sprintf("busy: %d connections are being served; retry shortly", cap(s.slots))}}, true)
	_ = conn.Close()
	s.logger.Warn("rpc connection refused: too many connections", "max", cap(s.slots))
}

// frameWriter serializes frame writes on one connection and drops writes
// after the final frame or after a write failure.
type frameWriter struct {
	mu     sync.Mutex
	conn   net.Conn
	done   bool
	broken error
}

func (w *frameWriter) write(v any, final bool) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done || w.broken != nil {
		return w.broken
	}
	if final {
		w.done = true
	}
	_ = w.conn.SetWriteDeadline(time.Now().Add(frameWriteTimeout))
	if _, err := w.conn.Write(b); err != nil {
		w.broken = err
		return err
	}
	return nil
}

func (s *Server) serveConn(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	start := time.Now()
	w := &frameWriter{conn: conn}

	peer, err := peerOf(conn)
	if err != nil || !s.allow(peer.UID) {
		opID := NewOpID()
		msg := fmt.Sprintf("uid %d may not use this socket (it belongs to uid %d: run banger as that user)", peer.UID, os.Geteuid())
		if err != nil {
			msg = "cannot identify the caller: " + err.Error()
		}
		_ = w.write(errorFrame{Error: &Error{Code: CodeUnauthorized, Message: msg, OpID: opID}}, true)
		s.logger.Warn("rpc refused", "op_id", opID, "code", CodeUnauthorized, "peer_uid", peer.UID, "peer_pid", peer.PID, "err", err)
		return
	}

	// Read the one request frame; shutdown interrupts a slow sender.
	br := bufio.NewReaderSize(conn, 64<<10)
	_ = conn.SetReadDeadline(time.Now().Add(s.readTimeout))
	stopRead := context.AfterFunc(ctx, func() { _ = conn.SetReadDeadline(time.Unix(1, 0)) })
	line, err := readFrame(br, s.maxRequest)
	interrupted := !stopRead()
	if err != nil {
		if interrupted {
			return
		}
		opID := NewOpID()
		var re *Error
		if errors.As(err, &re) {
			re.OpID = opID
			_ = w.write(errorFrame{Error: re}, true)
			s.logger.Warn("rpc bad request", "op_id", opID, "code", re.Code, "err", re.Message, "peer_uid", peer.UID)
		} else {
			s.logger.Debug("rpc client sent no request", "err", err, "peer_uid", peer.UID)
		}
		return
	}

	req, rerr := decodeRequest(line, s.desc)
	opID := req.OpID
	if opID == "" {
		opID = NewOpID()
	}
	if rerr != nil {
		rerr.OpID = opID
		_ = w.write(errorFrame{Error: rerr}, true)
		s.logger.Warn("rpc rejected", "op_id", opID, "code", rerr.Code, "err", rerr.Message, "peer_uid", peer.UID)
		return
	}
	h, sh := s.handler(req.Method)
	if h == nil && sh == nil {
		e := &Error{Code: CodeUnknownMethod, OpID: opID,
			Message: fmt.Sprintf("unknown method %q: %s does not offer it (if banger was just upgraded, restart the daemon with `banger daemon stop`)", req.Method, s.desc)}
		_ = w.write(errorFrame{Error: e}, true)
		s.logger.Warn("rpc unknown method", "method", req.Method, "op_id", opID, "code", e.Code, "peer_uid", peer.UID)
		return
	}

	hctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	hctx = withPeer(WithOpID(hctx, opID), peer)
	if req.Events {
		hctx = progress.WithSink(hctx, func(e progress.Event) {
			if err := w.write(eventFrame{Event: e}, false); err != nil {
				cancel(errClientGone)
			}
		})
	}
	_ = conn.SetReadDeadline(time.Time{})
	var stream *Stream
	if sh != nil {
		stream = newStream(func(v any) error { return w.write(v, false) })
		go readStream(br, stream, cancel)
	} else {
		// The client sends nothing after its request: any read result
		// (EOF, reset, or our own Close) means it hung up.
		go func() {
			var buf [256]byte
			for {
				if _, err := br.Read(buf[:]); err != nil {
					cancel(errClientGone)
					return
				}
			}
		}()
	}

	res, err := s.invoke(hctx, h, sh, stream, req, opID)
	var violation *Error
	if err != nil && errors.As(context.Cause(hctx), &violation) {
		err = violation // the client broke the stream protocol
	}
	var frame any
	if err == nil {
		raw, merr := json.Marshal(res)
		if merr != nil {
			s.logger.Error("rpc result not encodable", "method", req.Method, "op_id", opID, "err", merr)
			err = Errorf(CodeOperationFailed, "internal error: cannot encode the result (see the daemon log)")
		} else {
			frame = resultFrame{Result: raw, OpID: opID}
		}
	}
	if err != nil {
		if ctx.Err() != nil && errors.Is(err, context.Canceled) && CodeOf(err) == CodeOperationFailed {
			err = Errorf(CodeOperationFailed, "%s was cancelled: %w", req.Method, errShutdown)
		}
		frame = errorFrame{Error: toWire(err, opID)}
	}
	werr := w.write(frame, true)

	attrs := []slog.Attr{
		slog.String("method", req.Method),
		slog.String("op_id", opID),
		slog.Duration("duration", time.Since(start)),
		slog.String("code", codeOrOK(err)),
		slog.Int("peer_uid", int(peer.UID)),
		slog.Int("peer_pid", int(peer.PID)),
	}
	level := slog.LevelInfo
	if err != nil {
		attrs = append(attrs, slog.String("err", err.Error()))
		if CodeOf(err) == CodeOperationFailed {
			level = slog.LevelWarn
		}
	}
	if cause := context.Cause(hctx); errors.Is(cause, errClientGone) {
		attrs = append(attrs, slog.Bool("client_gone", true))
	} else if werr != nil {
		attrs = append(attrs, slog.String("write_err", werr.Error()))
	}
	s.logger.LogAttrs(ctx, level, "rpc", attrs...)
}

func codeOrOK(err error) string {
	if err == nil {
		return "ok"
	}
	return string(CodeOf(err))
}

// invoke runs h, turning a panic into operation_failed.
func (s *Server) invoke(ctx context.Context, h Handler, sh StreamHandler, stream *Stream, req request, opID string) (res any, err error) {
	s.busy.Add(1)
	defer func() {
		s.lastDone.Store(time.Now().UnixNano())
		s.busy.Add(-1)
	}()
	defer func() {
		if r := recover(); r != nil {
			s.logger.Error("rpc handler panicked", "method", req.Method, "op_id", opID, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			res, err = nil, Errorf(CodeOperationFailed, "internal error in %s (see the daemon log)", req.Method)
		}
	}()
	if sh != nil {
		return sh(ctx, req.Params, stream)
	}
	return h(ctx, req.Params)
}

// Idle reports how long no call has been in flight: 0 while one is, the
// time since the server was made when none has ended yet. Background work
// that should not compete with callers waits for a quiet moment with it.
func (s *Server) Idle() time.Duration {
	if s.busy.Load() > 0 {
		return 0
	}
	last := s.started
	if ns := s.lastDone.Load(); ns != 0 {
		last = time.Unix(0, ns)
	}
	if d := time.Since(last); d > 0 {
		return d
	}
	return 0
}

// readStream reads a streaming call's client frames into st until the
// connection ends. A client that hangs up cancels the handler with
// errClientGone; one that breaks the protocol (garbage, an oversized
// frame, data beyond the window) with a bad_request *Error, which becomes
// the call's answer.
func readStream(br *bufio.Reader, st *Stream, cancel context.CancelCauseFunc) {
	fail := func(err error) {
		st.finish(err)
		cancel(err)
	}
	for {
		line, err := readFrame(br, maxStreamFrame)
		if err != nil {
			var re *Error
			if errors.As(err, &re) {
				fail(Errorf(CodeBadRequest, "stream frame larger than %d KiB", maxStreamFrame>>10))
			} else {
				fail(errClientGone)
			}
			return
		}
		f, err := decodeStreamFrame(line)
		if err == nil {
			if f.Stream != nil {
				err = st.deliver(f.Stream)
			} else {
				err = st.ack(f.Ack)
			}
		}
		if err != nil {
			fail(Errorf(CodeBadRequest, "%s", err.Error()))
			return
		}
	}
}

// readFrame reads up to and excluding the first newline. A frame ended by
// EOF instead of a newline is accepted. Frames longer than limit are a
// bad_request *Error.
func readFrame(br *bufio.Reader, limit int) ([]byte, error) {
	var buf []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if len(buf)+len(chunk) > limit {
			return nil, Errorf(CodeBadRequest, "request larger than %d MiB", limit>>20)
		}
		buf = append(buf, chunk...)
		switch {
		case err == nil:
			return buf[:len(buf)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF) && len(buf) > 0:
			return buf, nil
		default:
			return nil, err
		}
	}
}

// peerOf returns the kernel's credentials of the connecting process.
func peerOf(conn net.Conn) (Peer, error) {
	sc, ok := conn.(interface {
		SyscallConn() (syscall.RawConn, error)
	})
	if !ok {
		return Peer{}, fmt.Errorf("not a unix socket connection (%T)", conn)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return Peer{}, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Peer{}, err
	}
	if cerr != nil {
		return Peer{}, fmt.Errorf("SO_PEERCRED: %w", cerr)
	}
	return Peer{UID: cred.Uid, GID: cred.Gid, PID: cred.Pid}, nil
}
