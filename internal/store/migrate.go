package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ErrIncompatible is wrapped by Open and CheckMigrations errors when the
// database was written by a newer banger (or is not a banger database).
var ErrIncompatible = errors.New("incompatible state store")

// applicationID marks banger databases in the SQLite header ("BANG").
const applicationID = 0x42414e47

// migration is one forward-only schema step. Versions are 1, 2, 3... in
// order; a released migration is never edited, only followed by a new one.
type migration struct {
	version int
	name    string
	stmts   []string
}

func migrations() []migration {
	return []migration{
		{1, "vms, images, kernels, ip leases", []string{
			`CREATE TABLE schema_migrations (
				version    INTEGER PRIMARY KEY,
				name       TEXT NOT NULL,
				applied_at TEXT NOT NULL
			)`,
			`CREATE TABLE vms (
				id            TEXT PRIMARY KEY,
				name          TEXT NOT NULL UNIQUE,
				state         TEXT NOT NULL,
				image         TEXT NOT NULL DEFAULT '',
				kernel        TEXT NOT NULL DEFAULT '',
				driver        TEXT NOT NULL DEFAULT '',
				vcpu          INTEGER NOT NULL DEFAULT 0,
				memory_mib    INTEGER NOT NULL DEFAULT 0,
				disk_size_mib INTEGER NOT NULL DEFAULT 0,
				nat           INTEGER NOT NULL DEFAULT 0,
				ip            TEXT NOT NULL DEFAULT '',
				mac           TEXT NOT NULL DEFAULT '',
				error         TEXT NOT NULL DEFAULT '',
				runtime       TEXT NOT NULL DEFAULT '{}',
				workspace     TEXT,
				created_at    TEXT NOT NULL,
				updated_at    TEXT NOT NULL
			)`,
			`CREATE INDEX vms_created ON vms (created_at, name)`,
			`CREATE TABLE images (
				name       TEXT PRIMARY KEY,
				source     TEXT NOT NULL DEFAULT '',
				path       TEXT NOT NULL DEFAULT '',
				size_bytes INTEGER NOT NULL DEFAULT 0,
				sha256     TEXT NOT NULL DEFAULT '',
				kernel     TEXT NOT NULL DEFAULT '',
				created_at TEXT NOT NULL
			)`,
			`CREATE TABLE kernels (
				name        TEXT PRIMARY KEY,
				version     TEXT NOT NULL DEFAULT '',
				source      TEXT NOT NULL DEFAULT '',
				dir         TEXT NOT NULL DEFAULT '',
				vmlinux     TEXT NOT NULL DEFAULT '',
				bzimage     TEXT NOT NULL DEFAULT '',
				initrd      TEXT NOT NULL DEFAULT '',
				modules_dir TEXT NOT NULL DEFAULT '',
				files       TEXT NOT NULL DEFAULT '{}',
				imported_at TEXT NOT NULL
			)`,
			`CREATE TABLE ip_leases (
				ip         TEXT PRIMARY KEY,
				vm_id      TEXT NOT NULL UNIQUE,
				created_at TEXT NOT NULL
			)`,
			fmt.Sprintf(`PRAGMA application_id = %d`, applicationID),
		}},
		{2, "operations", []string{
			`CREATE TABLE operations (
				id         TEXT PRIMARY KEY,
				kind       TEXT NOT NULL,
				target     TEXT NOT NULL DEFAULT '',
				stage      TEXT NOT NULL DEFAULT '',
				progress   REAL NOT NULL DEFAULT 0,
				started_at TEXT NOT NULL,
				ended_at   TEXT,
				done       INTEGER NOT NULL DEFAULT 0,
				error      TEXT NOT NULL DEFAULT ''
			)`,
			`CREATE INDEX operations_started ON operations (done, started_at)`,
		}},
		{3, "vm network policy: allow_lan, port forwards", []string{
			`ALTER TABLE vms ADD COLUMN allow_lan INTEGER NOT NULL DEFAULT 0`,
			`ALTER TABLE vms ADD COLUMN ports TEXT NOT NULL DEFAULT '[]'`,
		}},
		{4, "e2b sandboxes and api keys", []string{
			`ALTER TABLE vms ADD COLUMN sandbox TEXT`,
			`CREATE TABLE e2b_keys (
				id         TEXT PRIMARY KEY,
				name       TEXT NOT NULL DEFAULT '',
				hash       TEXT NOT NULL UNIQUE,
				created_at TEXT NOT NULL,
				revoked_at TEXT
			)`,
		}},
	}
}

// SchemaVersion returns the latest migration this binary knows.
func SchemaVersion() int {
	m := migrations()
	return m[len(m)-1].version
}

// schemaState is what the database header says about its schema.
type schemaState struct {
	version int   // PRAGMA user_version: the last applied migration
	appID   int64 // PRAGMA application_id
	tables  int   // user tables present
}

// readVersion reads the three facts in one statement, hence one snapshot:
// separate statements could see a concurrent migration half-way.
func readVersion(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}) (schemaState, error) {
	var st schemaState
	err := q.QueryRowContext(ctx, `SELECT
		(SELECT user_version FROM pragma_user_version),
		(SELECT application_id FROM pragma_application_id),
		(SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\_%' ESCAPE '\')`).
		Scan(&st.version, &st.appID, &st.tables)
	if err != nil {
		return st, fmt.Errorf("read schema version: %w", err)
	}
	return st, nil
}

