package template

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/bangerdev/banger/internal/atomicfile"
)

const manifestName = "template.json"

// Store keeps templates under one root directory (the state dir's
// templates/). It is safe for concurrent use by one process; Manager
// serialises creation per key.
type Store struct {
	root string
	now  func() time.Time
}

// NewStore returns a Store rooted at root (created on first Put). now is the
// clock used for CreatedAt; nil means time.Now.
func NewStore(root string, now func() time.Time) *Store {
	if now == nil {
		now = time.Now
	}
	return &Store{root: root, now: now}
}

// Root returns the store's directory.
func (s *Store) Root() string { return s.root }

// Get returns the template for key. A missing, unreadable or mismatching
// template yields an error wrapping ErrNotFound; a broken directory is
// removed.
func (s *Store) Get(key Key) (Template, error) {
	if err := key.Validate(); err != nil {
		return Template{}, err
	}
	return s.load(key.ID())
}

func (s *Store) load(id string) (Template, error) {
	if !ValidID(id) {
		return Template{}, fmt.Errorf("template %q: %w", id, ErrNotFound)
	}
	dir := filepath.Join(s.root, id)
	b, err := os.ReadFile(filepath.Join(dir, manifestName))
	if errors.Is(err, fs.ErrNotExist) {
		if _, serr := os.Lstat(dir); serr == nil {
			_ = os.RemoveAll(dir) // an interrupted creation
		}
		return Template{}, fmt.Errorf("template %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Template{}, fmt.Errorf("read template %s: %w", id, err)
	}
	var t Template
	if err := json.Unmarshal(b, &t); err != nil || t.ID != id || t.Key.ID() != id {
		_ = os.RemoveAll(dir)
		return Template{}, fmt.Errorf("template %s has a broken manifest (removed): %w", id, ErrNotFound)
	}
	t.Dir = dir
	for _, f := range []string{t.Files.State, t.Files.Memory, t.Files.RootDisk, t.Files.WorkDisk} {
		if f == "" {
			continue
		}
		if !filepath.IsLocal(f) || strings.ContainsRune(f, filepath.Separator) {
			_ = os.RemoveAll(dir)
			return Template{}, fmt.Errorf("template %s names file %q outside its directory (removed): %w", id, f, ErrNotFound)
		}
		if fi, err := os.Lstat(filepath.Join(dir, f)); err != nil || !fi.Mode().IsRegular() {
			_ = os.RemoveAll(dir)
			return Template{}, fmt.Errorf("template %s is missing %s (removed): %w", id, f, ErrNotFound)
		}
	}
	if t.Files.State == "" || t.Files.RootDisk == "" {
		_ = os.RemoveAll(dir)
		return Template{}, fmt.Errorf("template %s lacks state or root disk (removed): %w", id, ErrNotFound)
	}
	return t, nil
}

// Path returns the absolute path of one of t's files ("" stays "").
func (t Template) Path(name string) string {
	if name == "" {
		return ""
	}
	return filepath.Join(t.Dir, name)
}

// put runs mk into a staging directory and publishes it as key's template.
func (s *Store) put(ctx context.Context, key Key, mk Maker) (Template, error) {
	if err := os.MkdirAll(s.root, 0o700); err != nil {
		return Template{}, fmt.Errorf("create template store: %w", err)
	}
	id := key.ID()
	stage, err := os.MkdirTemp(s.root, ".make-"+id+"-")
	if err != nil {
		return Template{}, fmt.Errorf("create template staging dir: %w", err)
	}
	published := false
	defer func() {
		if !published {
			_ = os.RemoveAll(stage)
		}
	}()
	start := s.now()
	files, err := mk.Make(ctx, key, stage)
	if err != nil {
		return Template{}, fmt.Errorf("make template for image %s: %w", key.Image, err)
	}
	t := Template{ID: id, Key: key, Files: files, CreatedAt: s.now().UTC(), MakeTime: s.now().Sub(start)}
	t.SizeBytes = allocated(stage)
	b, err := json.MarshalIndent(t, "", "  ")
	if err != nil {
		return Template{}, fmt.Errorf("encode template manifest: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(stage, manifestName), b, 0o600); err != nil {
		return Template{}, fmt.Errorf("write template manifest: %w", err)
	}
	final := filepath.Join(s.root, id)
	_ = os.RemoveAll(final)
	if err := os.Rename(stage, final); err != nil {
		return Template{}, fmt.Errorf("publish template %s: %w", id, err)
	}
	published = true
	return s.load(id)
}

// List returns every usable template, newest first. Broken ones are removed.
func (s *Store) List() ([]Template, error) {
	ents, err := os.ReadDir(s.root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list templates: %w", err)
	}
	var out []Template
	for _, e := range ents {
		if !e.IsDir() || !ValidID(e.Name()) {
			continue
		}
		t, err := s.load(e.Name())
		if err != nil {
			continue
		}
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.After(out[j].CreatedAt) })
	return out, nil
}

// Remove deletes the template id. A missing template is not an error.
func (s *Store) Remove(id string) error {
	if !ValidID(id) {
		return fmt.Errorf("template id %q is not valid (see banger image templates)", id)
	}
	if err := os.RemoveAll(filepath.Join(s.root, id)); err != nil {
		return fmt.Errorf("remove template %s: %w", id, err)
	}
	return nil
}

// RemoveImage deletes every template made from image (by name) and returns
// how many it removed. Used when the image is removed.
func (s *Store) RemoveImage(image string) (int, error) {
	return s.removeWhere(func(t Template) bool { return t.Key.Image == image })
}

func (s *Store) removeWhere(match func(Template) bool) (int, error) {
	ts, err := s.List()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, t := range ts {
		if !match(t) {
			continue
		}
		if err := s.Remove(t.ID); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// allocated returns the bytes allocated under dir (sparse files count what
// they use).
func allocated(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			n += st.Blocks * 512
		} else {
			n += fi.Size()
		}
		return nil
	})
	return n
}

