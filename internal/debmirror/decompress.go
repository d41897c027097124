package debmirror

import (
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Decompress returns a reader of the decompressed stream r, whose format is
// named by the file name's extension (.xz, .gz, .zst; anything else is read
// as is). With a runner it pipes through the host's xz/gzip/zstd (several
// times faster than the pure-Go xz decoder on kernel-sized archives) and
// falls back to Go decoders when the tool is not installed (this relies on
// the runner's contract that a program missing from PATH fails, wrapping
// hostexec.ErrNotFound, before its stdin is read, as hostexec.Real does).
// The caller must Close the reader; closing early stops the decompressor.
func Decompress(ctx context.Context, runner hostexec.Runner, name string, r io.Reader) (io.ReadCloser, error) {
	var tool string
	switch {
	case strings.HasSuffix(name, ".xz"):
		tool = "xz"
	case strings.HasSuffix(name, ".gz"):
		tool = "gzip"
	case strings.HasSuffix(name, ".zst"):
		tool = "zstd"
	default:
		return io.NopCloser(r), nil
	}
	if runner == nil {
		return goDecompressor(tool, r)
	}
	ctx, cancel := context.WithCancel(ctx)
	pr, pw := io.Pipe()
	go func() {
		_, err := runner.Run(ctx, hostexec.Cmd{Name: tool, Args: []string{"-dc"}, Stdin: r, Stdout: pw})
		if errors.Is(err, hostexec.ErrNotFound) {
			// the program never started, so r is untouched
			var d io.ReadCloser
			d, err = goDecompressor(tool, r)
			if err == nil {
				_, err = io.Copy(pw, d)
				d.Close()
			}
		}
		if err != nil {
			err = fmt.Errorf("decompress %s: %w", name, err)
		}
		pw.CloseWithError(err)
	}()
	return &cancelReader{PipeReader: pr, cancel: cancel}, nil
}

type cancelReader struct {
	*io.PipeReader
	cancel context.CancelFunc
}

func (c *cancelReader) Close() error {
	c.cancel()
	return c.PipeReader.Close()
}

func goDecompressor(tool string, r io.Reader) (io.ReadCloser, error) {
	switch tool {
	case "xz":
		x, err := xz.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("xz: %w", err)
		}
		return io.NopCloser(x), nil
	case "gzip":
		g, err := gzip.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		return g, nil
	default:
		z, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
		return z.IOReadCloser(), nil
	}
}
