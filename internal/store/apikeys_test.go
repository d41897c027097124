package store

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/model"
)

func TestAPIKeys(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	k := &model.APIKey{ID: "k1", Name: "ci"}
	if err := s.CreateAPIKey(ctx, k, "h1"); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateAPIKey(ctx, &model.APIKey{ID: "k2"}, "h1"); !errors.Is(err, model.ErrAlreadyExists) {
		t.Fatalf("duplicate hash: %v", err)
	}
	got, err := s.APIKeyByHash(ctx, "h1")
	if err != nil || got.ID != "k1" || got.Name != "ci" || got.RevokedAt != nil {
		t.Fatalf("by hash: %+v %v", got, err)
	}
	if _, err := s.APIKeyByHash(ctx, "nope"); !errors.Is(err, model.ErrNotFound) {
		t.Fatalf("unknown hash: %v", err)
	}
	r, err := s.RevokeAPIKey(ctx, "k1")
	if err != nil || r.RevokedAt == nil {
		t.Fatalf("revoke: %+v %v", r, err)
	}
	if _, err := s.RevokeAPIKey(ctx, "zz"); !errors.Is(err, model.ErrNotFound) {
		t.Fatalf("revoke unknown: %v", err)
	}
	keys, err := s.ListAPIKeys(ctx)
	if err != nil || len(keys) != 1 || keys[0].RevokedAt == nil {
		t.Fatalf("list: %+v %v", keys, err)
	}
}

func TestVMSandboxRoundTrip(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	end := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	vm := &model.VM{ID: "abcd1234", Name: "sb1", State: model.StateStopped,
		Sandbox: &model.Sandbox{KeyID: "k1", Template: "base", Metadata: map[string]string{"a": "b"}, EndAt: end}}
	if err := s.CreateVM(ctx, vm); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetVM(ctx, vm.ID)
	if err != nil || got.Sandbox == nil || got.Sandbox.KeyID != "k1" || got.Sandbox.Metadata["a"] != "b" || !got.Sandbox.EndAt.Equal(end) {
		t.Fatalf("get: %+v %v", got.Sandbox, err)
	}
	got.Sandbox.EndAt = end.Add(time.Hour)
	if err := s.UpdateVM(ctx, got); err != nil {
		t.Fatal(err)
	}
	again, _ := s.GetVM(ctx, vm.ID)
	if !again.Sandbox.EndAt.Equal(end.Add(time.Hour)) {
		t.Fatalf("update: %+v", again.Sandbox)
	}
	plain := &model.VM{ID: "ffff0000", Name: "plain", State: model.StateStopped}
	if err := s.CreateVM(ctx, plain); err != nil {
		t.Fatal(err)
	}
	if p, _ := s.GetVM(ctx, plain.ID); p.Sandbox != nil {
		t.Fatalf("plain VM got a sandbox: %+v", p.Sandbox)
	}
}
