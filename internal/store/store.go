package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	sqlite "modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// busyTimeoutMS is how long a connection waits for another writer (in this
// or another process) before failing with SQLITE_BUSY.
const busyTimeoutMS = 10000

// maxOpenConns bounds the pool. WAL lets readers run beside the single
// writer; write transactions queue on BEGIN IMMEDIATE.
const maxOpenConns = 4

// timeLayout is fixed-width UTC so that TEXT columns sort chronologically.
const timeLayout = "2006-01-02T15:04:05.000000000Z"

// Store is banger's state store: one SQLite database file. It is safe for
// concurrent use by many goroutines, and several processes may open the same
// file (writes are serialised by SQLite's lock, readers never block).
type Store struct {
	db   *sql.DB
	path string
	now  func() time.Time
}

// Open opens (creating it with mode 0600 if needed) the database at path
// and applies pending migrations, one transaction each. The parent
// directory must exist. A database whose schema is newer than this binary
// knows, or that is not a banger database, is refused with an error
// wrapping ErrIncompatible.
func Open(ctx context.Context, path string) (*Store, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("open state store %s: %w", path, err)
	}
	if err := ensureFile(abs); err != nil {
		return nil, err
	}
	db, err := sql.Open("sqlite", dsn(abs, false))
	if err != nil {
		return nil, fmt.Errorf("open state store %s: %w", abs, err)
	}
	db.SetMaxOpenConns(maxOpenConns)
	db.SetMaxIdleConns(maxOpenConns)
	s := &Store{db: db, path: abs, now: time.Now}
	// Switching a new file to WAL takes an exclusive lock without waiting
	// on busy_timeout, so a concurrent opener may see SQLITE_BUSY here:
	// retry for as long as busy_timeout would have waited.
	deadline := time.Now().Add(busyTimeoutMS * time.Millisecond)
	for delay := 5 * time.Millisecond; ; delay = min(2*delay, 200*time.Millisecond) {
		err = s.init(ctx)
		if err == nil {
			return s, nil
		}
		if !isBusy(err) || time.Now().After(deadline) {
			_ = db.Close()
			return nil, err
		}
		select {
		case <-ctx.Done():
			_ = db.Close()
			return nil, fmt.Errorf("open state store %s: %w", abs, ctx.Err())
		case <-time.After(delay):
		}
	}
}

func (s *Store) init(ctx context.Context) error {
	var mode string
	if err := s.db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return fmt.Errorf("open state store %s: %w", s.path, err)
	}
	if !strings.EqualFold(mode, "wal") {
		return fmt.Errorf("open state store %s: journal mode is %q, not wal (is the state directory on a filesystem without shared-memory support?)", s.path, mode)
	}
	v, err := readVersion(ctx, s.db)
	if err != nil {
		return fmt.Errorf("open state store %s: %w", s.path, err)
	}
	if err := v.compatible(s.path); err != nil {
		return err
	}
	if err := migrate(ctx, s.db, SchemaVersion()); err != nil {
		return fmt.Errorf("migrate state store %s: %w", s.path, err)
	}
	// Another process may have migrated past us meanwhile.
	if v, err = readVersion(ctx, s.db); err != nil {
		return fmt.Errorf("open state store %s: %w", s.path, err)
	}
	return v.compatible(s.path)
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// Path returns the absolute path of the database file.
func (s *Store) Path() string { return s.path }

// ensureFile creates the database file with mode 0600, or tightens the mode
// of an existing one, so that SQLite (which copies the database's mode to
// its -wal and -shm files) never makes a world-readable store. It never
// opens an existing file: closing any descriptor of a database drops the
// POSIX locks SQLite holds on it in this process.
func ensureFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	switch {
	case err == nil:
		if err := f.Close(); err != nil {
			return fmt.Errorf("create state store %s: %w", path, err)
		}
		return nil
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("create state store %s: directory %s does not exist (it is created by the daemon's state layout)", path, filepath.Dir(path))
	case !errors.Is(err, fs.ErrExist):
		return fmt.Errorf("create state store %s: %w", path, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("stat state store %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("state store %s is not a regular file", path)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(path, fi.Mode().Perm()&0o700); err != nil {
			return fmt.Errorf("restrict state store %s to its owner: %w", path, err)
		}
	}
	return nil
}

// dsn builds the connection string. Pragmas live in the DSN so that every
// pooled connection gets them; _txlock=immediate makes every transaction
// take the write lock up front, which avoids SQLITE_BUSY on lock upgrades
// inside a transaction (busy_timeout does not help those).
func dsn(abs string, readOnly bool) string {
	u := url.URL{Scheme: "file", Path: abs}
	q := []string{
		fmt.Sprintf("_pragma=busy_timeout(%d)", busyTimeoutMS),
		"_pragma=foreign_keys(1)",
	}
	if readOnly {
		q = append(q, "mode=ro")
	} else {
		q = append(q,
			"_pragma=journal_mode(WAL)",
			"_pragma=synchronous(NORMAL)",
			"_txlock=immediate",
		)
	}
	return u.String() + "?" + strings.Join(q, "&")
}

// isConstraint reports whether err is a UNIQUE/PRIMARY KEY violation.
func isConstraint(err error) bool {
	var se *sqlite.Error
	return errors.As(err, &se) && se.Code()&0xff == sqlite3.SQLITE_CONSTRAINT
}

// isBusy reports whether err is SQLITE_BUSY or SQLITE_LOCKED.
func isBusy(err error) bool {
	var se *sqlite.Error
	if !errors.As(err, &se) {
		return false
	}
	c := se.Code() & 0xff
	return c == sqlite3.SQLITE_BUSY || c == sqlite3.SQLITE_LOCKED
}

func formatTime(t time.Time) string { return t.UTC().Format(timeLayout) }

func parseTime(s string) (time.Time, error) {
	t, err := time.Parse(timeLayout, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("bad timestamp %q in store: %w", s, err)
	}
	return t, nil
}

func nullTime(t *time.Time) sql.NullString {
	if t == nil {
		return sql.NullString{}
	}
	return sql.NullString{String: formatTime(*t), Valid: true}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// rollback is deferred after BeginTx; it is a no-op after Commit.
func rollback(tx *sql.Tx) { _ = tx.Rollback() }
