package model

import "errors"

// Sentinel errors shared by the store and the services; the daemon maps them
// to RPC error codes (not_found, already_exists, not_running...).
var (
	ErrNotFound      = errors.New("not found")
	ErrAlreadyExists = errors.New("already exists")
	ErrNotRunning    = errors.New("not running")
	ErrInUse         = errors.New("in use")
	ErrExhausted     = errors.New("no free address left")
)
