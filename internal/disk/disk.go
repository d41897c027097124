// Package disk makes a VM's root disk as a copy-on-write view of a shared,
// read-only image. Three strategies implement CoW:
//
//   - dm: a device-mapper snapshot. The image is attached read-only to a
//     loop device, a sparse per-VM COW file to a second one, and
//     `dmsetup create` joins them; the VMM opens /dev/mapper/NAME. Creation
//     cost does not depend on the image size. Every privileged step goes
//     through privops.Ops.
//   - reflink: a FICLONE clone of the image (btrfs, xfs). Constant cost.
//   - copy: a sparse-aware copy (SEEK_DATA/SEEK_HOLE + copy_file_range).
//     Cost grows with the data in the image; the fallback.
//
// Probe picks the best strategy the host can run; New builds one by name.
//
// A Handle is the teardown identity of one disk. Plan returns it before
// anything is created so the caller can store it durably first; Remove
// accepts a planned Handle as well as a created one, so cleanup after a
// crash in the middle of Create finds and releases what was made.
package disk

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/privops"
)

// Strategy names a copy-on-write implementation.
type Strategy string

// The strategies, best first.
const (
	DM      Strategy = "dm"
	Reflink Strategy = "reflink"
	Copy    Strategy = "copy"
	// Auto is not a strategy: configuration uses it to ask for Probe.
	Auto Strategy = "auto"
)

// Strategies lists the concrete strategies, best first.
func Strategies() []Strategy { return []Strategy{DM, Reflink, Copy} }

// ParseStrategy parses a configuration value: "auto", "dm", "reflink" or
// "copy" ("" means auto).
func ParseStrategy(s string) (Strategy, error) {
	switch st := Strategy(strings.ToLower(strings.TrimSpace(s))); st {
	case "", Auto:
		return Auto, nil
	case DM, Reflink, Copy:
		return st, nil
	default:
		return "", fmt.Errorf("unknown disk strategy %q: use auto, dm, reflink or copy", s)
	}
}

var (
	// ErrInvalidSize is returned when the requested size is smaller than
	// the image or not a whole number of 512-byte sectors.
	ErrInvalidSize = errors.New("invalid disk size")
	// ErrMissing is returned by Reattach when a file the disk consists of
	// is gone: the disk cannot be brought back and the VM must be recreated.
	ErrMissing = errors.New("disk file missing")
)

// Handle is the teardown identity of one root disk. The lifecycle stores it
// durably before the disk is used (see Plan) and after Create and Reattach,
// which fill in Path and Loops.
type Handle struct {
	Strategy Strategy `json:"strategy"`
	// Path is what the VMM opens: the disk file (copy, reflink) or
	// /dev/mapper/NAME (dm).
	Path string `json:"path"`
	// Base is the image the disk was made from.
	Base string `json:"base"`
	// SizeBytes is the size of the disk as seen by the guest.
	SizeBytes int64 `json:"size_bytes"`

	// dm only.

	// Loops are the loop devices attached, origin first, then COW.
	Loops []string `json:"loops,omitempty"`
	// DMName is the snapshot's device-mapper name (privops.DMNamePrefix...).
	DMName string `json:"dm_name,omitempty"`
	// COWFile is the sparse per-VM exception store (the dst of Create).
	COWFile string `json:"cow_file,omitempty"`
	// Origin is a per-VM hard link to Base that the origin loop is attached
	// from. It pins the exact image the COW file was made against (a
	// rebuilt image cannot silently corrupt the snapshot) and makes the
	// origin loop attributable to this disk after a crash. Empty when Base
	// could not be linked (another filesystem); the loop then uses Base.
	Origin string `json:"origin,omitempty"`
}

// originPath is the file the origin loop is attached from.
func (h *Handle) originPath() string {
	if h.Origin != "" {
		return h.Origin
	}
	return h.Base
}

// CoW creates, removes and re-activates copy-on-write root disks.
// Implementations are safe for concurrent use on different dst paths.
type CoW interface {
	// Name returns the strategy.
	Name() Strategy
	// Create makes dst a copy-on-write view of the regular file base with
	// the given size (0 = the size of base; never smaller than base; a
	// multiple of 512). dst must not exist: it is the per-VM disk file
	// (copy, reflink) or the COW file (dm). The returned Handle equals
	// Plan(Name(), base, dst, sizeBytes) with Path and Loops filled in. On
	// failure nothing is left behind: every step made so far is undone in
	// reverse order, even when ctx is cancelled.
	Create(ctx context.Context, base, dst string, sizeBytes int64) (*Handle, error)
	// Remove releases everything h names: dm device, loops, files. It is
	// idempotent, accepts a planned Handle whose Create never finished,
	// runs every step even when one fails, and joins the errors.
	Remove(ctx context.Context, h *Handle) error
	// Reattach makes h usable again after a daemon restart or host reboot,
	// before the VM starts: dm recreates the loops and snapshot from the
	// files (a no-op when they are still live) and updates h.Path and
	// h.Loops, which the caller must store again; copy and reflink check
	// that the file exists. A missing file yields ErrMissing.
	Reattach(ctx context.Context, h *Handle) error
}

