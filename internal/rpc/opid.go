package rpc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
)

type opIDKey struct{}

// NewOpID returns a short random operation id such as "op-3f9c2a1b7d".
func NewOpID() string {
	var b [5]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux
	return "op-" + hex.EncodeToString(b[:])
}

// WithOpID returns a context carrying the operation id. The server puts
// every request's op id in its handler context; the client forwards it.
func WithOpID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, opIDKey{}, id)
}

// OpIDFrom returns the context's operation id, or "".
func OpIDFrom(ctx context.Context) string {
	id, _ := ctx.Value(opIDKey{}).(string)
	return id
}

// validOpID reports whether a client-chosen op id is acceptable: 1-64
// characters of [A-Za-z0-9._:-], starting with a letter or digit. Anything
// else is replaced by a fresh id (it ends up in logs and terminals).
func validOpID(id string) bool {
	if len(id) == 0 || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case i > 0 && (c == '.' || c == '_' || c == ':' || c == '-'):
		default:
			return false
		}
	}
	return true
}

// Peer is the identity of the process on the other end of a unix socket,
// as reported by the kernel (SO_PEERCRED) when it connected.
type Peer struct {
	UID, GID uint32
	PID      int32
}

type peerKey struct{}

func withPeer(ctx context.Context, p Peer) context.Context {
	return context.WithValue(ctx, peerKey{}, p)
}

// PeerFrom returns the caller's credentials inside a handler.
func PeerFrom(ctx context.Context) (Peer, bool) {
	p, ok := ctx.Value(peerKey{}).(Peer)
	return p, ok
}
