package rpc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/model"
)

func TestCodeOf(t *testing.T) {
	base := errors.New("disk full")
	for _, tc := range []struct {
		err  error
		want Code
	}{
		{nil, ""},
		{base, CodeOperationFailed},
		{Errorf(CodeBadRequest, "bad"), CodeBadRequest},
		{fmt.Errorf("outer: %w", Errorf(CodeInUse, "busy")), CodeInUse},
		{fmt.Errorf("vm x: %w", model.ErrNotFound), CodeNotFound},
		{model.ErrAlreadyExists, CodeAlreadyExists},
		{fmt.Errorf("stop: %w", model.ErrNotRunning), CodeNotRunning},
		{model.ErrInUse, CodeInUse},
		{context.Canceled, CodeOperationFailed},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), CodeOperationFailed},
		// An explicit code wins over the sentinel it wraps.
		{Errorf(CodeBadRequest, "ref: %w", model.ErrNotFound), CodeBadRequest},
		{errors.Join(base, model.ErrNotFound), CodeNotFound},
	} {
		if got := CodeOf(tc.err); got != tc.want {
			t.Errorf("CodeOf(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

func TestErrorf(t *testing.T) {
	inner := errors.New("permission denied")
	e := Errorf(CodeOperationFailed, "create tap %s: %w", "bgtap1", inner)
	if e.Error() != "create tap bgtap1: permission denied" {
		t.Fatalf("message %q", e.Error())
	}
	if !errors.Is(e, inner) {
		t.Fatal("Errorf does not wrap %w")
	}
	two := Errorf(CodeNotFound, "%w and %w", inner, model.ErrNotFound)
	if !errors.Is(two, inner) || !errors.Is(two, model.ErrNotFound) {
		t.Fatal("multiple %w not wrapped")
	}
	plain := Errorf(CodeBadRequest, "no %s", "name")
	if errors.Unwrap(plain) != nil {
		t.Fatalf("plain error unwraps to %v", errors.Unwrap(plain))
	}

	// Wire round trip: code, message, op id survive; sentinels match.
	b, err := json.Marshal(&Error{Code: CodeNotFound, Message: "no VM matches \"x\"", OpID: "op-1"})
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `{"code":"not_found","message":"no VM matches \"x\"","op_id":"op-1"}` {
		t.Fatalf("wire form %s", b)
	}
	var back Error
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(&back, model.ErrNotFound) || CodeOf(&back) != CodeNotFound || back.OpID != "op-1" {
		t.Fatalf("decoded error %+v lost its identity", back)
	}
	if errors.Is(&Error{Code: CodeOperationFailed}, model.ErrNotFound) {
		t.Fatal("operation_failed matches ErrNotFound")
	}
}

func TestOpIDs(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		id := NewOpID()
		if !strings.HasPrefix(id, "op-") || len(id) != 13 || !validOpID(id) {
			t.Fatalf("bad op id %q", id)
		}
		if seen[id] {
			t.Fatalf("duplicate op id %q", id)
		}
		seen[id] = true
	}
	ctx := WithOpID(context.Background(), "op-abc")
	if OpIDFrom(ctx) != "op-abc" || OpIDFrom(context.Background()) != "" {
		t.Fatal("op id context round trip")
	}
	for id, ok := range map[string]bool{
		"op-1": true, "a": true, "cli:vm.create_2": true, "": false, "-x": false, "a b": false,
		"a\nb": false, "é": false, strings.Repeat("a", 64): true, strings.Repeat("a", 65): false,
		"x\x1b[31m": false,
	} {
		if validOpID(id) != ok {
			t.Errorf("validOpID(%q) = %v", id, !ok)
		}
	}
}

type createParams struct {
	Name   string `json:"name"`
	VCPU   int    `json:"vcpu"`
	Labels []string
}

type validatedParams struct {
	N int `json:"n"`
}

func (p validatedParams) Validate() error {
	if p.N < 0 {
		return fmt.Errorf("n must not be negative, got %d", p.N)
	}
	return nil
}

func TestTyped(t *testing.T) {
	var got createParams
	h := Typed(func(ctx context.Context, p createParams) (string, error) {
		got = p
		return "ok:" + p.Name, nil
	})
	ctx := context.Background()
	res, err := h(ctx, json.RawMessage(`{"name":"a1","vcpu":2}`))
	if err != nil || res != "ok:a1" || got.VCPU != 2 {
		t.Fatalf("decode: %v %v %+v", res, err, got)
	}
	for _, raw := range []string{"", "null", "  null "} {
		got = createParams{Name: "stale"}
		if _, err := h(ctx, json.RawMessage(raw)); err != nil || got.Name != "" {
			t.Fatalf("params %q: %v %+v", raw, err, got)
		}
	}
	for raw, wantInMsg := range map[string]string{
		`{"name":"a","colour":"red"}`: `"colour"`,
		`{"vcpu":"two"}`:              `"vcpu"`,
		`{"name":1}`:                  `"name"`,
		`[1,2]`:                       "invalid params",
		`{"name":"a"`:                 "invalid params",
	} {
		_, err := h(ctx, json.RawMessage(raw))
		if CodeOf(err) != CodeBadRequest || !strings.Contains(err.Error(), wantInMsg) {
			t.Errorf("params %s: got %v, want bad_request mentioning %s", raw, err, wantInMsg)
		}
	}

	// Handler errors pass through unchanged.
	fail := Typed(func(ctx context.Context, p struct{}) (any, error) { return nil, model.ErrNotFound })
	if _, err := fail(ctx, nil); !errors.Is(err, model.ErrNotFound) {
		t.Fatalf("handler error lost: %v", err)
	}

	// Params that validate themselves.
	v := Typed(func(ctx context.Context, p validatedParams) (int, error) { return p.N, nil })
	if _, err := v(ctx, json.RawMessage(`{"n":-1}`)); CodeOf(err) != CodeBadRequest || !strings.Contains(err.Error(), "negative") {
		t.Fatalf("Validate not applied: %v", err)
	}
	if r, err := v(ctx, json.RawMessage(`{"n":3}`)); err != nil || r != 3 {
		t.Fatalf("valid params: %v %v", r, err)
	}
}
