// Package store is banger's state store: one SQLite database (pure-Go
// driver modernc.org/sqlite, no cgo) holding VMs, images, kernels, IP leases
// and operations.
//
// # File and connections
//
// The database is a single file created with mode 0600 (its
// -wal and -shm companions inherit that mode). Every connection gets its
// pragmas from the DSN: journal_mode=WAL (readers never block the writer),
// synchronous=NORMAL, foreign_keys=on, busy_timeout=10s, and _txlock=immediate
// so every transaction takes the write lock at BEGIN (a deferred
// transaction that upgrades to a write lock in WAL mode can fail with
// SQLITE_BUSY without waiting). The pool is capped at 4 connections.
// Several processes may open the same file.
//
// # Migrations
//
// The schema evolves by forward-only numbered migrations. PRAGMA
// user_version holds the last applied number and schema_migrations logs each
// (version, name, applied_at). Open applies pending migrations, each in its
// own write transaction that re-reads the version first, so concurrent
// openers apply each step once. PRAGMA application_id is 0x42414e47
// ("BANG"). A database with a newer version than SchemaVersion, a foreign
// application id, or tables but no banger schema is refused (ErrIncompatible).
// CheckMigrations reads the same facts without writing and backs
// `bangerd --check-migrations` (exit 0 ok, 1 migrations needed, 2
// incompatible).
//
//	1  vms, images, kernels, ip leases
//	2  operations
//
// # Tables
//
// Timestamps are TEXT in fixed-width UTC RFC 3339 with nanoseconds
// ("2025-01-02T03:04:05.000000000Z"), so they sort chronologically as text.
//
//	vms          id TEXT PK, name TEXT UNIQUE, state, image, kernel, driver,
//	             vcpu, memory_mib, disk_size_mib, nat (0/1), ip, mac, error,
//	             runtime (JSON of model.Runtime: the durable teardown identity),
//	             workspace (JSON of model.Workspace, NULL when none),
//	             created_at, updated_at
//	images       name TEXT PK, source, path, size_bytes, sha256, kernel, created_at
//	kernels      name TEXT PK, version, source, dir, vmlinux, bzimage, initrd,
//	             modules_dir, files (JSON: relative file -> sha256), imported_at
//	ip_leases    ip TEXT PK, vm_id TEXT UNIQUE, created_at
//	operations   id TEXT PK, kind, target, stage, progress (REAL, -1 unknown),
//	             started_at, ended_at (NULL while running), done (0/1), error
//
// ip_leases.vm_id has no foreign key, so a lease can be taken before the VM
// record is written; DeleteVM releases the lease in the same transaction.
// AllocateLease hands out the lowest free address of a range inside a
// BEGIN IMMEDIATE transaction, and the UNIQUE constraints on ip and vm_id
// make a double assignment impossible even for a writer that bypassed it.
//
// Errors wrap the sentinels of package model (ErrNotFound,
// ErrAlreadyExists, ErrExhausted, ErrInvalidName) so the daemon can map them
// to RPC error codes.
package store
