// Package image is banger's image store: content-addressed ext4 root
// filesystems with a catalog entry per name, built from a Debian mirror
// (Build), converted from OCI/Docker images (Pull) or imported from a file
// (Register). Images are made without mounting anything (see internal/ext4)
// and published atomically: the ext4 is written to a temporary file, synced
// and renamed to Dir/sha256/<hex>.ext4, and only then recorded in the
// catalog. A failure at any step leaves neither a file nor a catalog entry.
//
// Concurrent Build or Pull calls for one name are coalesced: the first runs,
// the others wait for it and receive the same result (or error).
//
// The guest-side contract that every image satisfies (network, ssh, /root,
// init, poweroff) is documented in guest.go.
package image

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/bangerdev/banger/internal/ext4"
	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/progress"
	"golang.org/x/sys/unix"
)

// Catalog records images by name. Implementations must be safe for
// concurrent use. GetImage and DeleteImage return an error wrapping
// model.ErrNotFound for unknown names; PutImage inserts or replaces the
// record of img.Name.
type Catalog interface {
	PutImage(ctx context.Context, img *model.Image) error
	GetImage(ctx context.Context, name string) (*model.Image, error)
	ListImages(ctx context.Context) ([]*model.Image, error)
	DeleteImage(ctx context.Context, name string) error
}

// Store is the image store. Fields are set once before first use; the zero
// values of the unexported fields are ready to use. Use a *Store.
type Store struct {
	Dir      string          // published images: Dir/sha256/<hex>.ext4; scratch in Dir/tmp
	CacheDir string          // OCI blob cache (blobs/sha256/<hex>), blob references (refs/), debootstrap trees
	Catalog  Catalog         // where image records live (the SQLite store; MemCatalog in tests)
	Runner   hostexec.Runner // host tools: mkfs.ext4, debugfs, e2fsck, debootstrap
	Mirror   string          // Debian mirror URL for Build when BuildOptions.Mirror is empty; "" = the host's apt sources
	// Busybox is an optional path to a static busybox binary. When set, it is
	// copied into pulled images that lack the `ip` tool, so banger-network can
	// configure the guest's interface.
	Busybox string
	// StagingDir is where pulled layers are flattened before mkfs ("" =
	// Dir/tmp). A tmpfs makes pulls much faster on hosts where creating
	// files is slow; it needs free memory of about the image's content.
	StagingDir string
	// Rootfs builds Debian images when this process is not root (the
	// owner daemon in system mode asks the root helper); nil = Build
	// needs root.
	Rootfs RootfsBuilder

	mu      sync.Mutex
	flights map[string]*flight
	// unprivileged makes Pull stage as a non-root daemon would even when
	// running as root (tests of the ownership fix-up path).
	unprivileged bool
}

// RootfsBuilder builds a Debian image file for a store that cannot run
// debootstrap itself: an owner daemon that is not root asks the root
// helper (see daemon's helper client).
type RootfsBuilder interface {
	// BuildRootfs builds the image file for o (validated by Build) and
	// returns a path the caller can read; release lets the builder remove
	// it once the caller has copied it.
	BuildRootfs(ctx context.Context, o BuildOptions) (path string, release func(), err error)
}

// ErrNeedsRoot is returned by operations that must run as root.
var ErrNeedsRoot = errors.New("needs root")

// Get returns the image called name (error wraps model.ErrNotFound).
func (s *Store) Get(ctx context.Context, name string) (*model.Image, error) {
	img, err := s.Catalog.GetImage(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", name, err)
	}
	return img, nil
}

// List returns all images sorted by name.
func (s *Store) List(ctx context.Context) ([]*model.Image, error) {
	imgs, err := s.Catalog.ListImages(ctx)
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	sort.Slice(imgs, func(i, j int) bool { return imgs[i].Name < imgs[j].Name })
	return imgs, nil
}

