package image

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"

	"github.com/bangerdev/banger/internal/atomicfile"
	"github.com/bangerdev/banger/internal/model"
)

// Cache layout under Store.CacheDir:
//
//	blobs/sha256/<hex>        OCI blobs (compressed layers, configs), verified against their digest
//	blobs/sha256/<hex>.part-* layer downloads in progress (.<hex>.tmp-* for small blobs)
//	refs/<image>.json         the blob digests image <image> was made from
//	debootstrap/<recipe>/     debootstrap trees keyed by recipe hash (rootfs/ + complete marker)

func (s *Store) blobPath(hexDigest string) string {
	return filepath.Join(s.CacheDir, "blobs", "sha256", hexDigest)
}

func (s *Store) refsPath(name string) string {
	return filepath.Join(s.CacheDir, "refs", name+".json")
}

type refsFile struct {
	Blobs  []string `json:"blobs,omitempty"`  // "sha256:<hex>"
	Recipe string   `json:"recipe,omitempty"` // debootstrap recipe hash
}

func (s *Store) writeRefs(name string, refs []string) error {
	if len(refs) == 0 {
		_ = os.Remove(s.refsPath(name))
		return nil
	}
	var rf refsFile
	for _, r := range refs {
		if strings.HasPrefix(r, "recipe:") {
			rf.Recipe = strings.TrimPrefix(r, "recipe:")
		} else {
			rf.Blobs = append(rf.Blobs, r)
		}
	}
	data, err := json.Marshal(rf)
	if err != nil {
		return err
	}
	p := s.refsPath(name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("image cache: %w", err)
	}
	if err := atomicfile.Write(p, data, 0o644); err != nil {
		return fmt.Errorf("image cache: %w", err)
	}
	return nil
}

// PruneReport lists what PruneCache removed (or would remove).
type PruneReport struct {
	Removed    []string `json:"removed"`     // cache paths
	FreedBytes int64    `json:"freed_bytes"` // bytes on disk
	DryRun     bool     `json:"dry_run"`
}

// PruneCache removes cached blobs that no image in the catalog was made
// from, interrupted downloads, reference files of deleted images and
// debootstrap trees no existing image was built from. With dryRun it only
// reports. It must not run concurrently with a Pull or Build (the daemon
// serialises it with them).
func (s *Store) PruneCache(ctx context.Context, dryRun bool) (PruneReport, error) {
	rep := PruneReport{DryRun: dryRun, Removed: []string{}}
	imgs, err := s.Catalog.ListImages(ctx)
	if err != nil {
		return rep, fmt.Errorf("prune cache: %w", err)
	}
	names := map[string]bool{}
	for _, i := range imgs {
		names[i.Name] = true
	}
	keepBlob := map[string]bool{}
	keepRecipe := map[string]bool{}
	refsDir := filepath.Join(s.CacheDir, "refs")
	entries, _ := os.ReadDir(refsDir)
	for _, e := range entries {
		name := strings.TrimSuffix(e.Name(), ".json")
		p := filepath.Join(refsDir, e.Name())
		if !names[name] || !strings.HasSuffix(e.Name(), ".json") {
			s.pruneOne(&rep, p, dryRun)
			continue
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return rep, fmt.Errorf("prune cache: %w", err)
		}
		var rf refsFile
		if err := json.Unmarshal(data, &rf); err != nil {
			return rep, fmt.Errorf("prune cache: %s: %w (delete the file to drop its references)", p, err)
		}
		for _, b := range rf.Blobs {
			keepBlob[strings.TrimPrefix(b, "sha256:")] = true
		}
		if rf.Recipe != "" {
			keepRecipe[rf.Recipe] = true
		}
	}
	blobDir := filepath.Join(s.CacheDir, "blobs", "sha256")
	entries, _ = os.ReadDir(blobDir)
	for _, e := range entries {
		if !keepBlob[e.Name()] {
			s.pruneOne(&rep, filepath.Join(blobDir, e.Name()), dryRun)
		}
	}
	dbDir := filepath.Join(s.CacheDir, "debootstrap")
	entries, _ = os.ReadDir(dbDir)
	for _, e := range entries {
		if !keepRecipe[e.Name()] {
			s.pruneOne(&rep, filepath.Join(dbDir, e.Name()), dryRun)
		}
	}
	sort.Strings(rep.Removed)
	return rep, nil
}

func (s *Store) pruneOne(rep *PruneReport, p string, dryRun bool) {
	rep.FreedBytes += diskUsage(p)
	rep.Removed = append(rep.Removed, p)
	if !dryRun {
		_ = removeTree(p)
	}
}

// diskUsage sums allocated bytes under p without following symlinks.
func diskUsage(p string) int64 {
	var total int64
	_ = filepath.WalkDir(p, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if info, err := d.Info(); err == nil {
			total += allocated(info)
		}
		return nil
	})
	return total
}

// removeTree removes p recursively, first making directories writable so a
// tree staged from read-only image directories can be deleted by its owner.
func removeTree(p string) error {
	err := os.RemoveAll(p)
	if err == nil {
		return nil
	}
	_ = filepath.WalkDir(p, func(q string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			_ = os.Chmod(q, 0o700)
		}
		return nil
	})
	return os.RemoveAll(p)
}

// MemCatalog is an in-memory Catalog for tests and tools.
type MemCatalog struct {
	mu     sync.Mutex
	images map[string]model.Image
}

// PutImage implements Catalog.
func (c *MemCatalog) PutImage(_ context.Context, img *model.Image) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.images == nil {
		c.images = map[string]model.Image{}
	}
	c.images[img.Name] = *img
	return nil
}

// GetImage implements Catalog.
func (c *MemCatalog) GetImage(_ context.Context, name string) (*model.Image, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	img, ok := c.images[name]
	if !ok {
		return nil, fmt.Errorf("image %q: %w", name, model.ErrNotFound)
	}
	return &img, nil
}

// ListImages implements Catalog.
func (c *MemCatalog) ListImages(context.Context) ([]*model.Image, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*model.Image, 0, len(c.images))
	for _, img := range c.images {
		img := img
		out = append(out, &img)
	}
	return out, nil
}

// DeleteImage implements Catalog.
func (c *MemCatalog) DeleteImage(_ context.Context, name string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.images[name]; !ok {
		return fmt.Errorf("image %q: %w", name, model.ErrNotFound)
	}
	delete(c.images, name)
	return nil
}

func allocated(info fs.FileInfo) int64 {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return info.Size()
}
