package api

import (
	"time"

	"github.com/bangerdev/banger/internal/model"
)

// E2B-compatible API methods (docs/e2b.md). `banger e2b serve` uses them;
// the daemon owns keys and sandbox records.
const (
	MethodE2BKeyCreate      = "e2b.key.create"
	MethodE2BKeyList        = "e2b.key.list"
	MethodE2BKeyRevoke      = "e2b.key.revoke"
	MethodE2BKeyVerify      = "e2b.key.verify"
	MethodE2BSandboxCreate  = "e2b.sandbox.create"
	MethodE2BSandboxGet     = "e2b.sandbox.get"
	MethodE2BSandboxTimeout = "e2b.sandbox.timeout"
)

// E2BKeyCreateParams are the inputs of e2b.key.create.
type E2BKeyCreateParams struct {
	Name string `json:"name,omitempty"`
}

// E2BKeyCreated is the result of e2b.key.create: the record and the
// secret, which is shown this once and never stored.
type E2BKeyCreated struct {
	Key    *model.APIKey `json:"key"`
	Secret string        `json:"secret"`
}

// E2BKeyList is the result of e2b.key.list.
type E2BKeyList struct {
	Keys []*model.APIKey `json:"keys"`
}

// E2BKeyRef names one key by id.
type E2BKeyRef struct {
	ID string `json:"id"`
}

// E2BKeyVerifyParams are the inputs of e2b.key.verify: an API key's
// secret. The result is its *model.APIKey; an unknown or revoked key
// fails with rpc.CodeUnauthorized.
type E2BKeyVerifyParams struct {
	Secret string `json:"secret"`
}

// E2BSandboxCreateParams are the inputs of e2b.sandbox.create: a VM made
// from image Template ("base" = the configured default), owned by KeyID,
// deleted Timeout after it starts.
type E2BSandboxCreateParams struct {
	KeyID    string            `json:"key_id"`
	Template string            `json:"template"`
	Metadata map[string]string `json:"metadata,omitempty"`
	Timeout  time.Duration     `json:"timeout"`
	// NAT gives the sandbox internet access.
	NAT bool `json:"nat,omitempty"`
}

// E2BSandbox is the result of e2b.sandbox.create and e2b.sandbox.get: the
// VM and the access token of its envd (derived from its agent token).
type E2BSandbox struct {
	VM        *model.VM `json:"vm"`
	EnvdToken string    `json:"envd_token"`
}

// E2BSandboxTimeoutParams set a sandbox's expiry to EndAt.
type E2BSandboxTimeoutParams struct {
	Ref   string    `json:"ref"`
	EndAt time.Time `json:"end_at"`
}
