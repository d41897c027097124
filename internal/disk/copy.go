package disk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// copyCoW copies the image, skipping holes, then grows the copy.
type copyCoW struct{}

func (copyCoW) Name() Strategy { return Copy }

func (c copyCoW) Create(ctx context.Context, base, dst string, sizeBytes int64) (*Handle, error) {
	return createFile(ctx, Copy, base, dst, sizeBytes, func(ctx context.Context, out, in *os.File, n int64) error {
		return sparseCopy(ctx, out, in, n)
	})
}

func (c copyCoW) Remove(ctx context.Context, h *Handle) error {
	return fileDisk{Copy}.Remove(ctx, h)
}

func (c copyCoW) Reattach(ctx context.Context, h *Handle) error {
	return fileDisk{Copy}.Reattach(ctx, h)
}

// createFile creates dst exclusively, fills it from base with fill and
// grows it to the requested size. On failure dst is removed.
//
// It neither fsyncs dst nor starts its writeback. An fsync was most of a
// copied clone's cost (0.35 of 0.47 s for a 310 MB root disk on this
// project's CI machine), and it buys nothing a VM keeps: the guest's own
// writes are durable only from its flushes, and the VMM's first flush
// (the guest's first journal commit) makes the whole file durable. Started
// writeback is no better: with ext4's ordered mode every fsync that follows
// on the host (the VM's key and token files) waits for it. Left alone, the
// kernel writes the copy back in its own time, and a VM deleted before
// that (`vm run --rm`) never writes it at all.
func createFile(ctx context.Context, s Strategy, base, dst string, sizeBytes int64,
	fill func(ctx context.Context, out, in *os.File, n int64) error) (_ *Handle, err error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("create %s disk: %w", s, err)
	}
	baseSize, size, err := imageSize(base, sizeBytes)
	if err != nil {
		return nil, fmt.Errorf("create %s disk: %w", s, err)
	}
	h := Plan(s, base, dst, size)
	in, err := os.Open(base)
	if err != nil {
		return nil, fmt.Errorf("create %s disk: %w", s, err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create %s disk: %w", s, err)
	}
	defer func() {
		if err != nil {
			_ = out.Close()
			if rerr := removeFile(dst); rerr != nil {
				err = errors.Join(err, fmt.Errorf("undo: %w", rerr))
			}
		}
	}()
	if err := fill(ctx, out, in, baseSize); err != nil {
		return nil, fmt.Errorf("create %s disk %s from %s: %w", s, dst, base, err)
	}
	if err := out.Truncate(size); err != nil {
		return nil, fmt.Errorf("create %s disk: grow to %d bytes: %w", s, size, err)
	}
	if err := out.Close(); err != nil {
		return nil, fmt.Errorf("create %s disk: %w", s, err)
	}
	return h, nil
}

// copyChunk bounds one copy_file_range call so cancellation is noticed.
const copyChunk = 64 << 20

// sparseCopy copies the first n bytes of in to out at the same offsets,
// visiting only data extents (SEEK_DATA/SEEK_HOLE) so holes stay holes.
// Data moves with copy_file_range (in-kernel; may share extents on
// filesystems that support it) and falls back to read/write.
func sparseCopy(ctx context.Context, out, in *os.File, n int64) error {
	ifd, ofd := int(in.Fd()), int(out.Fd())
	useCFR := true
	var off int64
	for off < n {
		data, err := unix.Seek(ifd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole is left
		}
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
			data = off // no hole support: everything is data
		} else if err != nil {
			return fmt.Errorf("seek data: %w", err)
		}
		if data >= n {
			return nil
		}
		hole, err := unix.Seek(ifd, data, unix.SEEK_HOLE)
		if err != nil || hole > n {
			hole = n
		}
		for pos := data; pos < hole; {
			if err := ctx.Err(); err != nil {
				return err
			}
			want := min(hole-pos, copyChunk)
			var done int64
			if useCFR {
				roff, woff := pos, pos
				c, err := unix.CopyFileRange(ifd, &roff, ofd, &woff, int(want), 0)
				switch {
				case err == nil && c > 0:
					done = int64(c)
				case err == nil: // 0: unexpected EOF of in
					return fmt.Errorf("copy at %d: %w", pos, io.ErrUnexpectedEOF)
				case errors.Is(err, unix.EXDEV), errors.Is(err, unix.ENOSYS), errors.Is(err, unix.EINVAL),
					errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.EPERM):
					useCFR = false
					continue
				default:
					return fmt.Errorf("copy at %d: %w", pos, err)
				}
			} else {
				c, err := copyRange(out, in, pos, want)
				if err != nil {
					return err
				}
				done = c
			}
			pos += done
		}
		off = hole
	}
	return nil
}

// copyRange copies n bytes at off from in to out with pread/pwrite.
func copyRange(out, in *os.File, off, n int64) (int64, error) {
	buf := make([]byte, min(n, 1<<20))
	var done int64
	for done < n {
		chunk := buf[:min(int64(len(buf)), n-done)]
		r, err := in.ReadAt(chunk, off+done)
		if r > 0 {
			if _, werr := out.WriteAt(chunk[:r], off+done); werr != nil {
				return done, fmt.Errorf("write at %d: %w", off+done, werr)
			}
			done += int64(r)
		}
		if err == io.EOF && done < n {
			return done, fmt.Errorf("read at %d: %w", off+done, io.ErrUnexpectedEOF)
		}
		if err != nil && err != io.EOF {
			return done, fmt.Errorf("read at %d: %w", off+done, err)
		}
	}
	return done, nil
}
