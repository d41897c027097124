package envd

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// MaxMessage is the largest Connect message (unary body or one stream
// envelope) the server reads.
const MaxMessage = 4 << 20

// Connect envelope flags.
const (
	flagCompressed = 0x01
	flagEndStream  = 0x02
)

// Code is a Connect error code.
type Code string

// The Connect codes this server uses.
const (
	CodeCanceled           Code = "canceled"
	CodeUnknown            Code = "unknown"
	CodeInvalidArgument    Code = "invalid_argument"
	CodeDeadlineExceeded   Code = "deadline_exceeded"
	CodeNotFound           Code = "not_found"
	CodeAlreadyExists      Code = "already_exists"
	CodePermissionDenied   Code = "permission_denied"
	CodeResourceExhausted  Code = "resource_exhausted"
	CodeFailedPrecondition Code = "failed_precondition"
	CodeUnimplemented      Code = "unimplemented"
	CodeInternal           Code = "internal"
	CodeUnavailable        Code = "unavailable"
	CodeUnauthenticated    Code = "unauthenticated"
)

// HTTPStatus is the status a unary error with this code is sent with
// (Connect protocol's mapping).
func (c Code) HTTPStatus() int {
	switch c {
	case CodeCanceled:
		return 499
	case CodeInvalidArgument, CodeFailedPrecondition:
		return http.StatusBadRequest
	case CodeDeadlineExceeded:
		return http.StatusGatewayTimeout
	case CodeNotFound:
		return http.StatusNotFound
	case CodeAlreadyExists:
		return http.StatusConflict
	case CodePermissionDenied:
		return http.StatusForbidden
	case CodeResourceExhausted:
		return http.StatusTooManyRequests
	case CodeUnimplemented:
		return http.StatusNotImplemented
	case CodeUnavailable:
		return http.StatusServiceUnavailable
	case CodeUnauthenticated:
		return http.StatusUnauthorized
	}
	return http.StatusInternalServerError
}

// Error is a Connect error: a code and a message for the client.
type Error struct {
	Code    Code   `json:"code"`
	Message string `json:"message,omitempty"`
}

func (e *Error) Error() string { return string(e.Code) + ": " + e.Message }

// errorf builds an *Error.
func errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// asError turns any error into an *Error (CodeInternal unless it is one).
func asError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{Code: CodeInternal, Message: err.Error()}
}

// ErrTooLarge is wrapped by readers when a message exceeds its limit.
var ErrTooLarge = errors.New("message too large")

// ReadEnvelope reads one Connect envelope (flags, 4-byte big-endian length,
// payload) of at most limit payload bytes. It returns io.EOF at a clean
// end of input, io.ErrUnexpectedEOF on a torn envelope and an error
// wrapping ErrTooLarge when the length exceeds limit.
func ReadEnvelope(r io.Reader, limit int) (flags byte, payload []byte, err error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if uint64(n) > uint64(limit) {
		return 0, nil, fmt.Errorf("envelope of %d bytes: %w (limit %d)", n, ErrTooLarge, limit)
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return hdr[0], payload, nil
}

// WriteEnvelope writes one envelope.
func WriteEnvelope(w io.Writer, flags byte, payload []byte) error {
	buf := make([]byte, 5+len(payload))
	buf[0] = flags
	binary.BigEndian.PutUint32(buf[1:], uint32(len(payload)))
	copy(buf[5:], payload)
	_, err := w.Write(buf)
	return err
}

// endStream is the payload of the final envelope of a stream.
type endStream struct {
	Error *Error `json:"error,omitempty"`
}

// decodeStrict decodes one JSON message, refusing trailing data.
func decodeStrict(data []byte, v any) error {
	if len(data) == 0 {
		data = []byte("{}")
	}
	if err := json.Unmarshal(data, v); err != nil {
		return errorf(CodeInvalidArgument, "decode request: %v", err)
	}
	return nil
}

// readUnary reads the body of a unary Connect request into v.
func readUnary(r *http.Request, v any) error {
	if ct := r.Header.Get("Content-Type"); ct != "application/json" && ct != "application/json; charset=utf-8" {
		return errorf(CodeInvalidArgument, "content type %q: this server speaks the Connect protocol with JSON (application/json)", ct)
	}
	if r.Header.Get("Content-Encoding") != "" && r.Header.Get("Content-Encoding") != "identity" {
		return errorf(CodeUnimplemented, "content encoding %q is not supported", r.Header.Get("Content-Encoding"))
	}
	data, err := io.ReadAll(io.LimitReader(r.Body, MaxMessage+1))
	if err != nil {
		return errorf(CodeInvalidArgument, "read request: %v", err)
	}
	if len(data) > MaxMessage {
		return errorf(CodeResourceExhausted, "request larger than %d bytes", MaxMessage)
	}
	return decodeStrict(data, v)
}

// writeUnaryError sends err as a unary Connect error.
func writeUnaryError(w http.ResponseWriter, err error) {
	e := asError(err)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.Code.HTTPStatus())
	_ = json.NewEncoder(w).Encode(e)
}

// writeUnary sends v as a unary Connect response.
func writeUnary(w http.ResponseWriter, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		writeUnaryError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(data)
}

// readStreamRequest reads the single enveloped request message of a
// server-streaming Connect call into v.
func readStreamRequest(r *http.Request, v any) error {
	if ct := r.Header.Get("Content-Type"); ct != "application/connect+json" {
		return errorf(CodeInvalidArgument, "content type %q: streaming calls take application/connect+json", ct)
	}
	if enc := r.Header.Get("Connect-Content-Encoding"); enc != "" && enc != "identity" {
		return errorf(CodeUnimplemented, "content encoding %q is not supported", enc)
	}
	flags, payload, err := ReadEnvelope(r.Body, MaxMessage)
	switch {
	case errors.Is(err, ErrTooLarge):
		return errorf(CodeResourceExhausted, "%v", err)
	case err != nil:
		return errorf(CodeInvalidArgument, "read request envelope: %v", err)
	case flags&flagCompressed != 0:
		return errorf(CodeUnimplemented, "compressed envelopes are not supported")
	case flags&flagEndStream != 0:
		return errorf(CodeInvalidArgument, "request envelope marked end of stream")
	}
	return decodeStrict(payload, v)
}

// stream writes a server-streaming response: messages, then the end.
type stream struct {
	w       http.ResponseWriter
	started bool
}

func newStream(w http.ResponseWriter) *stream { return &stream{w: w} }

func (s *stream) start() {
	if s.started {
		return
	}
	s.started = true
	s.w.Header().Set("Content-Type", "application/connect+json")
	s.w.WriteHeader(http.StatusOK)
}

// Send writes one message and flushes it.
func (s *stream) Send(v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	s.start()
	if err := WriteEnvelope(s.w, 0, data); err != nil {
		return err
	}
	if f, ok := s.w.(http.Flusher); ok {
		f.Flush()
	}
	return nil
}

// End writes the end-of-stream envelope carrying err (nil for success).
func (s *stream) End(err error) {
	s.start()
	var es endStream
	if err != nil {
		es.Error = asError(err)
	}
	data, _ := json.Marshal(es)
	_ = WriteEnvelope(s.w, flagEndStream, data)
	if f, ok := s.w.(http.Flusher); ok {
		f.Flush()
	}
}