// Delete removes the image's catalog entry, then its file when no other
// image shares it, and its blob references (the blobs themselves go with
// PruneCache). The caller must make sure no VM uses the image.
func (s *Store) Delete(ctx context.Context, name string) error {
	return s.withNameLock(ctx, name, func() error {
		img, err := s.Get(ctx, name)
		if err != nil {
			return err
		}
		if err := s.Catalog.DeleteImage(ctx, name); err != nil {
			return fmt.Errorf("delete image %q: %w", name, err)
		}
		_ = os.Remove(s.refsPath(name))
		return s.removeIfUnreferenced(ctx, img.Path)
	})
}

// Register imports an existing ext4 file as image name (copied into the
// store, checked with e2fsck). kernel is recorded as the image's default
// kernel ("" = none).
func (s *Store) Register(ctx context.Context, name, rootfs, kernel string) (*model.Image, error) {
	if err := model.ValidateName(name); err != nil {
		return nil, fmt.Errorf("register image: %w", err)
	}
	abs, err := filepath.Abs(rootfs)
	if err != nil {
		return nil, fmt.Errorf("register image: %w", err)
	}
	if err := checkExt4Magic(abs); err != nil {
		return nil, fmt.Errorf("register image %q: %w", name, err)
	}
	return s.coalesce(ctx, name, "register\x00"+abs+"\x00"+kernel, func(ctx context.Context) (*model.Image, error) {
		if err := s.ensureAbsent(ctx, name, false); err != nil {
			return nil, err
		}
		tmp, cleanup, err := s.tempFile("register")
		if err != nil {
			return nil, err
		}
		defer cleanup()
		progress.Stage(ctx, "copy", abs)
		if err := sparseCopy(ctx, abs, tmp); err != nil {
			return nil, fmt.Errorf("register image %q: copy: %w", name, err)
		}
		progress.Stage(ctx, "check", "e2fsck -fn")
		if err := ext4.Check(ctx, s.Runner, tmp); err != nil {
			return nil, fmt.Errorf("register image %q: %w", name, err)
		}
		return s.publish(ctx, tmp, &model.Image{Name: name, Source: "register:" + abs, Kernel: kernel}, nil, false)
	})
}

func checkExt4Magic(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	var b [2]byte
	if _, err := f.ReadAt(b[:], 1024+56); err != nil {
		return fmt.Errorf("%s is not an ext2/3/4 filesystem image: %w", p, err)
	}
	if binary.LittleEndian.Uint16(b[:]) != 0xEF53 {
		return fmt.Errorf("%s is not an ext2/3/4 filesystem image (no superblock magic)", p)
	}
	return nil
}

// sparseCopy copies src to dst keeping holes: only the data regions
// reported by SEEK_DATA/SEEK_HOLE are read, and all-zero 64 KiB chunks in
// them are skipped too.
func sparseCopy(ctx context.Context, src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer out.Close()
	if err := out.Truncate(st.Size()); err != nil {
		return err
	}
	buf := make([]byte, 1<<16)
	var off int64
	for off < st.Size() {
		if err := ctx.Err(); err != nil {
			return err
		}
		data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if err != nil {
			if errors.Is(err, unix.ENXIO) {
				break // only a hole remains
			}
			data = off // SEEK_DATA unsupported: copy everything
		}
		hole, err := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			hole = st.Size()
		}
		for p := data; p < hole; {
			n := int64(len(buf))
			if hole-p < n {
				n = hole - p
			}
			if _, err := in.ReadAt(buf[:n], p); err != nil && err != io.EOF {
				return err
			}
			if !allZero(buf[:n]) {
				if _, err := out.WriteAt(buf[:n], p); err != nil {
					return err
				}
			}
			p += n
		}
		off = hole
	}
	return out.Sync()
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// tempFile returns a fresh path under Dir/tmp and a cleanup removing it.
func (s *Store) tempFile(kind string) (string, func(), error) {
	dir := filepath.Join(s.Dir, "tmp")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", nil, fmt.Errorf("image store: %w", err)
	}
	f, err := os.CreateTemp(dir, kind+"-*.ext4")
	if err != nil {
		return "", nil, fmt.Errorf("image store: %w", err)
	}
	name := f.Name()
	f.Close()
	_ = os.Remove(name) // ext4.Build wants to create it itself
	return name, func() { _ = os.Remove(name); _ = os.Remove(name + ".tmp") }, nil
}

