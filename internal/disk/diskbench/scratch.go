package diskbench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/privops"
)

// Scratch is a throwaway filesystem on a loop device over a sparse file,
// mounted at Dir. It exists so tests and benchmarks can run the reflink
// strategy on hosts whose own filesystems cannot reflink.
type Scratch struct {
	FSType string // btrfs or xfs
	Image  string // the sparse backing file
	Loop   string // the loop device
	Dir    string // the mount point

	r   hostexec.Runner
	ops privops.Ops
}

// MountScratch makes a sparse file of sizeBytes in workdir, formats it
// with fstype ("btrfs" or "xfs", reflink enabled), attaches it to a loop
// device through ops and mounts it. Needs root. On failure everything made
// so far is undone; on success the caller must Close it.
func MountScratch(ctx context.Context, r hostexec.Runner, ops privops.Ops, fstype, workdir string, sizeBytes int64) (_ *Scratch, err error) {
	var mkfs hostexec.Cmd
	s := &Scratch{FSType: fstype, Image: filepath.Join(workdir, fstype+".img"), Dir: filepath.Join(workdir, fstype), r: r, ops: ops}
	switch fstype {
	case "btrfs":
		mkfs = hostexec.Cmd{Name: "mkfs.btrfs", Args: []string{"-q", "-f", "-K", s.Image}}
	case "xfs":
		mkfs = hostexec.Cmd{Name: "mkfs.xfs", Args: []string{"-q", "-f", "-K", "-m", "reflink=1", s.Image}}
	default:
		return nil, fmt.Errorf("scratch filesystem %q: want btrfs or xfs", fstype)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.Close(context.WithoutCancel(ctx)))
		}
	}()
	f, err := os.OpenFile(s.Image, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		s.Image = "" // not ours to remove
		return nil, fmt.Errorf("scratch %s: %w", fstype, err)
	}
	err = f.Truncate(sizeBytes)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("scratch %s: %w", fstype, err)
	}
	if _, err := r.Run(ctx, mkfs); err != nil {
		return nil, fmt.Errorf("scratch %s: %w", fstype, err)
	}
	if s.Loop, err = ops.AttachLoop(ctx, privops.LoopSpec{File: s.Image}); err != nil {
		return nil, fmt.Errorf("scratch %s: %w", fstype, err)
	}
	if err := os.Mkdir(s.Dir, 0o755); err != nil {
		s.Dir = ""
		return nil, fmt.Errorf("scratch %s: %w", fstype, err)
	}
	if _, err := r.Run(ctx, hostexec.Cmd{Name: "mount", Args: []string{"-t", fstype, s.Loop, s.Dir}}); err != nil {
		return nil, fmt.Errorf("scratch %s: %w", fstype, err)
	}
	return s, nil
}

// Close unmounts, detaches and removes everything MountScratch made. It
// runs every step and joins the errors; closing twice is harmless.
func (s *Scratch) Close(ctx context.Context) error {
	var errs []error
	if s.Dir != "" {
		if mounted(s.Dir) {
			if _, err := s.r.Run(ctx, hostexec.Cmd{Name: "umount", Args: []string{s.Dir}}); err != nil {
				errs = append(errs, err)
			}
		}
		if err := os.Remove(s.Dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if s.Loop != "" {
		if err := s.ops.DetachLoop(ctx, s.Loop); err != nil {
			errs = append(errs, err)
		}
	}
	if s.Image != "" {
		if err := os.Remove(s.Image); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// mounted reports whether dir is a mount point (its device differs from
// its parent's).
func mounted(dir string) bool {
	a, err1 := os.Stat(dir)
	b, err2 := os.Stat(filepath.Dir(dir))
	if err1 != nil || err2 != nil {
		return false
	}
	return devOf(a) != devOf(b)
}

func devOf(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Dev)
	}
	return 0
}
