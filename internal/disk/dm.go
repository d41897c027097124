package disk

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/bangerdev/banger/internal/privops"
)

// dmCoW builds a device-mapper snapshot over a read-only loop of the image
// with a sparse COW file as the persistent exception store. Every
// privileged step goes through ops; sysfs (under sys) is only read, to
// attribute loop and dm devices to a disk before releasing them.
type dmCoW struct {
	ops privops.Ops
	sys string // sysfs mount point, "/sys"
}

func (d *dmCoW) Name() Strategy { return DM }

// cowFileSize is the apparent size of the COW file for a disk of size
// bytes: room for every chunk plus the exception metadata (16 bytes per
// 4 KiB chunk) and the header, so the snapshot can never overflow. The
// file is sparse; only written chunks use space.
func cowFileSize(size int64) int64 {
	n := size + size/64 + 1<<20
	return (n + 4095) &^ 4095
}

// undoStack records what a multi-step operation made so it can be undone
// in reverse order.
type undoStack []undoStep

type undoStep struct {
	what string
	fn   func(context.Context) error
}

func (u *undoStack) push(what string, fn func(context.Context) error) {
	*u = append(*u, undoStep{what, fn})
}

// run undoes every step in reverse, continuing past failures.
func (u undoStack) run(ctx context.Context) error {
	var errs []error
	for i := len(u) - 1; i >= 0; i-- {
		if err := u[i].fn(ctx); err != nil {
			errs = append(errs, fmt.Errorf("undo %s: %w", u[i].what, err))
		}
	}
	return errors.Join(errs...)
}

func (d *dmCoW) Create(ctx context.Context, base, dst string, sizeBytes int64) (_ *Handle, err error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("create dm disk: %w", err)
	}
	baseSize, size, err := imageSize(base, sizeBytes)
	if err != nil {
		return nil, fmt.Errorf("create dm disk: %w", err)
	}
	if baseSize%512 != 0 {
		return nil, fmt.Errorf("create dm disk: %w: image %s is %d bytes, not a whole number of 512-byte sectors (a loop device would drop the tail)",
			ErrInvalidSize, base, baseSize)
	}
	h := Plan(DM, base, dst, size)
	var undo undoStack
	defer func() {
		if err != nil {
			err = errors.Join(err, undo.run(context.WithoutCancel(ctx)))
		}
	}()

	// The origin link pins the image inode this COW file belongs to.
	if _, err := os.Lstat(h.COWFile); err == nil {
		return nil, fmt.Errorf("create dm disk: %s: %w", h.COWFile, fs.ErrExist)
	}
	switch err := os.Link(h.Base, h.Origin); {
	case err == nil:
		undo.push("origin link", func(context.Context) error { return removeFile(h.Origin) })
	case errors.Is(err, fs.ErrExist):
		return nil, fmt.Errorf("create dm disk: %w", err)
	default: // another filesystem, or links not permitted: use the image itself
		h.Origin = ""
	}

	f, err := os.OpenFile(h.COWFile, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create dm disk: cow file: %w", err)
	}
	undo.push("cow file", func(context.Context) error { return removeFile(h.COWFile) })
	err = f.Truncate(cowFileSize(size))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("create dm disk: cow file: %w", err)
	}

	if err := d.activate(ctx, h, &undo); err != nil {
		return nil, fmt.Errorf("create dm disk: %w", err)
	}
	return h, nil
}

// activate attaches the origin loop (read-only) and the COW loop and
// creates the snapshot, recording each handle in h and an undo step in
// undo as soon as it exists.
func (d *dmCoW) activate(ctx context.Context, h *Handle, undo *undoStack) error {
	h.Loops = nil
	if err := ctx.Err(); err != nil {
		return err
	}
	originLoop, err := d.ops.AttachLoop(ctx, privops.LoopSpec{File: h.originPath(), ReadOnly: true})
	if err != nil {
		return fmt.Errorf("attach image loop: %w", err)
	}
	h.Loops = append(h.Loops, originLoop)
	undo.push("image loop "+originLoop, func(ctx context.Context) error { return d.ops.DetachLoop(ctx, originLoop) })

	if err := ctx.Err(); err != nil {
		return err
	}
	cowLoop, err := d.ops.AttachLoop(ctx, privops.LoopSpec{File: h.COWFile})
	if err != nil {
		return fmt.Errorf("attach cow loop: %w", err)
	}
	h.Loops = append(h.Loops, cowLoop)
	undo.push("cow loop "+cowLoop, func(ctx context.Context) error { return d.ops.DetachLoop(ctx, cowLoop) })

	if err := ctx.Err(); err != nil {
		return err
	}
	dev, err := d.ops.CreateSnapshot(ctx, privops.SnapshotSpec{Name: h.DMName, Origin: originLoop, COW: cowLoop, SizeBytes: h.SizeBytes})
	if err != nil {
		return fmt.Errorf("create snapshot: %w", err)
	}
	undo.push("snapshot "+h.DMName, func(ctx context.Context) error { return d.ops.RemoveSnapshot(ctx, h.DMName) })
	h.Path = dev
	return nil
}

func (d *dmCoW) Remove(ctx context.Context, h *Handle) error {
	if err := checkStrategy(h, DM); err != nil {
		return err
	}
	errs := []error{d.release(ctx, h)}
	for _, f := range []string{h.COWFile, h.Origin} {
		if err := removeFile(f); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove dm disk %s: %w", h.DMName, err)
	}
	return nil
}