// tempDir returns a fresh directory under StagingDir (default Dir/tmp) and
// a cleanup removing it.
func (s *Store) tempDir(kind string) (string, func(), error) {
	dir := s.StagingDir
	if dir == "" {
		dir = filepath.Join(s.Dir, "tmp")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", nil, fmt.Errorf("image store: %w", err)
	}
	d, err := os.MkdirTemp(dir, kind+"-")
	if err != nil {
		return "", nil, fmt.Errorf("image store: %w", err)
	}
	return d, func() { _ = removeTree(d) }, nil
}

// ensureAbsent fails with model.ErrAlreadyExists when name exists and
// replace is false.
func (s *Store) ensureAbsent(ctx context.Context, name string, replace bool) error {
	_, err := s.existingImage(ctx, name, replace)
	return err
}

// existingImage is ensureAbsent that also returns the image in the way:
// (nil, nil) when name is free or replace is set, (image, an error
// wrapping model.ErrAlreadyExists) when it is taken, (nil, err) when the
// catalog fails.
func (s *Store) existingImage(ctx context.Context, name string, replace bool) (*model.Image, error) {
	if replace {
		return nil, nil
	}
	im, err := s.Catalog.GetImage(ctx, name)
	switch {
	case err == nil:
		return im, fmt.Errorf("image %q: %w (delete it first with `banger image delete %s`, or replace it)", name, model.ErrAlreadyExists, name)
	case errors.Is(err, model.ErrNotFound):
		return nil, nil
	default:
		return nil, fmt.Errorf("image %q: %w", name, err)
	}
}

// hashFile returns the hex sha256 of a file, reporting progress. Holes
// (found with SEEK_DATA/SEEK_HOLE) are hashed from a zero buffer instead
// of being read: reading a sparse 4 GiB image is otherwise most of the
// cost.
func hashFile(ctx context.Context, p string) (string, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", 0, err
	}
	size := st.Size()
	h := sha256.New()
	buf := make([]byte, 1<<20)
	zeros := make([]byte, 1<<20)
	var done int64
	last := time.Now()
	feed := func(n int64, zero bool) error {
		for n > 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
			c := int64(len(buf))
			if n < c {
				c = n
			}
			if zero {
				h.Write(zeros[:c])
			} else {
				if _, err := io.ReadFull(f, buf[:c]); err != nil {
					return err
				}
				h.Write(buf[:c])
			}
			n -= c
			done += c
			if time.Since(last) > 250*time.Millisecond && size > 0 {
				progress.Report(ctx, progress.Event{Stage: "hash", Fraction: float64(done) / float64(size)})
				last = time.Now()
			}
		}
		return nil
	}
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			data = size // a hole up to the end
		} else if err != nil {
			data = off // no SEEK_DATA: read everything
		}
		if err := feed(data-off, true); err != nil {
			return "", 0, err
		}
		if data >= size {
			break
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			hole = size
		}
		if _, err := f.Seek(data, io.SeekStart); err != nil {
			return "", 0, err
		}
		if err := feed(hole-data, false); err != nil {
			return "", 0, err
		}
		off = hole
	}
	return hex.EncodeToString(h.Sum(nil)), size, nil
}

