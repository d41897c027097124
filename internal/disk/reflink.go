package disk

import (
	"context"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/bangerdev/banger/internal/privops"
)

// reflinkCoW clones the image with FICLONE (btrfs, xfs with reflink=1):
// both files share extents until one is written.
type reflinkCoW struct{}

func (reflinkCoW) Name() Strategy { return Reflink }

func (reflinkCoW) Create(ctx context.Context, base, dst string, sizeBytes int64) (*Handle, error) {
	return createFile(ctx, Reflink, base, dst, sizeBytes, func(_ context.Context, out, in *os.File, _ int64) error {
		return clone(out, in)
	})
}

func (reflinkCoW) Remove(ctx context.Context, h *Handle) error {
	return fileDisk{Reflink}.Remove(ctx, h)
}

func (reflinkCoW) Reattach(ctx context.Context, h *Handle) error {
	return fileDisk{Reflink}.Reattach(ctx, h)
}

// clone makes out share all of in's extents. Filesystems without reflink,
// or two files on different filesystems, yield an error wrapping
// privops.ErrNotSupported.
func clone(out, in *os.File) error {
	err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd()))
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENOTTY), errors.Is(err, unix.EXDEV),
		errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOSYS):
		return fmt.Errorf("%w: reflink (FICLONE) from %s to %s: %w (put images and VMs on btrfs or xfs with reflink, or use the copy strategy)",
			privops.ErrNotSupported, in.Name(), out.Name(), err)
	default:
		return fmt.Errorf("reflink (FICLONE): %w", err)
	}
}