// Plan returns the teardown identity Create(base, dst, sizeBytes) will
// produce with strategy s, before anything exists. Store it durably before
// calling Create so that Remove can clean up after a crash.
func Plan(s Strategy, base, dst string, sizeBytes int64) *Handle {
	base, dst = absPath(base), absPath(dst)
	h := &Handle{Strategy: s, Base: base, SizeBytes: sizeBytes}
	if s != DM {
		h.Path = dst
		return h
	}
	h.COWFile = dst
	h.Origin = dst + ".origin"
	h.DMName = DMName(dst)
	h.Path = "/dev/mapper/" + h.DMName
	return h
}

// absPath makes p absolute and clean; loop devices need such paths and the
// kernel reports them that way.
func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

// DMName derives the device-mapper name for the COW file dst: banger's
// prefix, a readable part from the last two path elements, and a hash of
// the absolute path so that names never collide.
func DMName(dst string) string {
	abs := absPath(dst)
	sum := sha256.Sum256([]byte(abs))
	readable := sanitize(filepath.Base(filepath.Dir(abs)) + "-" + strings.TrimSuffix(filepath.Base(abs), filepath.Ext(abs)))
	if len(readable) > 48 {
		readable = readable[:48]
	}
	return privops.DMNamePrefix + readable + "-" + hex.EncodeToString(sum[:4])
}

func sanitize(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	return b.String()
}

// New returns the CoW for strategy s. dm needs ops; r is used for host
// tools where a strategy needs them.
func New(s Strategy, ops privops.Ops, r hostexec.Runner) (CoW, error) {
	switch s {
	case Copy:
		return copyCoW{}, nil
	case Reflink:
		return reflinkCoW{}, nil
	case DM:
		if ops == nil {
			return nil, errors.New("disk strategy dm needs privileged operations (privops.Ops)")
		}
		return &dmCoW{ops: ops, sys: "/sys"}, nil
	case Auto:
		return nil, errors.New("disk strategy auto: resolve it with disk.Probe first")
	default:
		return nil, fmt.Errorf("unknown disk strategy %q: use dm, reflink or copy", s)
	}
}

// imageSize checks base and the requested size and returns both sizes.
func imageSize(base string, sizeBytes int64) (baseSize, size int64, err error) {
	st, err := os.Stat(base)
	if err != nil {
		return 0, 0, fmt.Errorf("image: %w", err)
	}
	if !st.Mode().IsRegular() {
		return 0, 0, fmt.Errorf("image %s is not a regular file", base)
	}
	baseSize = st.Size()
	size = sizeBytes
	if size == 0 {
		size = baseSize
	}
	if size < baseSize {
		return 0, 0, fmt.Errorf("%w: %d bytes is smaller than the image %s (%d bytes); ask for at least the image size",
			ErrInvalidSize, size, base, baseSize)
	}
	if size%512 != 0 {
		return 0, 0, fmt.Errorf("%w: %d bytes is not a multiple of 512", ErrInvalidSize, size)
	}
	return baseSize, size, nil
}

// removeFile removes path; a missing file is not an error.
func removeFile(path string) error {
	if path == "" {
		return nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// checkStrategy rejects handles of another strategy.
func checkStrategy(h *Handle, s Strategy) error {
	if h == nil {
		return errors.New("nil disk handle")
	}
	if h.Strategy != s {
		return fmt.Errorf("disk handle of strategy %q given to the %s strategy", h.Strategy, s)
	}
	return nil
}

// fileDisk implements Remove and Reattach for strategies whose disk is one
// plain file.
type fileDisk struct{ s Strategy }

func (f fileDisk) Remove(_ context.Context, h *Handle) error {
	if err := checkStrategy(h, f.s); err != nil {
		return err
	}
	if err := removeFile(h.Path); err != nil {
		return fmt.Errorf("remove disk: %w", err)
	}
	return nil
}

func (f fileDisk) Reattach(_ context.Context, h *Handle) error {
	if err := checkStrategy(h, f.s); err != nil {
		return err
	}
	st, err := os.Stat(h.Path)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w: %s is gone; delete and recreate the VM", ErrMissing, h.Path)
	}
	if err != nil {
		return fmt.Errorf("reattach disk: %w", err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("reattach disk: %s is not a regular file", h.Path)
	}
	return nil
}