// compatible reports, as an error wrapping ErrIncompatible, why this binary
// must not use the database.
func (st schemaState) compatible(path string) error {
	switch {
	case st.appID != 0 && st.appID != applicationID:
		return fmt.Errorf("%w: %s is not a banger database (application id %#x): move it away or point banger at another state directory", ErrIncompatible, path, st.appID)
	case st.appID == 0 && st.version == 0 && st.tables > 0:
		return fmt.Errorf("%w: %s holds %d tables but no banger schema: move it away or point banger at another state directory", ErrIncompatible, path, st.tables)
	case st.version > SchemaVersion():
		return fmt.Errorf("%w: %s has schema version %d but this banger knows only up to %d: it was written by a newer banger; upgrade banger (`banger update`) instead of downgrading", ErrIncompatible, path, st.version, SchemaVersion())
	}
	return nil
}

// migrate applies every migration above the current version and up to
// target, each in its own write transaction. The version is re-read inside
// the transaction, so two processes migrating at once apply each step once.
func migrate(ctx context.Context, db *sql.DB, target int) error {
	for _, m := range migrations() {
		if m.version > target {
			break
		}
		if err := applyMigration(ctx, db, m); err != nil {
			return err
		}
	}
	return nil
}

func applyMigration(ctx context.Context, db *sql.DB, m migration) error {
	tx, err := db.BeginTx(ctx, nil) // BEGIN IMMEDIATE (see dsn)
	if err != nil {
		return fmt.Errorf("migration %d (%s): begin: %w", m.version, m.name, err)
	}
	defer rollback(tx)
	var cur int
	if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&cur); err != nil {
		return fmt.Errorf("migration %d (%s): read version: %w", m.version, m.name, err)
	}
	if cur >= m.version {
		return nil
	}
	if cur != m.version-1 {
		return fmt.Errorf("migration %d (%s): database is at version %d, expected %d", m.version, m.name, cur, m.version-1)
	}
	for _, stmt := range m.stmts {
		if _, err := tx.ExecContext(ctx, stmt); err != nil {
			return fmt.Errorf("migration %d (%s): %w", m.version, m.name, err)
		}
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)`,
		m.version, m.name, formatTime(time.Now())); err != nil {
		return fmt.Errorf("migration %d (%s): record: %w", m.version, m.name, err)
	}
	if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", m.version)); err != nil {
		return fmt.Errorf("migration %d (%s): set version: %w", m.version, m.name, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migration %d (%s): commit: %w", m.version, m.name, err)
	}
	return nil
}

// MigrationStatus is the answer of CheckMigrations, and the exit status of
// `bangerd --check-migrations`.
type MigrationStatus int

const (
	// MigrationsOK: the database is at this binary's schema version.
	MigrationsOK MigrationStatus = 0
	// MigrationsNeeded: older schema (or no database yet); Open migrates it.
	MigrationsNeeded MigrationStatus = 1
	// MigrationsIncompatible: newer schema, or not a banger database; Open
	// refuses it.
	MigrationsIncompatible MigrationStatus = 2
)

// String returns "ok", "migrations needed" or "incompatible".
func (m MigrationStatus) String() string {
	switch m {
	case MigrationsOK:
		return "ok"
	case MigrationsNeeded:
		return "migrations needed"
	default:
		return "incompatible"
	}
}

// CheckMigrations inspects the database at path without changing it and
// says whether this binary can use it as is (MigrationsOK), would migrate it
// (MigrationsNeeded; also when the file does not exist yet) or must refuse
// it (MigrationsIncompatible). detail is one line for humans. When err is
// non-nil (the file cannot be read or is not SQLite) the status is
// MigrationsIncompatible.
func CheckMigrations(ctx context.Context, path string) (MigrationStatus, string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return MigrationsIncompatible, "", fmt.Errorf("check state store %s: %w", path, err)
	}
	if _, err := os.Stat(abs); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return MigrationsNeeded, fmt.Sprintf("%s does not exist yet: the daemon creates it at schema version %d on first start", abs, SchemaVersion()), nil
		}
		return MigrationsIncompatible, "", fmt.Errorf("check state store %s: %w", abs, err)
	}
	db, err := sql.Open("sqlite", dsn(abs, true))
	if err != nil {
		return MigrationsIncompatible, "", fmt.Errorf("check state store %s: %w", abs, err)
	}
	defer db.Close()
	st, err := readVersion(ctx, db)
	if err != nil {
		return MigrationsIncompatible, "", fmt.Errorf("check state store %s: %w", abs, err)
	}
	if err := st.compatible(abs); err != nil {
		return MigrationsIncompatible, err.Error(), nil
	}
	if st.version < SchemaVersion() {
		var pending []string
		for _, m := range migrations() {
			if m.version > st.version {
				pending = append(pending, fmt.Sprintf("%d (%s)", m.version, m.name))
			}
		}
		return MigrationsNeeded, fmt.Sprintf("%s is at schema version %d of %d; pending migrations: %s", abs, st.version, SchemaVersion(), strings.Join(pending, ", ")), nil
	}
	return MigrationsOK, fmt.Sprintf("%s is at schema version %d (current)", abs, st.version), nil
}
