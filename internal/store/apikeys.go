package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/bangerdev/banger/internal/model"
)

// CreateAPIKey records an E2B API key by the SHA-256 of its secret
// (hash, hex). A zero CreatedAt is set to now.
func (s *Store) CreateAPIKey(ctx context.Context, k *model.APIKey, hash string) error {
	if k.ID == "" || hash == "" {
		return fmt.Errorf("create api key: empty id or hash")
	}
	if k.CreatedAt.IsZero() {
		k.CreatedAt = s.now()
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO e2b_keys (id, name, hash, created_at) VALUES (?, ?, ?, ?)`,
		k.ID, k.Name, hash, formatTime(k.CreatedAt))
	if err != nil {
		if isConstraint(err) {
			return fmt.Errorf("%w: api key %s", model.ErrAlreadyExists, k.ID)
		}
		return fmt.Errorf("create api key %s: %w", k.ID, err)
	}
	return nil
}

func scanAPIKey(row scanner) (*model.APIKey, error) {
	var (
		k       model.APIKey
		created string
		revoked sql.NullString
	)
	if err := row.Scan(&k.ID, &k.Name, &created, &revoked); err != nil {
		return nil, err
	}
	var err error
	if k.CreatedAt, err = parseTime(created); err != nil {
		return nil, fmt.Errorf("api key %s: %w", k.ID, err)
	}
	if revoked.Valid {
		t, err := parseTime(revoked.String)
		if err != nil {
			return nil, fmt.Errorf("api key %s: %w", k.ID, err)
		}
		k.RevokedAt = &t
	}
	return &k, nil
}

// APIKeyByHash returns the key whose secret hashes to hash (revoked or
// not), or an error wrapping model.ErrNotFound.
func (s *Store) APIKeyByHash(ctx context.Context, hash string) (*model.APIKey, error) {
	k, err := scanAPIKey(s.db.QueryRowContext(ctx, `SELECT id, name, created_at, revoked_at FROM e2b_keys WHERE hash = ?`, hash))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("api key: %w", model.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get api key: %w", err)
	}
	return k, nil
}

// ListAPIKeys returns every key, oldest first.
func (s *Store) ListAPIKeys(ctx context.Context) ([]*model.APIKey, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, name, created_at, revoked_at FROM e2b_keys ORDER BY created_at, id`)
	if err != nil {
		return nil, fmt.Errorf("list api keys: %w", err)
	}
	defer rows.Close()
	var out []*model.APIKey
	for rows.Next() {
		k, err := scanAPIKey(rows)
		if err != nil {
			return nil, fmt.Errorf("list api keys: %w", err)
		}
		out = append(out, k)
	}
	return out, rows.Err()
}

// RevokeAPIKey marks key id revoked (idempotent) and returns it; an
// unknown id gives an error wrapping model.ErrNotFound.
func (s *Store) RevokeAPIKey(ctx context.Context, id string) (*model.APIKey, error) {
	if _, err := s.db.ExecContext(ctx, `UPDATE e2b_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL`, formatTime(s.now()), id); err != nil {
		return nil, fmt.Errorf("revoke api key %s: %w", id, err)
	}
	k, err := scanAPIKey(s.db.QueryRowContext(ctx, `SELECT id, name, created_at, revoked_at FROM e2b_keys WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("api key %q: %w (see `banger e2b key list`)", id, model.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("revoke api key %s: %w", id, err)
	}
	return k, nil
}