// Detach releases h's live devices (the snapshot and the loops that are
// h's, see ownedLoops) and keeps its files: the one dm teardown path, used
// by Remove, by VM stop and by reconcile.
func (d *dmCoW) Detach(ctx context.Context, h *Handle) error {
	if err := checkStrategy(h, DM); err != nil {
		return err
	}
	return d.release(ctx, h)
}

// release removes the snapshot and detaches every loop that belongs to h,
// keeping the files.
func (d *dmCoW) release(ctx context.Context, h *Handle) error {
	var errs []error
	if h.DMName != "" {
		if err := d.ops.RemoveSnapshot(ctx, h.DMName); err != nil {
			errs = append(errs, err)
		}
	}
	for _, dev := range d.ownedLoops(h) {
		if err := d.ops.DetachLoop(ctx, dev); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ownedLoops returns the loop devices that belong to h: recorded loops
// whose backing file is still one of h's files (after a reboot the same
// device number may belong to someone else), plus any loop backed by h's
// COW file or origin link (made by a Create that crashed before h.Loops
// was stored). When sysfs cannot be read the recorded loops are trusted.
func (d *dmCoW) ownedLoops(h *Handle) []string {
	backing, err := loopBackingFiles(d.sys)
	if err != nil {
		return slices.Clone(h.Loops)
	}
	own := func(file string, recorded bool) bool {
		if samePath(file, h.COWFile) || (h.Origin != "" && samePath(file, h.Origin)) {
			return true
		}
		// Without an origin link the image is shared by other disks: only
		// a recorded loop of it is ours.
		return recorded && h.Origin == "" && samePath(file, h.Base)
	}
	var out []string
	for _, dev := range h.Loops {
		if f, ok := backing[dev]; ok && own(f, true) {
			out = append(out, dev)
		}
	}
	for dev, f := range backing {
		if !slices.Contains(out, dev) && own(f, false) {
			out = append(out, dev)
		}
	}
	slices.Sort(out)
	return out
}

func (d *dmCoW) Reattach(ctx context.Context, h *Handle) (err error) {
	if err := checkStrategy(h, DM); err != nil {
		return err
	}
	if h.DMName == "" || h.COWFile == "" || h.SizeBytes <= 0 {
		return fmt.Errorf("reattach dm disk: incomplete handle %+v", *h)
	}
	for _, f := range []string{h.COWFile, h.originPath()} {
		if _, err := os.Stat(f); errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("reattach dm disk %s: %w: %s is gone; delete and recreate the VM", h.DMName, ErrMissing, f)
		} else if err != nil {
			return fmt.Errorf("reattach dm disk %s: %w", h.DMName, err)
		}
	}
	if loops, ok := d.live(h); ok {
		h.Loops = loops
		h.Path = "/dev/mapper/" + h.DMName
		return nil
	}
	// Whatever is left over (a snapshot without loops, loops without a
	// snapshot) is released first, then everything is made again.
	if err := d.release(ctx, h); err != nil {
		return fmt.Errorf("reattach dm disk %s: release stale devices: %w", h.DMName, err)
	}
	var undo undoStack
	if err := d.activate(ctx, h, &undo); err != nil {
		return errors.Join(fmt.Errorf("reattach dm disk %s: %w", h.DMName, err), undo.run(context.WithoutCancel(ctx)))
	}
	return nil
}

// live reports whether h's snapshot exists and sits on a loop of h's COW
// file, and returns h's loops (origin first) if so.
func (d *dmCoW) live(h *Handle) ([]string, bool) {
	dm, err := dmDeviceByName(d.sys, h.DMName)
	if err != nil || dm == "" {
		return nil, false
	}
	slaves, err := os.ReadDir(filepath.Join(d.sys, "block", dm, "slaves"))
	if err != nil {
		return nil, false
	}
	backing, err := loopBackingFiles(d.sys)
	if err != nil {
		return nil, false
	}
	var origin, cow string
	for _, s := range slaves {
		dev := "/dev/" + s.Name()
		if f, ok := backing[dev]; ok && samePath(f, h.COWFile) {
			cow = dev
		}
	}
	for dev, f := range backing {
		if samePath(f, h.originPath()) && (h.Origin != "" || slices.Contains(h.Loops, dev)) {
			origin = dev
		}
	}
	if cow == "" {
		return nil, false
	}
	if origin == "" {
		return []string{cow}, true
	}
	return []string{origin, cow}, true
}

// loopBackingFiles maps each attached loop device (/dev/loopN) to its
// backing file, read from sysfs. A " (deleted)" suffix is dropped.
func loopBackingFiles(sys string) (map[string]string, error) {
	entries, err := os.ReadDir(filepath.Join(sys, "block"))
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "loop") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(sys, "block", e.Name(), "loop", "backing_file"))
		if err != nil {
			continue // not attached
		}
		out["/dev/"+e.Name()] = strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), " (deleted)")
	}
	return out, nil
}

// dmDeviceByName returns the sysfs block name (dm-N) of the device-mapper
// device called name, or "" if there is none.
func dmDeviceByName(sys, name string) (string, error) {
	entries, err := os.ReadDir(filepath.Join(sys, "block"))
	if err != nil {
		return "", err
	}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "dm-") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(sys, "block", e.Name(), "dm", "name"))
		if err == nil && strings.TrimSpace(string(b)) == name {
			return e.Name(), nil
		}
	}
	return "", nil
}

// samePath compares a path reported by the kernel (symlinks resolved) with
// one banger recorded.
func samePath(kernel, recorded string) bool {
	if recorded == "" {
		return false
	}
	if kernel == recorded {
		return true
	}
	dir, err := filepath.EvalSymlinks(filepath.Dir(recorded))
	return err == nil && kernel == filepath.Join(dir, filepath.Base(recorded))
}
