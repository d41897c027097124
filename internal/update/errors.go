package update

import "errors"

// Errors callers (and tests) branch on. Every error the Updater returns
// wraps at most one of these, with a message that says what to do next.
var (
	ErrNoChannel      = errors.New("no release channel configured")
	ErrUnreachable    = errors.New("release server unreachable")
	ErrBadManifest    = errors.New("malformed release manifest")
	ErrUnknownVersion = errors.New("unknown version")
	ErrDowngrade      = errors.New("the channel's latest release is older than this banger")
	ErrBadSums        = errors.New("malformed SHA256SUMS")
	ErrBadKey         = errors.New("bad release key")
	ErrBadSignature   = errors.New("bad signature")
	ErrNotListed      = errors.New("file not listed in SHA256SUMS")
	ErrHashMismatch   = errors.New("hash mismatch")
	ErrTruncated      = errors.New("truncated download")
	ErrTooLarge       = errors.New("download too large")
	ErrBadArchive     = errors.New("unexpected release archive content")
	ErrBadBuild       = errors.New("release binaries do not match the release")
	ErrIncompatible   = errors.New("incompatible state store")
	ErrInFlight       = errors.New("daemon operations in flight")
	ErrNeedsRoot      = errors.New("needs root")
	ErrNoPrevious     = errors.New("no previous install")
	ErrRolledBack     = errors.New("update failed")
	ErrRollbackFailed = errors.New("update failed and the rollback failed too")
	ErrBusy           = errors.New("another update is running")
)
