package agent

import (
	"context"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// System is what the agent does in the guest besides running commands. The
// real implementation (Guest) works on the running Linux system; tests use
// fakes.
type System interface {
	Health(ctx context.Context) (Health, error)
	ApplyIdentity(ctx context.Context, id Identity) (IdentityResult, error)
	Ports(ctx context.Context) ([]Port, error)
	// Halt flushes and remounts every filesystem read-only, then arranges
	// for the machine to reset shortly after it returns (the server
	// answers first).
	Halt(ctx context.Context) error
}

// MaxInFlight bounds the requests one session may have running at once.
const MaxInFlight = 64

// Server is the guest side: it serves sessions on byte streams.
type Server struct {
	Token     string // the VM's token (TokenPath); an empty token rejects everything
	System    System
	Transport string // reported in Health, unless the stream has a Transport() string method
	Logger    *slog.Logger

	// Features is what Health reports (nil = the package's Features); a
	// test sets fewer to play an older agent.
	Features []string

	// Builtins are the commands the agent runs in its own process when an
	// exec asks for one (ExecRequest.Builtin); Health lists each as
	// BuiltinFeature(name).
	Builtins map[string]Builtin

	ExecDir string   // default working directory ("" = "/root", else "/")
	ExecEnv []string // base environment of commands (nil = DefaultExecEnv)

	rotated atomic.Pointer[string] // the token an Identity installed
}

// token is the token frames must carry now.
func (s *Server) token() string {
	if t := s.rotated.Load(); t != nil {
		return *t
	}
	return s.Token
}

// DefaultExecEnv is the base environment of commands run by the agent.
var DefaultExecEnv = []string{
	"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	"HOME=/root", "USER=root", "LOGNAME=root", "LANG=C.UTF-8", "TERM=dumb",
}

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.New(slog.DiscardHandler)
}

// Serve runs one session on rw until the stream ends (io.EOF: nil) or ctx
// ends; everything the session started (running commands) is stopped before
// it returns. Malformed, oversized, unauthenticated and wrong-version frames
// are answered with an error frame and otherwise ignored.
func (s *Server) Serve(ctx context.Context, rw io.ReadWriter) error {
	ctx, cancel := context.WithCancel(ctx)
	sess := &serverSession{srv: s, ctx: ctx, w: NewFrameWriter(rw), execs: map[uint64]*execState{}, transport: s.Transport}
	if t, ok := rw.(interface{ Transport() string }); ok {
		sess.transport = t.Transport()
	}
	// A virtio-serial port outlives its host connections: a write after the
	// host went away blocks until the next host connects. Writes of an ended
	// session are cut short instead, and the next session clears the
	// deadline.
	dl, _ := rw.(interface{ SetWriteDeadline(time.Time) error })
	if dl != nil {
		_ = dl.SetWriteDeadline(time.Time{})
	}
	defer func() {
		cancel()
		if dl != nil {
			_ = dl.SetWriteDeadline(time.Now())
		}
		sess.wg.Wait()
	}()
	fr := NewFrameReader(rw, MaxFrame)
	fr.Accept = sess.authorized
	type readResult struct {
		f   *Frame
		err error
	}
	// Read in its own goroutine so ctx ends the session even while the
	// stream is idle.
	frames := make(chan readResult)
	go func() {
		for {
			f, err := fr.ReadFrame()
			select {
			case frames <- readResult{f, err}:
			case <-ctx.Done():
				return
			}
			if err != nil && !errors.Is(err, ErrBadFrame) && !errors.Is(err, ErrFrameTooLarge) {
				return
			}
		}
	}()
	for {
		var r readResult
		select {
		case r = <-frames:
		case <-ctx.Done():
			return ctx.Err()
		}
		switch {
		case errors.Is(r.err, ErrFrameTooLarge):
			sess.reply(&Frame{Kind: KindError, Error: &Error{Code: CodeTooLarge, Message: r.err.Error()}})
			continue
		case errors.Is(r.err, ErrBadFrame):
			sess.reply(&Frame{Kind: KindError, Error: &Error{Code: CodeBadRequest, Message: r.err.Error()}})
			continue
		case errors.Is(r.err, io.EOF):
			return nil
		case r.err != nil:
			return fmt.Errorf("agent session: %w", r.err)
		}
		sess.handle(r.f)
	}
}

type serverSession struct {
	srv       *Server
	transport string
	ctx       context.Context
	w         *FrameWriter
	wg        sync.WaitGroup

	mu       sync.Mutex
	inFlight int
	execs    map[uint64]*execState
}

