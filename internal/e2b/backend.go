package e2b

import (
	"context"
	"errors"
	"time"
)

// Errors a Backend wraps so the API can answer the SDK's error types.
var (
	ErrNotFound     = errors.New("not found")
	ErrUnauthorized = errors.New("unauthorized")
	ErrBadRequest   = errors.New("bad request")
)

// Sandbox is a sandbox as the API sees it.
type Sandbox struct {
	ID        string
	KeyID     string
	Template  string
	Metadata  map[string]string
	StartedAt time.Time
	EndAt     time.Time
	Running   bool
	IP        string // the guest's address on the bridge
	EnvdToken string // envd's access token
	VCPU      int
	MemoryMiB int64
	DiskMiB   int64
}

// CreateRequest asks for a sandbox.
type CreateRequest struct {
	KeyID    string
	Template string
	Metadata map[string]string
	Timeout  time.Duration
	Internet bool // the caller asked for internet access (NAT)
}

// Backend is what the API needs from banger. Implementations wrap
// ErrNotFound for unknown sandboxes or templates, ErrUnauthorized for bad
// keys and ErrBadRequest for invalid input.
type Backend interface {
	// VerifyKey returns the id of the API key with this secret.
	VerifyKey(ctx context.Context, secret string) (keyID string, err error)
	// Create makes and starts a sandbox; it returns once the VM runs (its
	// envd may still be starting).
	Create(ctx context.Context, req CreateRequest) (*Sandbox, error)
	// Get returns the sandbox with this exact id.
	Get(ctx context.Context, id string) (*Sandbox, error)
	// List returns every sandbox (of every key).
	List(ctx context.Context) ([]*Sandbox, error)
	// Delete deletes a sandbox and its VM.
	Delete(ctx context.Context, id string) error
	// SetEnd sets when the sandbox is deleted.
	SetEnd(ctx context.Context, id string, end time.Time) error
}
