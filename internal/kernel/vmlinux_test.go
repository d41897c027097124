package kernel

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/testreq"
	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/ulikunitz/xz"
	"github.com/ulikunitz/xz/lzma"
)

func compressWith(t testing.TB, format string, data []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	switch format {
	case "gzip":
		w := gzip.NewWriter(&b)
		w.Write(data)
		w.Close()
	case "xz":
		w, err := xz.NewWriter(&b)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(data)
		w.Close()
	case "zstd":
		w, _ := zstd.NewWriter(&b)
		w.Write(data)
		w.Close()
	case "lz4":
		w := lz4.NewWriter(&b)
		if err := w.Apply(lz4.LegacyOption(true)); err != nil {
			t.Fatal(err)
		}
		w.Write(data)
		w.Close()
	case "lzma":
		// the kernel's lzma -9 header starts 5d 00 00 00 (a dictionary of a multiple of 16 MiB)
		w, err := lzma.WriterConfig{DictCap: 1 << 24}.NewWriter(&b)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(data)
		w.Close()
	case "bzip2":
		testreq.Tools(t, "bzip2") // only to make the bzip2 test payload
		res, err := hostexec.Real{}.Run(context.Background(), hostexec.Cmd{Name: "bzip2", Args: []string{"-c"}, Stdin: bytes.NewReader(data)})
		if err != nil {
			t.Fatal(err)
		}
		return res.Stdout
	default:
		t.Fatalf("unknown format %s", format)
	}
	return b.Bytes()
}

// fakeBzImage lays out a bzImage like the kernel's build does: setup
// sectors with the boot header, then the protected-mode part holding some
// code, the compressed payload and the 4-byte uncompressed size.
func fakeBzImage(payload []byte, uncompressed int, withHeader bool) []byte {
	setupSects := 3
	img := make([]byte, (setupSects+1)*512)
	img[0x1f1] = byte(setupSects)
	pm := append([]byte("decompressor code \x1f\x8b\x08 decoy gzip magic \xfd7zXZ\x00 decoy xz "), payload...)
	size := make([]byte, 4)
	binary.LittleEndian.PutUint32(size, uint32(uncompressed))
	pm = append(pm, size...)
	pm = append(pm, []byte("trailing setup data")...)
	if withHeader {
		copy(img[0x202:], "HdrS")
		binary.LittleEndian.PutUint16(img[0x206:], 0x020f)
		binary.LittleEndian.PutUint32(img[0x248:], uint32(bytes.Index(pm, payload)))
		binary.LittleEndian.PutUint32(img[0x24c:], uint32(len(payload)+4))
		// kernel_version string
		ver := []byte("6.1.0-test-amd64 (builder@test) #1 SMP\x00")
		binary.LittleEndian.PutUint16(img[0x20e:], uint16(0x400-0x200))
		copy(img[0x400:], ver)
	}
	return append(img, pm...)
}

func TestExtractVmlinuxFormats(t *testing.T) {
	vm := testVmlinux(true)
	for _, format := range []string{"gzip", "xz", "zstd", "lz4", "lzma", "bzip2"} {
		for _, withHeader := range []bool{true, false} {
			name := format + map[bool]string{true: "/header", false: "/scan"}[withHeader]
			t.Run(name, func(t *testing.T) {
				img := fakeBzImage(compressWith(t, format, vm), len(vm), withHeader)
				got, err := ExtractVmlinux(img)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, vm) {
					t.Fatalf("extracted %d bytes, want the %d-byte ELF", len(got), len(vm))
				}
				if !HasPVHNote(got) {
					t.Error("PVH note not found")
				}
				if withHeader {
					if v := KernelVersion(img); v != "6.1.0-test-amd64" {
						t.Errorf("KernelVersion(bzImage) = %q", v)
					}
				}
			})
		}
	}
}

func TestExtractVmlinuxRejects(t *testing.T) {
	vm := testVmlinux(false)
	gz := compressWith(t, "gzip", vm)
	for name, img := range map[string][]byte{
		"no payload":        fakeBzImage([]byte("nothing compressed here"), 0, false),
		"truncated payload": fakeBzImage(gz[:len(gz)/2], len(vm), true),
		"not elf inside":    fakeBzImage(compressWith(t, "gzip", bytes.Repeat([]byte("not an elf"), 100)), 1000, true),
		"broken elf":        append([]byte("\x7fELF"), make([]byte, 100)...),
		"empty":             nil,
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := ExtractVmlinux(img); !errors.Is(err, ErrNoVmlinux) {
				t.Fatalf("err = %v, want ErrNoVmlinux", err)
			}
		})
	}
}

func TestExtractVmlinuxPassesELFThrough(t *testing.T) {
	vm := testVmlinux(false)
	got, err := ExtractVmlinux(vm)
	if err != nil || !bytes.Equal(got, vm) {
		t.Fatalf("ELF input: %v", err)
	}
	if HasPVHNote(vm) {
		t.Error("PVH note reported for a kernel without one")
	}
	if v := KernelVersion(vm); v != "6.1.0-test-amd64" {
		t.Errorf("KernelVersion(ELF) = %q", v)
	}
}

func TestExtractVmlinuxBombLimited(t *testing.T) {
	big := append(testVmlinux(false), make([]byte, 4<<20)...)
	img := fakeBzImage(compressWith(t, "gzip", big), len(big), true)
	if _, err := extractVmlinux(img, 1<<20); !errors.Is(err, ErrNoVmlinux) {
		t.Fatalf("oversized payload: err = %v, want ErrNoVmlinux", err)
	}
}

func FuzzExtractVmlinux(f *testing.F) {
	vm := testVmlinuxN(true, 4)
	for _, format := range []string{"gzip", "xz", "zstd", "lz4", "lzma"} {
		f.Add(fakeBzImage(compressWith(f, format, vm), len(vm), true))
	}
	f.Add(vm)
	f.Fuzz(func(t *testing.T, img []byte) {
		out, err := extractVmlinux(img, 8<<20)
		if err == nil && !validELF(out) {
			t.Fatal("returned output that is not a valid ELF")
		}
		HasPVHNote(img)
		KernelVersion(img)
	})
}
