package update

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// Staged is a release extracted and checked, ready to install.
type Staged struct {
	Dir   string            // holds one file per archive entry
	Files map[string]string // entry name → path in Dir
	Sums  map[string]string // entry name → sha256 of the extracted bytes
}

// stage extracts tarball (already verified against SHA256SUMS) into a new
// directory below parent. The archive must hold every name in want, and
// may hold names in optional (entries a release carries that this install
// does not use, such as a guest agent a user install lacks), each once, as regular files of at most MaxBinaryBytes; anything
// else (directories, links, devices, paths with a slash or "..", a
// second copy, an unknown name, bytes after the archive end) refuses the
// whole release and leaves nothing behind. Files are written 0755 with
// O_EXCL|O_NOFOLLOW. maxFile caps each file (MaxBinaryBytes in
// production).
func stage(tarball, parent string, want, optional []string, maxFile int64) (_ *Staged, err error) {
	f, err := os.Open(tarball)
	if err != nil {
		return nil, fmt.Errorf("open release tarball: %w", err)
	}
	defer f.Close()
	dir, err := os.MkdirTemp(parent, "staged-*")
	if err != nil {
		return nil, fmt.Errorf("staging directory: %w", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	gz, err := gzip.NewReader(f)
	if err != nil {
		return nil, fmt.Errorf("%w: not a gzip stream: %v", ErrBadArchive, err)
	}
	gz.Multistream(false)
	tr := tar.NewReader(gz)
	st := &Staged{Dir: dir, Files: map[string]string{}, Sums: map[string]string{}}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadArchive, err)
		}
		name := h.Name
		switch {
		case h.Typeflag != tar.TypeReg:
			return nil, fmt.Errorf("%w: entry %q is a %s, only regular files are allowed", ErrBadArchive, name, typeName(h.Typeflag))
		case strings.Contains(name, "/") || strings.Contains(name, "\\") || name == ".." || name == ".":
			return nil, fmt.Errorf("%w: entry %q has a path; only the plain names %s are allowed", ErrBadArchive, name, strings.Join(want, ", "))
		case !slices.Contains(want, name) && !slices.Contains(optional, name):
			return nil, fmt.Errorf("%w: unexpected entry %q (want exactly %s)", ErrBadArchive, name, strings.Join(want, ", "))
		case st.Files[name] != "":
			return nil, fmt.Errorf("%w: entry %q appears twice", ErrBadArchive, name)
		case h.Size < 0 || h.Size > maxFile:
			return nil, fmt.Errorf("%w: entry %q is %d bytes (limit %d)", ErrBadArchive, name, h.Size, maxFile)
		case isSparse(h):
			return nil, fmt.Errorf("%w: entry %q is a sparse file", ErrBadArchive, name)
		}
		p := filepath.Join(dir, name)
		out, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o755)
		if err != nil {
			return nil, fmt.Errorf("stage %s: %w", name, err)
		}
		hash := sha256.New()
		n, cerr := io.Copy(io.MultiWriter(out, hash), io.LimitReader(tr, maxFile+1))
		serr := out.Sync()
		if err := errors.Join(cerr, serr, out.Close()); err != nil {
			return nil, fmt.Errorf("%w: entry %q: %v", ErrBadArchive, name, err)
		}
		if n != h.Size {
			return nil, fmt.Errorf("%w: entry %q is shorter than its header says", ErrBadArchive, name)
		}
		if err := os.Chmod(p, 0o755); err != nil {
			return nil, err
		}
		st.Files[name] = p
		st.Sums[name] = hex.EncodeToString(hash.Sum(nil))
	}
	// Nothing may follow the archive: the rest of the gzip member must be
	// the tar padding (zeros) only.
	if rest, err := io.Copy(io.Discard, zeroCheck{gz}); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadArchive, err)
	} else if rest > 1<<20 {
		return nil, fmt.Errorf("%w: %d bytes of padding after the archive", ErrBadArchive, rest)
	}
	var missing []string
	for _, w := range want {
		if st.Files[w] == "" {
			missing = append(missing, w)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%w: missing %s", ErrBadArchive, strings.Join(missing, ", "))
	}
	return st, nil
}

// isSparse reports PAX or GNU sparse-file headers (which the tar reader
// expands into holes).
func isSparse(h *tar.Header) bool {
	for k := range h.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse") {
			return true
		}
	}
	return false
}

// zeroCheck fails on the first non-zero byte.
type zeroCheck struct{ r io.Reader }

func (z zeroCheck) Read(p []byte) (int, error) {
	n, err := z.r.Read(p)
	for _, b := range p[:n] {
		if b != 0 {
			return n, errors.New("data after the end of the archive")
		}
	}
	return n, err
}

func typeName(t byte) string {
	switch t {
	case tar.TypeDir:
		return "directory"
	case tar.TypeSymlink:
		return "symlink"
	case tar.TypeLink:
		return "hard link"
	case tar.TypeChar, tar.TypeBlock:
		return "device"
	case tar.TypeFifo:
		return "fifo"
	}
	return fmt.Sprintf("tar type %q", t)
}