// Manager makes templates on first need, once per key.
type Manager struct {
	store *Store
	maker Maker
	group singleflight.Group
}

// NewManager returns a Manager storing in store and making with maker.
func NewManager(store *Store, maker Maker) *Manager {
	return &Manager{store: store, maker: maker}
}

// Store returns the manager's store.
func (m *Manager) Store() *Store { return m.store }

// Ensure returns key's template, making it if needed (see the package
// contract). made reports whether this call (or the one it joined) made it.
func (m *Manager) Ensure(ctx context.Context, key Key) (t Template, made bool, err error) {
	if err := key.Validate(); err != nil {
		return Template{}, false, err
	}
	if t, err := m.store.Get(key); err == nil {
		return t, false, nil
	}
	id := key.ID()
	type result struct {
		t    Template
		made bool
	}
	ch := m.group.DoChan(id, func() (any, error) {
		if t, err := m.store.Get(key); err == nil {
			return result{t, false}, nil
		}
		// The key of this image changed: older templates can never match.
		if _, err := m.store.removeWhere(func(o Template) bool {
			return o.Key.Image == key.Image && key.Image != "" && o.ID != id &&
				o.Key.VCPU == key.VCPU && o.Key.MemoryMiB == key.MemoryMiB
		}); err != nil {
			return nil, err
		}
		// Detach from the first caller's cancellation: others may be waiting.
		t, err := m.store.put(context.WithoutCancel(ctx), key, m.maker)
		if err != nil {
			return nil, err
		}
		return result{t, true}, nil
	})
	select {
	case <-ctx.Done():
		return Template{}, false, ctx.Err()
	case r := <-ch:
		if r.Err != nil {
			return Template{}, false, r.Err
		}
		res := r.Val.(result)
		return res.t, res.made, nil
	}
}

// Discard removes t after it failed to restore, so the next VM makes a new
// one; the caller cold-boots and warns.
func (m *Manager) Discard(t Template) error { return m.store.Remove(t.ID) }

// RemoveStaging removes the staging directories of creations that never
// finished (a daemon that died while making a template). Call it only when
// no Ensure is running, i.e. at daemon start.
func (s *Store) RemoveStaging() (int, error) {
	ents, err := os.ReadDir(s.root)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("list templates: %w", err)
	}
	n := 0
	var errs []error
	for _, e := range ents {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), ".make-") {
			continue
		}
		if err := os.RemoveAll(filepath.Join(s.root, e.Name())); err != nil {
			errs = append(errs, err)
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}