// publish moves the finished image file tmp into the content-addressed
// store and records img (Path, SHA256, SizeBytes, CreatedAt are filled in)
// in the catalog, last. refs lists the cache blobs the image was made from
// (for PruneCache). When replace is set an existing image of that name is
// superseded and its file removed if nothing else uses it.
func (s *Store) publish(ctx context.Context, tmp string, img *model.Image, refs []string, replace bool) (*model.Image, error) {
	progress.Stage(ctx, "hash", "sha256 of the image")
	sum, size, err := hashFile(ctx, tmp)
	if err != nil {
		return nil, fmt.Errorf("image %q: hash: %w", img.Name, err)
	}
	dir := filepath.Join(s.Dir, "sha256")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("image store: %w", err)
	}
	final := filepath.Join(dir, sum+".ext4")
	progress.Stage(ctx, "publish", final)
	f, err := os.OpenFile(tmp, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", img.Name, err)
	}
	serr := f.Sync()
	f.Close()
	if serr != nil {
		return nil, fmt.Errorf("image %q: sync: %w", img.Name, serr)
	}
	_ = os.Chmod(tmp, 0o444) // shared read-only base of every VM's root disk
	created := false
	if _, err := os.Stat(final); errors.Is(err, os.ErrNotExist) {
		if err := os.Rename(tmp, final); err != nil {
			return nil, fmt.Errorf("image %q: publish: %w", img.Name, err)
		}
		created = true
		if d, err := os.Open(dir); err == nil {
			_ = d.Sync()
			d.Close()
		}
	}
	var old *model.Image
	if prev, err := s.Catalog.GetImage(ctx, img.Name); err == nil {
		if !replace {
			if created {
				_ = os.Remove(final)
			}
			return nil, fmt.Errorf("image %q: %w (delete it first, or replace it)", img.Name, model.ErrAlreadyExists)
		}
		old = prev
	}
	out := *img
	out.Path = final
	out.SHA256 = sum
	out.SizeBytes = size
	out.CreatedAt = time.Now().UTC()
	if err := s.writeRefs(img.Name, refs); err != nil {
		if created {
			_ = os.Remove(final)
		}
		return nil, err
	}
	if err := s.Catalog.PutImage(ctx, &out); err != nil {
		if created {
			_ = os.Remove(final)
		}
		_ = os.Remove(s.refsPath(img.Name))
		return nil, fmt.Errorf("image %q: record: %w", img.Name, err)
	}
	if old != nil && old.Path != final {
		if err := s.removeIfUnreferenced(ctx, old.Path); err != nil {
			return &out, nil // the new image is published; the old file is only garbage
		}
	}
	return &out, nil
}

// removeIfUnreferenced deletes an image file under Dir/sha256 when no
// catalog entry points at it.
func (s *Store) removeIfUnreferenced(ctx context.Context, p string) error {
	if p == "" || filepath.Dir(p) != filepath.Join(s.Dir, "sha256") {
		return nil // not ours (never delete files outside the store)
	}
	imgs, err := s.Catalog.ListImages(ctx)
	if err != nil {
		return fmt.Errorf("image store: %w", err)
	}
	for _, i := range imgs {
		if i.Path == p {
			return nil
		}
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("image store: remove %s: %w", p, err)
	}
	return nil
}

// withNameLock runs fn while no Build/Pull/Register/Delete of name is in
// flight (it waits for them).
func (s *Store) withNameLock(ctx context.Context, name string, fn func() error) error {
	_, err := s.coalesce(ctx, name, "delete\x00"+fmt.Sprint(time.Now().UnixNano()), func(context.Context) (*model.Image, error) {
		return nil, fn()
	})
	return err
}

// sanitizeName turns arbitrary text into a DNS-label image name.
func sanitizeName(s string) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(s) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
			dash = false
		} else if !dash && b.Len() > 0 {
			b.WriteByte('-')
			dash = true
		}
	}
	out := strings.Trim(b.String(), "-")
	if len(out) > 63 {
		out = strings.Trim(out[:63], "-")
	}
	if out == "" {
		out = "image"
	}
	return out
}
