package rpc

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"

	"github.com/bangerdev/banger/internal/progress"
)

// ErrUnreachable is wrapped by Call when the socket does not exist or
// nothing accepts connections on it (the server is not running). The CLI
// branches on it to auto-start the daemon.
var ErrUnreachable = errors.New("server not reachable")

// Client calls methods on a Server. It is safe for concurrent use; each
// call uses its own connection.
type Client struct {
	path string
}

// NewClient returns a client for the server listening on socketPath.
func NewClient(socketPath string) *Client { return &Client{path: socketPath} }

// SocketPath returns the socket the client dials.
func (c *Client) SocketPath() string { return c.path }

// CallOption modifies one Call.
type CallOption func(*callOptions)

type callOptions struct {
	events func(progress.Event)
}

// WithEvents asks the server to stream the handler's progress events; fn
// receives them in order, on the calling goroutine, before Call returns.
func WithEvents(fn func(progress.Event)) CallOption {
	return func(o *callOptions) { o.events = fn }
}

// Call invokes method with params (JSON-encoded; nil sends none) and
// decodes the result into result (a pointer; nil discards it). The op id
// in ctx (OpIDFrom), if any, is sent so server logs correlate.
//
// Errors: the server's error as *Error (with OpID; errors.Is works for the
// model sentinels of not_found, already_exists, not_running, in_use);
// ErrUnreachable wrapped when no server runs; ctx's error when ctx ends
// first, in which case the connection is closed and the server cancels the
// handler.
func (c *Client) Call(ctx context.Context, method string, params, result any, opts ...CallOption) error {
	o, line, err := requestLine(ctx, method, params, opts)
	if err != nil {
		return err
	}

	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.path)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", method, ctx.Err())
		}
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("%w at %s: %w", ErrUnreachable, c.path, err)
		}
		return fmt.Errorf("connect to %s: %w", c.path, err)
	}
	defer conn.Close()
	// Hanging up is how a cancelled caller cancels the server's handler.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	// A server that refuses the caller answers without reading the
	// request, so a failed write still leaves an answer to read.
	_, werr := conn.Write(line)

	dec := json.NewDecoder(bufio.NewReader(conn))
	for {
		var f responseFrame
		if err := dec.Decode(&f); err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("%s: %w", method, ctx.Err())
			}
			if werr != nil {
				return fmt.Errorf("send %s request to %s: %w", method, c.path, werr)
			}
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) {
				return fmt.Errorf("%s: connection to %s closed before an answer (the server may have stopped or crashed; check its log)", method, c.path)
			}
			return fmt.Errorf("%s: read answer from %s: %w", method, c.path, err)
		}
		switch {
		case f.Stream != nil:
			// A streaming method called with Call: its messages have no
			// reader here; acknowledge them so the handler is not stalled.
			ack, _ := json.Marshal(streamFrame{Ack: streamCost(f.Stream)})
			_, _ = conn.Write(append(ack, '\n'))
		case f.Ack != 0:
		case f.Event != nil:
			if o.events != nil {
				o.events(*f.Event)
			}
		case f.Error != nil:
			if f.Error.Code == "" {
				f.Error.Code = CodeOperationFailed
			}
			return f.Error
		default:
			if result != nil && len(f.Result) > 0 && string(f.Result) != "null" {
				if err := json.Unmarshal(f.Result, result); err != nil {
					return fmt.Errorf("decode %s result (op %s): %w", method, f.OpID, err)
				}
			}
			return nil
		}
	}
}

// ClientStream is the client side of a streaming call (see OpenStream).
type ClientStream struct {
	*Stream
	method string
	conn   net.Conn
	stop   func() bool

	final chan struct{} // closed when the answer (or a failure) is in
	err   error         // the call's outcome, set before final is closed
	res   json.RawMessage
	opID  string
}

