package rpc

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
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
	var o callOptions
	for _, opt := range opts {
		opt(&o)
	}
	req := request{V: ProtocolVersion, OpID: OpIDFrom(ctx), Method: method, Events: o.events != nil}
	if params != nil {
		raw, err := json.Marshal(params)
		if err != nil {
			return fmt.Errorf("encode %s params: %w", method, err)
		}
		req.Params = raw
	}
	line, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("encode %s request: %w", method, err)
	}
	line = append(line, '\n')

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
