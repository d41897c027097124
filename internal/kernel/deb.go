package kernel

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/bangerdev/banger/internal/debmirror"
	"github.com/bangerdev/banger/internal/hostexec"
)

// ErrUnsafePath is wrapped by archive extraction errors for entries that
// would escape the destination (.., absolute links, writes through symlinks).
var ErrUnsafePath = errors.New("unsafe path in archive")

// ExtractDeb unpacks the data part of a Debian package (ar archive holding
// data.tar, data.tar.xz, .zst or .gz) into dstDir, like `dpkg-deb -x`:
// directories, regular files, symlinks and hard links with their permission
// bits (setuid/setgid dropped; ownership not applied). Device nodes and
// FIFOs are skipped. Entries that would land outside dstDir, pass through a
// symlink, or hard-link to something outside are rejected with
// ErrUnsafePath; on any error the partial tree is left for the caller to
// remove (extract into a fresh temporary directory).
func ExtractDeb(debPath, dstDir string) error {
	return ExtractDebWith(context.Background(), nil, debPath, dstDir)
}

// ExtractDebWith is ExtractDeb decompressing data.tar through the host's
// xz/zstd/gzip run by runner (much faster for kernel packages; see
// debmirror.Decompress); a nil runner uses the Go decoders.
func ExtractDebWith(ctx context.Context, runner hostexec.Runner, debPath, dstDir string) error {
	f, err := os.Open(debPath)
	if err != nil {
		return fmt.Errorf("open deb: %w", err)
	}
	defer f.Close()
	return extractDebReader(ctx, runner, f, dstDir, 0)
}

// maxDebMember bounds what one ar member may declare (and tar entries may
// unpack) so a hostile package cannot fill the disk unnoticed: 8 GiB.
const maxDebMember = 8 << 30

func extractDebReader(ctx context.Context, runner hostexec.Runner, r io.Reader, dstDir string, limit int64) error {
	if limit <= 0 {
		limit = maxDebMember
	}
	br := bufio.NewReader(r)
	magic := make([]byte, 8)
	if _, err := io.ReadFull(br, magic); err != nil || string(magic) != "!<arch>\n" {
		return fmt.Errorf("not a Debian package (no ar header)")
	}
	for {
		hdr := make([]byte, 60)
		if _, err := io.ReadFull(br, hdr); err != nil {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("not a Debian package: no data.tar member")
			}
			return fmt.Errorf("read deb: truncated ar header: %w", err)
		}
		if string(hdr[58:60]) != "`\n" {
			return fmt.Errorf("read deb: bad ar member header")
		}
		name := strings.TrimRight(strings.TrimSpace(string(hdr[0:16])), "/")
		size, err := strconv.ParseInt(strings.TrimSpace(string(hdr[48:58])), 10, 64)
		if err != nil || size < 0 || size > limit {
			return fmt.Errorf("read deb: bad ar member size for %q", name)
		}
		body := io.LimitReader(br, size)
		if strings.HasPrefix(name, "data.tar") {
			if name != "data.tar" && !strings.HasSuffix(name, ".xz") && !strings.HasSuffix(name, ".zst") && !strings.HasSuffix(name, ".gz") {
				return fmt.Errorf("read deb %s: unsupported compression (want .xz, .zst, .gz or none)", name)
			}
			dec, err := debmirror.Decompress(ctx, runner, name, body)
			if err != nil {
				return fmt.Errorf("read deb %s: %w", name, err)
			}
			defer dec.Close()
			if err := extractTar(dec, dstDir, limit); err != nil {
				return err
			}
			// drain so a decompressor error at the end of the stream surfaces
			if _, err := io.Copy(io.Discard, dec); err != nil {
				return fmt.Errorf("read deb %s: %w", name, err)
			}
			return nil
		}
		if _, err := io.Copy(io.Discard, body); err != nil {
			return fmt.Errorf("read deb: %w", err)
		}
		if size%2 == 1 {
			if _, err := br.ReadByte(); err != nil && !errors.Is(err, io.EOF) {
				return fmt.Errorf("read deb: %w", err)
			}
		}
	}
}