type execState struct {
	stdin  chan []byte // nil data = EOF
	cancel context.CancelFunc
	pgid   atomic.Int64 // the command's process group, once started
}

func (ss *serverSession) reply(f *Frame) {
	f.V = Protocol
	if err := ss.w.WriteFrame(f); err != nil {
		ss.srv.logger().Debug("agent: write reply", "id", f.ID, "kind", f.Kind, "err", err)
	}
}

func (ss *serverSession) fail(id uint64, code, msg string) {
	ss.reply(&Frame{ID: id, Kind: KindError, Error: &Error{Code: code, Message: msg}})
}

func (ss *serverSession) authorized(f *Frame) bool {
	want := ss.srv.token()
	return want != "" && subtle.ConstantTimeCompare([]byte(f.Token), []byte(want)) == 1
}

func (ss *serverSession) handle(f *Frame) {
	if !ss.authorized(f) {
		ss.srv.logger().Warn("agent: rejected a frame with a wrong token", "id", f.ID, "kind", f.Kind)
		ss.fail(f.ID, CodeUnauthorized, "wrong or missing token")
		return
	}
	if f.V != Protocol {
		ss.fail(f.ID, CodeBadVersion, fmt.Sprintf("protocol version %d not supported (agent speaks %d)", f.V, Protocol))
		return
	}
	switch f.Kind {
	case KindStdin:
		ss.mu.Lock()
		e := ss.execs[f.ID]
		ss.mu.Unlock()
		if e == nil {
			return // the command already ended
		}
		data := f.Data
		if f.EOF {
			data = nil
		} else if len(data) == 0 {
			return
		}
		select {
		case e.stdin <- data:
		default:
			e.cancel()
			ss.fail(f.ID, CodeBadRequest, "stdin sent beyond the window")
		}
		return
	case KindCancel:
		ss.mu.Lock()
		e := ss.execs[f.ID]
		ss.mu.Unlock()
		if e != nil {
			e.cancel()
		}
		return
	case KindSignal:
		ss.mu.Lock()
		e := ss.execs[f.ID]
		ss.mu.Unlock()
		var body signalBody
		_ = json.Unmarshal(f.Body, &body)
		sig, ok := Signals[body.Signal]
		if !ok {
			// No reply: an error frame would end the command's call.
			ss.srv.logger().Warn("agent: ignored an unknown signal", "id", f.ID, "signal", body.Signal)
			return
		}
		if e != nil {
			if pgid := e.pgid.Load(); pgid > 1 {
				_ = syscall.Kill(-int(pgid), sig)
			}
		}
		return
	case KindPing, KindIdentity, KindPorts, KindExec, KindHalt:
	default:
		ss.fail(f.ID, CodeBadRequest, fmt.Sprintf("%q is not a request", f.Kind))
		return
	}
	ss.mu.Lock()
	if ss.inFlight >= MaxInFlight {
		ss.mu.Unlock()
		ss.fail(f.ID, CodeFailed, fmt.Sprintf("too many requests in flight (%d)", MaxInFlight))
		return
	}
	if _, dup := ss.execs[f.ID]; dup {
		ss.mu.Unlock()
		ss.fail(f.ID, CodeBadRequest, "id already in use")
		return
	}
	ss.inFlight++
	var es *execState
	ctx := ss.ctx
	if f.Kind == KindExec {
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ss.ctx)
		es = &execState{stdin: make(chan []byte, StdinWindow/ChunkSize+2), cancel: cancel}
		ss.execs[f.ID] = es
	}
	ss.mu.Unlock()
	ss.wg.Add(1)
	go func() {
		defer ss.wg.Done()
		defer func() {
			ss.mu.Lock()
			ss.inFlight--
			if es != nil {
				delete(ss.execs, f.ID)
				es.cancel()
			}
			ss.mu.Unlock()
		}()
		result, err := ss.run(ctx, f, es)
		if err != nil {
			var ae *Error
			if !errors.As(err, &ae) {
				ae = &Error{Code: CodeFailed, Message: err.Error()}
			}
			ss.reply(&Frame{ID: f.ID, Kind: KindError, Error: ae})
			return
		}
		b, err := json.Marshal(result)
		if err != nil {
			ss.fail(f.ID, CodeFailed, "encode result: "+err.Error())
			return
		}
		ss.reply(&Frame{ID: f.ID, Kind: KindResult, Body: b})
	}()
}

