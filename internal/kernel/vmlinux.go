package kernel

import (
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/ulikunitz/xz"
	"github.com/ulikunitz/xz/lzma"
)

// ErrNoVmlinux is returned when no compressed payload of a bzImage
// decompresses to an ELF image.
var ErrNoVmlinux = errors.New("no ELF kernel found in the image")

// maxVmlinux bounds the decompressed size (a distro vmlinux is ~50-80 MiB).
const maxVmlinux = 1 << 30

var elfMagic = []byte{0x7f, 'E', 'L', 'F'}

type payloadFormat struct {
	name  string
	magic []byte
	open  func(io.Reader) (io.Reader, error)
}

// formats lists the kernel's compressions with the magic extract-vmlinux
// scans for.
var formats = []payloadFormat{
	{"gzip", []byte{0x1f, 0x8b, 0x08}, func(r io.Reader) (io.Reader, error) {
		g, err := gzip.NewReader(r)
		if err != nil {
			return nil, err
		}
		g.Multistream(false)
		return g, nil
	}},
	{"xz", []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}, func(r io.Reader) (io.Reader, error) {
		return xz.ReaderConfig{SingleStream: true}.NewReader(r)
	}},
	{"zstd", []byte{0x28, 0xb5, 0x2f, 0xfd}, func(r io.Reader) (io.Reader, error) {
		d, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxVmlinux))
		if err != nil {
			return nil, err
		}
		return d.IOReadCloser(), nil
	}},
	{"lz4", []byte{0x02, 0x21, 0x4c, 0x18}, func(r io.Reader) (io.Reader, error) {
		return lz4.NewReader(r), nil
	}},
	{"lzma", []byte{0x5d, 0x00, 0x00, 0x00}, func(r io.Reader) (io.Reader, error) {
		// refuse dictionaries the kernel never uses before the decoder allocates them
		hdr := make([]byte, 13)
		if _, err := io.ReadFull(r, hdr); err != nil {
			return nil, err
		}
		if dict := binary.LittleEndian.Uint32(hdr[1:5]); dict > 256<<20 {
			return nil, fmt.Errorf("lzma dictionary of %d bytes is implausible", dict)
		}
		return lzma.NewReader(io.MultiReader(bytes.NewReader(hdr), r))
	}},
	{"bzip2", []byte{'B', 'Z', 'h'}, func(r io.Reader) (io.Reader, error) {
		return bzip2.NewReader(r), nil
	}},
}

// ExtractVmlinux returns the uncompressed ELF kernel inside a bzImage (what
// Firecracker needs). It uses the payload location from the boot protocol
// header when present, and otherwise scans for the magic of every
// compression the kernel supports (gzip, xz, zstd, lz4, lzma, bzip2), like
// the kernel's scripts/extract-vmlinux. Input that already is an ELF is
// returned as is. The result is checked to parse as ELF.
func ExtractVmlinux(bzImage []byte) ([]byte, error) {
	return extractVmlinux(bzImage, maxVmlinux)
}

func extractVmlinux(img []byte, limit int64) ([]byte, error) {
	if bytes.HasPrefix(img, elfMagic) {
		if validELF(img) {
			return img, nil
		}
		return nil, fmt.Errorf("%w: input starts with ELF magic but does not parse", ErrNoVmlinux)
	}
	if payload, ok := bootPayload(img); ok {
		for _, f := range formats {
			if bytes.HasPrefix(payload, f.magic) {
				if out, err := tryDecompress(f, payload, limit); err == nil {
					return out, nil
				}
			}
		}
	}
	var lastErr error
	for _, f := range formats {
		for off := 0; off < len(img); {
			i := bytes.Index(img[off:], f.magic)
			if i < 0 {
				break
			}
			out, err := tryDecompress(f, img[off+i:], limit)
			if err == nil {
				return out, nil
			}
			lastErr = err
			off += i + 1
		}
	}
	if lastErr != nil {
		return nil, fmt.Errorf("%w (last attempt: %v)", ErrNoVmlinux, lastErr)
	}
	return nil, fmt.Errorf("%w: no compressed payload magic found", ErrNoVmlinux)
}

