package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/bangerdev/banger/internal/model"
)

// PutOperation inserts or replaces the operation record with op.ID.
func (s *Store) PutOperation(ctx context.Context, op *model.Operation) error {
	if op.ID == "" {
		return fmt.Errorf("put operation %s: empty id", op.Kind)
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO operations (id, kind, target, stage, progress, started_at, ended_at, done, error)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, target = excluded.target, stage = excluded.stage,
			progress = excluded.progress, started_at = excluded.started_at, ended_at = excluded.ended_at,
			done = excluded.done, error = excluded.error`,
		op.ID, op.Kind, op.Target, op.Stage, op.Progress, formatTime(op.StartedAt), nullTime(op.EndedAt), boolInt(op.Done), op.Error)
	if err != nil {
		return fmt.Errorf("put operation %s: %w", op.ID, err)
	}
	return nil
}

// ListOperations returns operations ordered by start time, then id: only
// those not done unless includeDone.
func (s *Store) ListOperations(ctx context.Context, includeDone bool) ([]*model.Operation, error) {
	q := `SELECT id, kind, target, stage, progress, started_at, ended_at, done, error FROM operations`
	if !includeDone {
		q += ` WHERE done = 0`
	}
	rows, err := s.db.QueryContext(ctx, q+` ORDER BY started_at, id`)
	if err != nil {
		return nil, fmt.Errorf("list operations: %w", err)
	}
	defer rows.Close()
	var out []*model.Operation
	for rows.Next() {
		var (
			op      model.Operation
			started string
			ended   sql.NullString
			done    int
		)
		if err := rows.Scan(&op.ID, &op.Kind, &op.Target, &op.Stage, &op.Progress, &started, &ended, &done, &op.Error); err != nil {
			return nil, fmt.Errorf("list operations: %w", err)
		}
		op.Done = done != 0
		if op.StartedAt, err = parseTime(started); err != nil {
			return nil, fmt.Errorf("list operations: %w", err)
		}
		if ended.Valid {
			t, err := parseTime(ended.String)
			if err != nil {
				return nil, fmt.Errorf("list operations: %w", err)
			}
			op.EndedAt = &t
		}
		out = append(out, &op)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list operations: %w", err)
	}
	return out, nil
}

// PruneOperations deletes done operations that ended before cutoff and
// returns how many it deleted. Operations in flight are never deleted.
func (s *Store) PruneOperations(ctx context.Context, cutoff time.Time) (int64, error) {
	res, err := s.db.ExecContext(ctx, `DELETE FROM operations WHERE done = 1 AND ended_at IS NOT NULL AND ended_at < ?`, formatTime(cutoff))
	if err != nil {
		return 0, fmt.Errorf("prune operations: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("prune operations: %w", err)
	}
	return n, nil
}