// cleanEntry maps a tar entry name to a path relative to the root, or
// fails for names escaping it.
func cleanEntry(name string) (string, error) {
	n := strings.TrimPrefix(name, "./")
	n = strings.TrimLeft(n, "/")
	if n == "" || n == "." {
		return "", nil
	}
	for _, part := range strings.Split(strings.TrimRight(n, "/"), "/") {
		if part == ".." {
			return "", fmt.Errorf("%w: %q", ErrUnsafePath, name)
		}
	}
	c := path.Clean(n)
	if c == "." {
		return "", nil
	}
	if strings.ContainsRune(c, 0) {
		return "", fmt.Errorf("%w: %q", ErrUnsafePath, name)
	}
	return c, nil
}

// checkParents makes sure no existing component between root and rel is a
// symlink (so writes cannot be redirected outside root) and creates missing
// directories.
func checkParents(root, rel string) error {
	dir := path.Dir(rel)
	if dir == "." {
		return nil
	}
	cur := root
	for _, part := range strings.Split(dir, "/") {
		cur = filepath.Join(cur, part)
		st, err := os.Lstat(cur)
		switch {
		case errors.Is(err, os.ErrNotExist):
			if err := os.Mkdir(cur, 0o755); err != nil {
				return err
			}
		case err != nil:
			return err
		case st.Mode()&os.ModeSymlink != 0:
			return fmt.Errorf("%w: %q passes through symlink %s", ErrUnsafePath, rel, part)
		case !st.IsDir():
			return fmt.Errorf("%w: %q: %s is not a directory", ErrUnsafePath, rel, part)
		}
	}
	return nil
}

func extractTar(r io.Reader, root string, limit int64) error {
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	tr := tar.NewReader(r)
	var total int64
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read data.tar: %w", err)
		}
		rel, err := cleanEntry(h.Name)
		if err != nil {
			return err
		}
		if rel == "" {
			continue
		}
		if err := checkParents(root, rel); err != nil {
			return err
		}
		dst := filepath.Join(root, rel)
		perm := os.FileMode(h.Mode) & 0o777
		switch h.Typeflag {
		case tar.TypeDir:
			st, err := os.Lstat(dst)
			if err == nil && !st.IsDir() {
				return fmt.Errorf("%w: directory %q replaces a non-directory", ErrUnsafePath, h.Name)
			}
			if err := os.MkdirAll(dst, 0o755); err != nil {
				return err
			}
			if err := os.Chmod(dst, perm|0o700); err != nil {
				return err
			}
		case tar.TypeReg:
			total += h.Size
			if h.Size < 0 || total > limit {
				return fmt.Errorf("read data.tar: contents exceed %d bytes", limit)
			}
			if err := removeNonDir(dst); err != nil {
				return err
			}
			out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, perm)
			if err != nil {
				return err
			}
			_, err = io.Copy(out, io.LimitReader(tr, h.Size))
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("extract %s: %w", h.Name, err)
			}
		case tar.TypeSymlink:
			if h.Linkname == "" || strings.ContainsRune(h.Linkname, 0) {
				return fmt.Errorf("%w: symlink %q has an empty target", ErrUnsafePath, h.Name)
			}
			if err := removeNonDir(dst); err != nil {
				return err
			}
			if err := os.Symlink(h.Linkname, dst); err != nil {
				return err
			}
		case tar.TypeLink:
			target, err := cleanEntry(h.Linkname)
			if err != nil || target == "" {
				return fmt.Errorf("%w: hard link %q -> %q", ErrUnsafePath, h.Name, h.Linkname)
			}
			if err := checkParents(root, target); err != nil {
				return err
			}
			src := filepath.Join(root, target)
			st, err := os.Lstat(src)
			if err != nil || !st.Mode().IsRegular() {
				return fmt.Errorf("%w: hard link %q -> %q: target is not an extracted regular file", ErrUnsafePath, h.Name, h.Linkname)
			}
			if err := removeNonDir(dst); err != nil {
				return err
			}
			if err := os.Link(src, dst); err != nil {
				return err
			}
		default:
			// device nodes, FIFOs: a kernel package has none; skip.
		}
	}
}

func removeNonDir(p string) error {
	st, err := os.Lstat(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if st.IsDir() {
		return fmt.Errorf("%w: %s: a file would replace a directory", ErrUnsafePath, p)
	}
	return os.Remove(p)
}

// extractDebBytes is ExtractDeb on an in-memory package with a size
// limit (tests and fuzzing).
func extractDebBytes(data []byte, dst string, limit int64) error {
	return extractDebReader(context.Background(), nil, bytes.NewReader(data), dst, limit)
}