func badRequest(format string, a ...any) error {
	return &Error{Code: CodeBadRequest, Message: fmt.Sprintf(format, a...)}
}

func (ss *serverSession) run(ctx context.Context, f *Frame, es *execState) (any, error) {
	sys := ss.srv.System
	switch f.Kind {
	case KindPing:
		h, err := sys.Health(ctx)
		h.Protocol = Protocol
		h.Features = ss.srv.Features
		if h.Features == nil {
			h.Features = Features
		}
		if len(ss.srv.Builtins) > 0 {
			h.Features = append([]string(nil), h.Features...)
			for _, name := range slices.Sorted(maps.Keys(ss.srv.Builtins)) {
				h.Features = append(h.Features, BuiltinFeature(name))
			}
		}
		if h.Transport == "" {
			h.Transport = ss.transport
		}
		return h, err
	case KindIdentity:
		var id Identity
		if err := json.Unmarshal(f.Body, &id); err != nil {
			return nil, badRequest("identity: %v", err)
		}
		if err := id.Validate(); err != nil {
			return nil, badRequest("%v", err)
		}
		res, err := sys.ApplyIdentity(ctx, id)
		if err == nil && id.Token != "" {
			t := id.Token
			ss.srv.rotated.Store(&t)
			res.TokenChanged = true
		}
		return res, err
	case KindHalt:
		return struct{}{}, sys.Halt(ctx)
	case KindPorts:
		p, err := sys.Ports(ctx)
		if p == nil && err == nil {
			p = []Port{}
		}
		return p, err
	default: // KindExec
		var req execBody
		if err := json.Unmarshal(f.Body, &req); err != nil {
			return nil, badRequest("exec: %v", err)
		}
		if len(req.Argv) == 0 || req.Argv[0] == "" {
			return nil, badRequest("exec: empty command")
		}
		var nonce []byte
		if req.StdinTCP != "" {
			var err error
			if nonce, err = hex.DecodeString(req.StdinTCP); err != nil || len(nonce) != NonceBytes || !req.Stdin {
				return nil, badRequest("exec: stdin_tcp wants stdin and %d hex-encoded bytes", NonceBytes)
			}
		}
		if req.Builtin {
			return ss.builtin(ctx, f.ID, req, nonce, es)
		}
		return ss.exec(ctx, f.ID, req, nonce, es)
	}
}

// builtin runs one of the server's Builtins like exec runs a program: same
// stdin (frames or TCP), output frames and result.
func (ss *serverSession) builtin(ctx context.Context, id uint64, req execBody, nonce []byte, es *execState) (ExecResult, error) {
	fn := ss.srv.Builtins[req.Argv[0]]
	if fn == nil {
		return ExecResult{}, badRequest("exec: no builtin %q", req.Argv[0])
	}
	var stdin io.Reader = strings.NewReader("")
	if req.Stdin {
		r, w, err := os.Pipe()
		if err != nil {
			return ExecResult{}, fmt.Errorf("exec: stdin pipe: %w", err)
		}
		// Closed when the builtin returns, so the feeder's writes fail
		// (and its data is dropped) instead of blocking.
		defer r.Close()
		stdin = r
		stop := ss.feed(ctx, id, w, nonce, es)
		defer stop()
	}
	code := fn(ctx, req.Argv[1:], stdin,
		&streamWriter{ss: ss, id: id, kind: KindStdout, raw: req.BinaryOutput},
		&streamWriter{ss: ss, id: id, kind: KindStderr, raw: req.BinaryOutput})
	if ctx.Err() != nil && ss.ctx.Err() == nil {
		return ExecResult{ExitCode: code}, &Error{Code: CodeCancelled, Message: "command cancelled"}
	}
	return ExecResult{ExitCode: code}, nil
}

// feed starts copying the exec's stdin into w (which it closes): frames,
// or the TCP connection when nonce is set (announced with KindStdinPort).
// stop ends the TCP listener.
func (ss *serverSession) feed(ctx context.Context, id uint64, w *os.File, nonce []byte, es *execState) (stop func()) {
	var conns <-chan net.Conn
	lctx, stopListening := context.WithCancel(ctx)
	if nonce != nil {
		port, ch, err := listenStdin(lctx, nonce)
		if err != nil {
			ss.srv.logger().Warn("agent: no tcp stdin; frames instead", "err", err)
		}
		conns = ch
		ss.reply(&Frame{ID: id, Kind: KindStdinPort, N: port})
	}
	go ss.feedStdin(ctx, id, w, es.stdin, conns, stopListening)
	return stopListening
}

