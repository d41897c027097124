package rpc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
)

// Handler serves one method. params is the raw JSON of the request's
// params (nil when absent). The result is JSON-encoded for the client; an
// error is sent with CodeOf(err) and err.Error() as message. ctx carries the
// op id (OpIDFrom), the peer (PeerFrom) and, when the client asked for
// them, a progress sink; it is cancelled when the client hangs up or the
// server shuts down.
type Handler func(ctx context.Context, params json.RawMessage) (any, error)

// Validator is implemented by params types that check themselves; Typed
// calls Validate after decoding and answers bad_request when it fails
// (unless the error already is an *Error with its own code).
type Validator interface {
	Validate() error
}

// Typed adapts a typed function to a Handler. Params are decoded strictly:
// unknown fields, wrong types and trailing data are bad_request naming the
// field; absent or null params decode to the zero P.
func Typed[P, R any](fn func(ctx context.Context, p P) (R, error)) Handler {
	return func(ctx context.Context, raw json.RawMessage) (any, error) {
		var p P
		if err := decodeParams(raw, &p); err != nil {
			return nil, err
		}
		if v, ok := any(&p).(Validator); ok {
			if err := v.Validate(); err != nil {
				return nil, asBadRequest(err)
			}
		} else if v, ok := any(p).(Validator); ok {
			if err := v.Validate(); err != nil {
				return nil, asBadRequest(err)
			}
		}
		r, err := fn(ctx, p)
		if err != nil {
			return nil, err
		}
		return r, nil
	}
}

func asBadRequest(err error) error {
	var re *Error
	if errors.As(err, &re) {
		return err
	}
	return Errorf(CodeBadRequest, "%w", err)
}

// decodeParams decodes raw strictly into dst.
func decodeParams(raw json.RawMessage, dst any) error {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return Errorf(CodeBadRequest, "invalid params: %s", jsonProblem(err))
	}
	if _, err := dec.Token(); err != io.EOF {
		return Errorf(CodeBadRequest, "invalid params: data after the params value")
	}
	return nil
}