// bootPayload returns the compressed payload named by the x86 boot protocol
// header (payload_offset/payload_length, protocol >= 2.08).
func bootPayload(img []byte) ([]byte, bool) {
	if len(img) < 0x250 || string(img[0x202:0x206]) != "HdrS" {
		return nil, false
	}
	if binary.LittleEndian.Uint16(img[0x206:]) < 0x0208 {
		return nil, false
	}
	setupSects := int(img[0x1f1])
	if setupSects == 0 {
		setupSects = 4
	}
	start := (setupSects + 1) * 512
	off := int(binary.LittleEndian.Uint32(img[0x248:]))
	n := int(binary.LittleEndian.Uint32(img[0x24c:]))
	if off < 0 || n <= 0 || start+off < 0 || start+off+n > len(img) || start+off+n < start {
		return nil, false
	}
	return img[start+off : start+off+n], true
}

// tryDecompress decompresses one candidate payload. Trailing bytes after the
// compressed stream (the kernel appends the uncompressed size) make some
// decoders fail at the end; the output is accepted when it parses as a
// complete ELF file.
func tryDecompress(f payloadFormat, data []byte, limit int64) (out []byte, err error) {
	defer func() {
		if r := recover(); r != nil { // a decoder choking on hostile input
			out, err = nil, fmt.Errorf("%s decoder: %v", f.name, r)
		}
	}()
	r, err := f.open(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.name, err)
	}
	if c, ok := r.(io.Closer); ok {
		defer c.Close()
	}
	var buf bytes.Buffer
	_, rerr := io.Copy(&buf, io.LimitReader(r, limit+1))
	if int64(buf.Len()) > limit {
		return nil, fmt.Errorf("%s: decompressed size exceeds %d bytes", f.name, limit)
	}
	b := buf.Bytes()
	if !bytes.HasPrefix(b, elfMagic) {
		if rerr != nil {
			return nil, fmt.Errorf("%s: %w", f.name, rerr)
		}
		return nil, fmt.Errorf("%s: payload is not ELF", f.name)
	}
	if !validELF(b) {
		return nil, fmt.Errorf("%s: decompressed ELF is truncated or invalid (%v)", f.name, rerr)
	}
	return b, nil
}

// validELF reports whether b parses as an ELF file whose program headers,
// section headers and loadable segments lie within b.
func validELF(b []byte) bool {
	ef, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return false
	}
	defer ef.Close()
	for _, p := range ef.Progs {
		if p.Filesz > uint64(len(b)) || p.Off > uint64(len(b))-p.Filesz {
			return false
		}
	}
	return len(ef.Progs) > 0
}

// XenElfnotePhys32Entry is the ELF note type carrying the PVH entry point.
const XenElfnotePhys32Entry = 18

// HasPVHNote reports whether the ELF image carries a Xen PVH entry note
// (name "Xen", type XEN_ELFNOTE_PHYS32_ENTRY), which lets Firecracker and
// QEMU boot it through the PVH boot protocol.
func HasPVHNote(elfImage []byte) bool {
	ef, err := elf.NewFile(bytes.NewReader(elfImage))
	if err != nil {
		return false
	}
	defer ef.Close()
	var bo binary.ByteOrder = ef.ByteOrder
	check := func(data []byte) bool {
		for len(data) >= 12 {
			namesz := bo.Uint32(data[0:])
			descsz := bo.Uint32(data[4:])
			typ := bo.Uint32(data[8:])
			data = data[12:]
			nlen := int(align4(uint64(namesz)))
			dlen := int(align4(uint64(descsz)))
			if uint64(namesz) > uint64(len(data)) || nlen > len(data) {
				return false
			}
			name := data[:namesz]
			data = data[nlen:]
			if uint64(descsz) > uint64(len(data)) {
				return false
			}
			if typ == XenElfnotePhys32Entry && bytes.Equal(bytes.TrimRight(name, "\x00"), []byte("Xen")) {
				return true
			}
			if dlen > len(data) {
				return false
			}
			data = data[dlen:]
		}
		return false
	}
	for _, p := range ef.Progs {
		if p.Type != elf.PT_NOTE || p.Filesz > 1<<24 {
			continue
		}
		if d, err := io.ReadAll(p.Open()); err == nil && check(d) {
			return true
		}
	}
	for _, s := range ef.Sections {
		if s.Type != elf.SHT_NOTE || s.Size > 1<<24 {
			continue
		}
		if d, err := s.Data(); err == nil && check(d) {
			return true
		}
	}
	return false
}

func align4(n uint64) uint64 { return (n + 3) &^ 3 }