// streamWriter turns a command's output into stream frames.
type streamWriter struct {
	ss   *serverSession
	id   uint64
	kind string
	raw  bool // raw payloads (the host asked for binary_output)
}

func (w *streamWriter) Write(p []byte) (int, error) {
	n := 0
	chunk := ChunkSize
	if w.raw {
		chunk = RawChunkSize
	}
	for len(p) > 0 {
		c := min(len(p), chunk)
		if err := w.ss.w.WriteFrame(&Frame{V: Protocol, ID: w.id, Kind: w.kind, Data: p[:c], Raw: w.raw}); err != nil {
			return n, err
		}
		n += c
		p = p[c:]
	}
	return n, nil
}

// execWaitDelay is how long a finished command's output pipes may stay open
// (held by a background child) before the result is sent anyway.
const execWaitDelay = 2 * time.Second

// exec runs req; with nonce, stdin may come over TCP (listenStdin).
func (ss *serverSession) exec(ctx context.Context, id uint64, req execBody, nonce []byte, es *execState) (ExecResult, error) {
	cmd := exec.CommandContext(ctx, req.Argv[0], req.Argv[1:]...)
	env := ss.srv.ExecEnv
	if env == nil {
		env = DefaultExecEnv
	}
	cmd.Env = append(append([]string(nil), env...), req.Env...)
	cmd.Dir = req.Dir
	if cmd.Dir == "" {
		cmd.Dir = ss.srv.ExecDir
	}
	if cmd.Dir == "" {
		cmd.Dir = "/root"
		if _, err := os.Stat(cmd.Dir); err != nil {
			cmd.Dir = "/"
		}
	}
	cmd.Stdout = &streamWriter{ss: ss, id: id, kind: KindStdout, raw: req.BinaryOutput}
	cmd.Stderr = &streamWriter{ss: ss, id: id, kind: KindStderr, raw: req.BinaryOutput}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		// The whole process group: a shell's children die with it.
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	cmd.WaitDelay = execWaitDelay
	var stdinW *os.File
	if req.Stdin {
		r, w, err := os.Pipe()
		if err != nil {
			return ExecResult{}, fmt.Errorf("exec: stdin pipe: %w", err)
		}
		defer r.Close()
		cmd.Stdin = r
		stdinW = w
	}
	if err := cmd.Start(); err != nil {
		if stdinW != nil {
			stdinW.Close()
		}
		return ExecResult{}, fmt.Errorf("exec %s: %w", req.Argv[0], err)
	}
	es.pgid.Store(int64(cmd.Process.Pid))
	if stdinW != nil {
		stop := ss.feed(ctx, id, stdinW, nonce, es)
		defer stop()
	}
	err := cmd.Wait()
	st := cmd.ProcessState
	if st == nil {
		return ExecResult{}, fmt.Errorf("exec %s: %w", req.Argv[0], err)
	}
	res := ExecResult{ExitCode: st.ExitCode()}
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		res.Signal = ws.Signal().String()
	}
	if ctx.Err() != nil && ss.ctx.Err() == nil {
		return res, &Error{Code: CodeCancelled, Message: "command cancelled"}
	}
	return res, nil
}

// feedStdin copies stdin to the process: frames, acknowledging each chunk
// once the process took it, or the TCP connection that arrives on conns
// (nil: frames only). The first frame closes the TCP listener
// (stopListening).
func (ss *serverSession) feedStdin(ctx context.Context, id uint64, w *os.File, in <-chan []byte, conns <-chan net.Conn, stopListening func()) {
	defer w.Close()
	for {
		select {
		case c := <-conns:
			if c == nil {
				conns = nil // nobody came: frames it is
				continue
			}
			copyStdinConn(ctx, w, c)
			return
		case data := <-in:
			stopListening()
			conns = nil
			if data == nil {
				return
			}
			if _, err := w.Write(data); err != nil {
				// The process closed its stdin: keep acknowledging so the
				// host is not blocked, but drop the data.
				for {
					ss.reply(&Frame{ID: id, Kind: KindAck, N: len(data)})
					select {
					case data = <-in:
						if data == nil {
							return
						}
					case <-ctx.Done():
						return
					}
				}
			}
			ss.reply(&Frame{ID: id, Kind: KindAck, N: len(data)})
		case <-ctx.Done():
			return
		}
	}
}
