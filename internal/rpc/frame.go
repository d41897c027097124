package rpc

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"

	"github.com/bangerdev/banger/internal/progress"
)

// ProtocolVersion is the wire protocol version. A server answers requests
// of any other version with bad_version.
const ProtocolVersion = 1

// MaxRequestSize caps one request frame (including its newline).
const MaxRequestSize = 4 << 20

// request is the one frame a client sends.
type request struct {
	V      int             `json:"v"`
	OpID   string          `json:"op_id,omitempty"`
	Method string          `json:"method"`
	Params json.RawMessage `json:"params,omitempty"`
	Events bool            `json:"events,omitempty"`
}

// eventFrame, resultFrame and errorFrame are what a server sends.
type eventFrame struct {
	Event progress.Event `json:"event"`
}

type resultFrame struct {
	Result json.RawMessage `json:"result"`
	OpID   string          `json:"op_id"`
}

type errorFrame struct {
	Error *Error `json:"error"`
}

// responseFrame is what a client decodes: exactly one field group is set.
// Stream and Ack come only from streaming methods.
type responseFrame struct {
	Stream *StreamMsg      `json:"stream"`
	Ack    int             `json:"ack"`
	Event  *progress.Event `json:"event"`
	Result json.RawMessage `json:"result"`
	OpID   string          `json:"op_id"`
	Error  *Error          `json:"error"`
}

// decodeRequest parses one request frame (without its newline). Errors are
// *Error with code bad_version (the version is checked first, so a newer
// client with a different frame shape still gets bad_version) or
// bad_request. server describes the server in version messages. The returned request has a valid method; its OpID is the
// client's only when well-formed, else "".
func decodeRequest(line []byte, server string) (request, *Error) {
	line = bytes.TrimSpace(line)
	if len(line) == 0 {
		return request{}, Errorf(CodeBadRequest, "empty request")
	}
	var probe struct {
		V *json.RawMessage `json:"v"`
	}
	if err := json.Unmarshal(line, &probe); err != nil {
		return request{}, Errorf(CodeBadRequest, "malformed request: %s", jsonProblem(err))
	}
	if probe.V == nil {
		return request{}, Errorf(CodeBadVersion, "request carries no protocol version; %s speaks version %d (upgrade banger so the CLI and the daemon match)", server, ProtocolVersion)
	}
	var v int
	if err := json.Unmarshal(*probe.V, &v); err != nil || v != ProtocolVersion {
		return request{}, Errorf(CodeBadVersion, "client speaks protocol version %s, %s speaks %d (restart the daemon with `banger daemon stop` so the matching one starts, or upgrade banger)", truncate(string(bytes.TrimSpace(*probe.V)), 40), server, ProtocolVersion)
	}
	var req request
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return request{}, Errorf(CodeBadRequest, "malformed request: %s", jsonProblem(err))
	}
	if _, err := dec.Token(); err != io.EOF {
		return request{}, Errorf(CodeBadRequest, "malformed request: data after the request object")
	}
	if !validMethod(req.Method) {
		if req.Method == "" {
			return request{}, Errorf(CodeBadRequest, "request names no method")
		}
		return request{}, Errorf(CodeBadRequest, "malformed method name %q", truncate(req.Method, 80))
	}
	if !validOpID(req.OpID) {
		req.OpID = ""
	}
	return req, nil
}

// validMethod: 1-128 characters of [A-Za-z0-9._-], e.g. "vm.list",
// "privops.CreateTap".
func validMethod(m string) bool {
	if len(m) == 0 || len(m) > 128 {
		return false
	}
	for i := 0; i < len(m); i++ {
		c := m[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// jsonProblem renders a decoding error without the "json: " prefix and
// naming the offending field where the decoder knows it.
func jsonProblem(err error) string {
	switch e := err.(type) {
	case *json.UnmarshalTypeError:
		if e.Field != "" {
			return fmt.Sprintf("field %q: cannot use JSON %s as %s", e.Field, e.Value, e.Type)
		}
		return fmt.Sprintf("cannot use JSON %s as %s", e.Value, e.Type)
	case *json.SyntaxError:
		return fmt.Sprintf("invalid JSON at byte %d: %s", e.Offset, e.Error())
	}
	msg := err.Error()
	if len(msg) > 6 && msg[:6] == "json: " {
		msg = msg[6:]
	}
	return msg
}
