package daemon

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/e2b"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/rpc"
)

func TestE2BKeysThroughRPC(t *testing.T) {
	_, c := startDaemon(t)
	ctx := context.Background()
	var created api.E2BKeyCreated
	if err := c.Call(ctx, api.MethodE2BKeyCreate, api.E2BKeyCreateParams{Name: "ci"}, &created); err != nil {
		t.Fatal(err)
	}
	if !e2b.ValidKeyFormat(created.Secret) || created.Key.ID == "" || created.Key.Name != "ci" {
		t.Fatalf("created %+v", created)
	}
	b := e2b.DaemonBackend{Client: c}
	id, err := b.VerifyKey(ctx, created.Secret)
	if err != nil || id != created.Key.ID {
		t.Fatalf("verify: %q %v", id, err)
	}
	for _, bad := range []string{"", "e2b_0000000000000000000000000000000000000000", created.Secret + "0"} {
		if _, err := b.VerifyKey(ctx, bad); !errors.Is(err, e2b.ErrUnauthorized) {
			t.Errorf("verify %q: %v", bad, err)
		}
	}
	var list api.E2BKeyList
	if err := c.Call(ctx, api.MethodE2BKeyList, api.Empty{}, &list); err != nil || len(list.Keys) != 1 {
		t.Fatalf("list: %v %+v", err, list)
	}
	var revoked model.APIKey
	if err := c.Call(ctx, api.MethodE2BKeyRevoke, api.E2BKeyRef{ID: created.Key.ID}, &revoked); err != nil || revoked.RevokedAt == nil {
		t.Fatalf("revoke: %v %+v", err, revoked)
	}
	if _, err := b.VerifyKey(ctx, created.Secret); !errors.Is(err, e2b.ErrUnauthorized) {
		t.Fatalf("revoked key verified: %v", err)
	}
	if err := c.Call(ctx, api.MethodE2BKeyRevoke, api.E2BKeyRef{ID: "nope"}, &revoked); rpc.CodeOf(err) != rpc.CodeNotFound {
		t.Fatalf("revoke unknown: %v", err)
	}
}

func TestE2BSandboxRecordsAndReaper(t *testing.T) {
	d, c := startDaemon(t)
	ctx := context.Background()
	b := e2b.DaemonBackend{Client: c}
	if _, err := b.Create(ctx, e2b.CreateRequest{KeyID: "k1", Template: "no-such-image", Timeout: time.Minute}); !errors.Is(err, e2b.ErrNotFound) {
		t.Fatalf("unknown template: %v", err)
	}
	if _, err := b.Create(ctx, e2b.CreateRequest{KeyID: "k1", Template: "base", Timeout: 48 * time.Hour}); !errors.Is(err, e2b.ErrBadRequest) {
		t.Fatalf("overlong timeout: %v", err)
	}
	// Records as e2b.sandbox.create leaves them (this daemon has no VM
	// runtime, so they are written directly).
	past := &model.VM{ID: "00000000000000a1", Name: "sb-past", State: model.StateStopped,
		Sandbox: &model.Sandbox{KeyID: "k1", Template: "base", EndAt: time.Now().Add(-time.Second)}}
	future := &model.VM{ID: "00000000000000a2", Name: "sb-future", State: model.StateStopped,
		Sandbox: &model.Sandbox{KeyID: "k1", Template: "base", EndAt: time.Now().Add(time.Hour)}}
	plain := &model.VM{ID: "00000000000000a3", Name: "plain", State: model.StateStopped}
	for _, vm := range []*model.VM{past, future, plain} {
		if err := d.Store().CreateVM(ctx, vm); err != nil {
			t.Fatal(err)
		}
	}
	sbs, err := b.List(ctx)
	if err != nil || len(sbs) != 2 {
		t.Fatalf("list: %v %d", err, len(sbs))
	}
	if _, err := b.Get(ctx, plain.ID); !errors.Is(err, e2b.ErrNotFound) {
		t.Fatalf("a plain VM is not a sandbox: %v", err)
	}
	end := time.Now().Add(2 * time.Hour).UTC().Truncate(time.Second)
	if err := b.SetEnd(ctx, future.ID, end); err != nil {
		t.Fatal(err)
	}
	if got, err := b.Get(ctx, future.ID); err != nil || !got.EndAt.Equal(end) || got.KeyID != "k1" {
		t.Fatalf("after SetEnd: %+v %v", got, err)
	}
	d.reapSandboxes(ctx)
	if _, err := d.Store().GetVM(ctx, past.ID); !errors.Is(err, model.ErrNotFound) {
		t.Fatalf("expired sandbox kept: %v", err)
	}
	for _, id := range []string{future.ID, plain.ID} {
		if _, err := d.Store().GetVM(ctx, id); err != nil {
			t.Fatalf("%s reaped: %v", id, err)
		}
	}
}
