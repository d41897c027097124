package model

import "time"

// Sandbox is what the E2B-compatible API records on a VM it created
// (docs/e2b.md): the API key that owns it, the template it was asked
// for, the caller's metadata and when it expires. The daemon deletes the
// VM once EndAt has passed.
type Sandbox struct {
	KeyID    string            `json:"key_id"`
	Template string            `json:"template"`
	Metadata map[string]string `json:"metadata,omitempty"`
	EndAt    time.Time         `json:"end_at"`
}

// APIKey is an E2B API key as stored: its id and name, never the secret
// (the store keeps only its SHA-256).
type APIKey struct {
	ID        string     `json:"id"`
	Name      string     `json:"name,omitempty"`
	CreatedAt time.Time  `json:"created_at"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
}