// OpenStream starts a streaming call of method with params and returns at
// once: messages go both ways with Send and Recv while the server's
// handler runs, and Wait returns its answer. Recv returns io.EOF after the
// last message the server sent before answering. Events (WithEvents) are
// delivered on the stream's reading goroutine. Close hangs up, which
// cancels the server's handler; so does the end of ctx. Always Close.
func (c *Client) OpenStream(ctx context.Context, method string, params any, opts ...CallOption) (*ClientStream, error) {
	o, line, err := requestLine(ctx, method, params, opts)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.path)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s: %w", method, ctx.Err())
		}
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("%w at %s: %w", ErrUnreachable, c.path, err)
		}
		return nil, fmt.Errorf("connect to %s: %w", c.path, err)
	}
	var wmu sync.Mutex
	write := func(v any) error {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		b = append(b, '\n')
		wmu.Lock()
		defer wmu.Unlock()
		_, err = conn.Write(b)
		return err
	}
	cs := &ClientStream{Stream: newStream(write), method: method, conn: conn, final: make(chan struct{})}
	cs.stop = context.AfterFunc(ctx, func() { conn.Close() })
	// A server that refuses the caller answers without reading the
	// request, so a failed write still leaves an answer to read.
	wmu.Lock()
	_, werr := conn.Write(line)
	wmu.Unlock()
	go cs.read(ctx, werr, o.events)
	return cs, nil
}

// read decodes the server's frames until its answer.
func (cs *ClientStream) read(ctx context.Context, werr error, events func(progress.Event)) {
	var outcome error
	defer func() {
		cs.err = outcome
		cs.Stream.finish(outcome)
		close(cs.final)
	}()
	dec := json.NewDecoder(bufio.NewReader(cs.conn))
	for {
		var f responseFrame
		if err := dec.Decode(&f); err != nil {
			switch {
			case ctx.Err() != nil:
				outcome = fmt.Errorf("%s: %w", cs.method, ctx.Err())
			case werr != nil:
				outcome = fmt.Errorf("send %s request: %w", cs.method, werr)
			case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET):
				outcome = fmt.Errorf("%s: connection closed before an answer (the server may have stopped or crashed; check its log)", cs.method)
			case errors.Is(err, net.ErrClosed):
				outcome = fmt.Errorf("%s: %w", cs.method, ErrStreamClosed)
			default:
				outcome = fmt.Errorf("%s: read answer: %w", cs.method, err)
			}
			return
		}
		var err error
		switch {
		case f.Stream != nil:
			err = cs.Stream.deliver(f.Stream)
		case f.Ack != 0:
			err = cs.Stream.ack(f.Ack)
		case f.Event != nil:
			if events != nil {
				events(*f.Event)
			}
		case f.Error != nil:
			if f.Error.Code == "" {
				f.Error.Code = CodeOperationFailed
			}
			outcome = f.Error
			return
		default:
			cs.res, cs.opID = f.Result, f.OpID
			return
		}
		if err != nil {
			outcome = fmt.Errorf("%s: the server broke the stream protocol: %w", cs.method, err)
			_ = cs.conn.Close()
			return
		}
	}
}

// Wait waits for the server's answer and decodes its result into result
// (a pointer; nil discards it). Errors are as Call's. Messages not yet
// received stay available to Recv.
func (cs *ClientStream) Wait(ctx context.Context, result any) error {
	select {
	case <-cs.final:
	case <-ctx.Done():
		return fmt.Errorf("%s: %w", cs.method, ctx.Err())
	}
	if cs.err != nil {
		return cs.err
	}
	if result != nil && len(cs.res) > 0 && string(cs.res) != "null" {
		if err := json.Unmarshal(cs.res, result); err != nil {
			return fmt.Errorf("decode %s result (op %s): %w", cs.method, cs.opID, err)
		}
	}
	return nil
}

// Close hangs up: a handler still running is cancelled.
func (cs *ClientStream) Close() error {
	cs.stop()
	return cs.conn.Close()
}

// requestLine applies opts and encodes the request frame of a call of
// method with params, newline included.
func requestLine(ctx context.Context, method string, params any, opts []CallOption) (callOptions, []byte, error) {
	var o callOptions
	for _, opt := range opts {
		opt(&o)
	}
	req := request{V: ProtocolVersion, OpID: OpIDFrom(ctx), Method: method, Events: o.events != nil}
	if params != nil {
		raw, err := json.Marshal(params)
		if err != nil {
			return o, nil, fmt.Errorf("encode %s params: %w", method, err)
		}
		req.Params = raw
	}
	line, err := json.Marshal(req)
	if err != nil {
		return o, nil, fmt.Errorf("encode %s request: %w", method, err)
	}
	return o, append(line, '\n'), nil
}
