package rpc

import (
	"context"
	"errors"
	"fmt"

	"github.com/bangerdev/banger/internal/model"
)

// Code is a typed error code carried on the wire. Callers branch on codes,
// never on messages.
type Code string

// Error codes. The set only grows; clients treat an unknown code like
// CodeOperationFailed.
const (
	CodeNotFound        Code = "not_found"
	CodeAlreadyExists   Code = "already_exists"
	CodeNotRunning      Code = "not_running"
	CodeBadRequest      Code = "bad_request"
	CodeBadVersion      Code = "bad_version"
	CodeUnauthorized    Code = "unauthorized"
	CodeUnknownMethod   Code = "unknown_method"
	CodeOperationFailed Code = "operation_failed"
	CodeInUse           Code = "in_use"
	// CodeNotSupported: the host cannot perform the operation (e.g. no
	// device-mapper); callers may fall back to another strategy.
	CodeNotSupported Code = "not_supported"
)

// Error is an error with a code, as sent on the wire. Handlers return it (or
// any error: CodeOf maps the rest); clients receive it from Call with OpID
// set.
type Error struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
	OpID    string `json:"op_id,omitempty"`

	wrapped error
}

// Error returns the message.
func (e *Error) Error() string { return e.Message }

// Unwrap returns the error wrapped with %w by Errorf. An Error decoded from
// the wire wraps the model sentinel matching its code (model.ErrNotFound for
// not_found, ...), so errors.Is works across the socket.
func (e *Error) Unwrap() error {
	if e.wrapped != nil {
		return e.wrapped
	}
	return sentinelFor(e.Code)
}

// Errorf returns an *Error with code and a message formatted like
// fmt.Errorf (%w wraps).
func Errorf(code Code, format string, args ...any) *Error {
	err := fmt.Errorf(format, args...)
	out := &Error{Code: code, Message: err.Error()}
	switch err.(type) {
	case interface{ Unwrap() error }, interface{ Unwrap() []error }:
		out.wrapped = err
	}
	return out
}

// CodeOf returns the code for err: the code of the first *Error in its
// chain, else the code matching a model sentinel (model.ErrNotFound ->
// not_found, ErrAlreadyExists -> already_exists, ErrNotRunning ->
// not_running, ErrInUse -> in_use), else operation_failed (including
// context cancellation and deadlines). CodeOf(nil) is "".
func CodeOf(err error) Code {
	if err == nil {
		return ""
	}
	var re *Error
	if errors.As(err, &re) && re.Code != "" {
		return re.Code
	}
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return CodeOperationFailed
	case errors.Is(err, model.ErrNotFound):
		return CodeNotFound
	case errors.Is(err, model.ErrAlreadyExists):
		return CodeAlreadyExists
	case errors.Is(err, model.ErrNotRunning):
		return CodeNotRunning
	case errors.Is(err, model.ErrInUse):
		return CodeInUse
	}
	return CodeOperationFailed
}

func sentinelFor(c Code) error {
	switch c {
	case CodeNotFound:
		return model.ErrNotFound
	case CodeAlreadyExists:
		return model.ErrAlreadyExists
	case CodeNotRunning:
		return model.ErrNotRunning
	case CodeInUse:
		return model.ErrInUse
	}
	return nil
}

// toWire converts any handler error into the *Error sent to the client.
func toWire(err error, opID string) *Error {
	out := &Error{Code: CodeOf(err), Message: err.Error(), OpID: opID}
	if out.Message == "" {
		out.Message = string(out.Code)
	}
	return out
}
