package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/bangerdev/banger/internal/model"
)

// PutImage inserts or replaces the image record with img.Name. A zero
// CreatedAt is set to now (on img as well).
func (s *Store) PutImage(ctx context.Context, img *model.Image) error {
	if img.Name == "" {
		return fmt.Errorf("put image: empty name")
	}
	if img.CreatedAt.IsZero() {
		img.CreatedAt = s.now()
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO images (name, source, path, size_bytes, sha256, kernel, created_at)
		VALUES (?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (name) DO UPDATE SET source = excluded.source, path = excluded.path, size_bytes = excluded.size_bytes,
			sha256 = excluded.sha256, kernel = excluded.kernel, created_at = excluded.created_at`,
		img.Name, img.Source, img.Path, img.SizeBytes, img.SHA256, img.Kernel, formatTime(img.CreatedAt))
	if err != nil {
		return fmt.Errorf("put image %s: %w", img.Name, err)
	}
	return nil
}

const imageColumns = `name, source, path, size_bytes, sha256, kernel, created_at`

func scanImage(row scanner) (*model.Image, error) {
	var img model.Image
	var created string
	if err := row.Scan(&img.Name, &img.Source, &img.Path, &img.SizeBytes, &img.SHA256, &img.Kernel, &created); err != nil {
		return nil, err
	}
	var err error
	if img.CreatedAt, err = parseTime(created); err != nil {
		return nil, fmt.Errorf("image %s: %w", img.Name, err)
	}
	return &img, nil
}

// GetImage returns the image named name, or an error wrapping
// model.ErrNotFound.
func (s *Store) GetImage(ctx context.Context, name string) (*model.Image, error) {
	img, err := scanImage(s.db.QueryRowContext(ctx, `SELECT `+imageColumns+` FROM images WHERE name = ?`, name))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("image %q: %w (see `banger image list`)", name, model.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get image %s: %w", name, err)
	}
	return img, nil
}

// ListImages returns every image ordered by name.
func (s *Store) ListImages(ctx context.Context) ([]*model.Image, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+imageColumns+` FROM images ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	defer rows.Close()
	var out []*model.Image
	for rows.Next() {
		img, err := scanImage(rows)
		if err != nil {
			return nil, fmt.Errorf("list images: %w", err)
		}
		out = append(out, img)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	return out, nil
}

// DeleteImage removes the image record (not its file). A missing record
// gives an error wrapping model.ErrNotFound.
func (s *Store) DeleteImage(ctx context.Context, name string) error {
	return s.deleteByName(ctx, "images", "image", name)
}

// PutKernel inserts or replaces the kernel record with k.Name. A zero
// ImportedAt is set to now (on k as well).
func (s *Store) PutKernel(ctx context.Context, k *model.Kernel) error {
	if k.Name == "" {
		return fmt.Errorf("put kernel: empty name")
	}
	if k.ImportedAt.IsZero() {
		k.ImportedAt = s.now()
	}
	files := k.Files
	if files == nil {
		files = map[string]string{}
	}
	fj, err := json.Marshal(files)
	if err != nil {
		return fmt.Errorf("put kernel %s: encode files: %w", k.Name, err)
	}
	_, err = s.db.ExecContext(ctx, `INSERT INTO kernels (name, version, source, dir, vmlinux, bzimage, initrd, modules_dir, files, imported_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (name) DO UPDATE SET version = excluded.version, source = excluded.source, dir = excluded.dir,
			vmlinux = excluded.vmlinux, bzimage = excluded.bzimage, initrd = excluded.initrd,
			modules_dir = excluded.modules_dir, files = excluded.files, imported_at = excluded.imported_at`,
		k.Name, k.Version, k.Source, k.Dir, k.Vmlinux, k.BzImage, k.Initrd, k.ModulesDir, string(fj), formatTime(k.ImportedAt))
	if err != nil {
		return fmt.Errorf("put kernel %s: %w", k.Name, err)
	}
	return nil
}

const kernelColumns = `name, version, source, dir, vmlinux, bzimage, initrd, modules_dir, files, imported_at`

func scanKernel(row scanner) (*model.Kernel, error) {
	var k model.Kernel
	var files, imported string
	if err := row.Scan(&k.Name, &k.Version, &k.Source, &k.Dir, &k.Vmlinux, &k.BzImage, &k.Initrd, &k.ModulesDir, &files, &imported); err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(files), &k.Files); err != nil {
		return nil, fmt.Errorf("kernel %s: decode files: %w", k.Name, err)
	}
	var err error
	if k.ImportedAt, err = parseTime(imported); err != nil {
		return nil, fmt.Errorf("kernel %s: %w", k.Name, err)
	}
	return &k, nil
}

// GetKernel returns the kernel named name, or an error wrapping
// model.ErrNotFound.
func (s *Store) GetKernel(ctx context.Context, name string) (*model.Kernel, error) {
	k, err := scanKernel(s.db.QueryRowContext(ctx, `SELECT `+kernelColumns+` FROM kernels WHERE name = ?`, name))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("kernel %q: %w (see `banger kernel list`)", name, model.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get kernel %s: %w", name, err)
	}
	return k, nil
}

// ListKernels returns every kernel ordered by name.
func (s *Store) ListKernels(ctx context.Context) ([]*model.Kernel, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+kernelColumns+` FROM kernels ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list kernels: %w", err)
	}
	defer rows.Close()
	var out []*model.Kernel
	for rows.Next() {
		k, err := scanKernel(rows)
		if err != nil {
			return nil, fmt.Errorf("list kernels: %w", err)
		}
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list kernels: %w", err)
	}
	return out, nil
}

// DeleteKernel removes the kernel record (not its files). A missing record
// gives an error wrapping model.ErrNotFound.
func (s *Store) DeleteKernel(ctx context.Context, name string) error {
	return s.deleteByName(ctx, "kernels", "kernel", name)
}

// deleteByName deletes from a fixed table name (never user input).
func (s *Store) deleteByName(ctx context.Context, table, what, name string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM `+table+` WHERE name = ?`, name)
	if err != nil {
		return fmt.Errorf("delete %s %s: %w", what, name, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("delete %s %s: %w", what, name, err)
	}
	if n == 0 {
		return fmt.Errorf("delete %s %q: %w", what, name, model.ErrNotFound)
	}
	return nil
}
