package kernel

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/hostexec"
)

type tarEntry struct {
	hdr  tar.Header
	body string
}

func file(name, body string, mode int64) tarEntry {
	return tarEntry{tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(body))}, body}
}
func dir(name string) tarEntry {
	return tarEntry{hdr: tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: 0o755}}
}
func symlink(name, target string) tarEntry {
	return tarEntry{hdr: tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target, Mode: 0o777}}
}
func hardlink(name, target string) tarEntry {
	return tarEntry{hdr: tar.Header{Name: name, Typeflag: tar.TypeLink, Linkname: target}}
}

func makeTar(t testing.TB, entries []tarEntry) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		h := e.hdr
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	tw.Close()
	return b.Bytes()
}

func arMember(name string, data []byte) []byte {
	h := fmt.Sprintf("%-16s%-12s%-6s%-6s%-8s%-10d`\n", name, "0", "0", "0", "100644", len(data))
	out := append([]byte(h), data...)
	if len(data)%2 == 1 {
		out = append(out, '\n')
	}
	return out
}

// makeDeb builds a .deb whose data.tar is compressed with format ("" = plain).
func makeDeb(t testing.TB, format string, entries []tarEntry) []byte {
	t.Helper()
	data := makeTar(t, entries)
	name := "data.tar"
	if format != "" {
		f := map[string]string{"gzip": "gz", "xz": "xz", "zstd": "zst"}[format]
		data = compressWith(t, format, data)
		name += "." + f
	}
	var ctl bytes.Buffer
	gz := gzip.NewWriter(&ctl)
	gz.Write(makeTar(t, []tarEntry{file("./control", "Package: x\n", 0o644)}))
	gz.Close()
	deb := []byte("!<arch>\n")
	deb = append(deb, arMember("debian-binary", []byte("2.0\n"))...)
	deb = append(deb, arMember("control.tar.gz", ctl.Bytes())...)
	deb = append(deb, arMember(name, data)...)
	return deb
}

var goodEntries = []tarEntry{
	dir("./"), dir("./boot/"), file("./boot/vmlinuz-6.1.0-test", "bzimage", 0o644),
	dir("./lib/modules/6.1.0-test/kernel/"), file("./lib/modules/6.1.0-test/kernel/a.ko", "module", 0o644),
	file("./usr/bin/tool", "#!/bin/sh\n", 0o4755), // setuid dropped
	symlink("./vmlinuz", "boot/vmlinuz-6.1.0-test"),
	symlink("./abs", "/etc/passwd"), // absolute targets are kept, never followed
	hardlink("./boot/vmlinuz.hard", "./boot/vmlinuz-6.1.0-test"),
	{hdr: tar.Header{Name: "./dev/null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3, Mode: 0o666}},
}

func TestExtractDeb(t *testing.T) {
	for _, format := range []string{"", "gzip", "xz", "zstd"} {
		for _, withRunner := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/runner=%v", format, withRunner), func(t *testing.T) {
				debPath := filepath.Join(t.TempDir(), "k.deb")
				os.WriteFile(debPath, makeDeb(t, format, goodEntries), 0o644)
				dst := t.TempDir()
				var err error
				if withRunner {
					err = ExtractDebWith(t.Context(), hostexec.Real{}, debPath, dst)
				} else {
					err = ExtractDeb(debPath, dst)
				}
				if err != nil {
					t.Fatal(err)
				}
				if b, _ := os.ReadFile(filepath.Join(dst, "boot/vmlinuz-6.1.0-test")); string(b) != "bzimage" {
					t.Errorf("vmlinuz content %q", b)
				}
				if b, _ := os.ReadFile(filepath.Join(dst, "vmlinuz")); string(b) != "bzimage" {
					t.Errorf("relative symlink: %q", b)
				}
				if l, _ := os.Readlink(filepath.Join(dst, "abs")); l != "/etc/passwd" {
					t.Errorf("absolute symlink target %q", l)
				}
				st, err := os.Stat(filepath.Join(dst, "usr/bin/tool"))
				if err != nil || st.Mode().Perm() != 0o755 || st.Mode()&os.ModeSetuid != 0 {
					t.Errorf("tool mode %v (%v), want 0755 without setuid", st.Mode(), err)
				}
				a, _ := os.Stat(filepath.Join(dst, "boot/vmlinuz-6.1.0-test"))
				b, _ := os.Stat(filepath.Join(dst, "boot/vmlinuz.hard"))
				if a == nil || b == nil || !os.SameFile(a, b) {
					t.Error("hard link not extracted as a link")
				}
				if _, err := os.Lstat(filepath.Join(dst, "dev/null")); !errors.Is(err, os.ErrNotExist) {
					t.Error("device node extracted")
				}
			})
		}
	}
}

func TestExtractDebRejectsUnsafe(t *testing.T) {
	for name, entries := range map[string][]tarEntry{
		"dotdot":               {file("./../escape", "x", 0o644)},
		"deep dotdot":          {dir("./a/"), file("./a/../../escape", "x", 0o644)},
		"write through link":   {symlink("./link", "/tmp"), file("./link/escape", "x", 0o644)},
		"write through rel":    {symlink("./up", ".."), file("./up/escape", "x", 0o644)},
		"hardlink outside":     {hardlink("./h", "../../etc/passwd")},
		"hardlink to symlink":  {symlink("./s", "/etc/passwd"), hardlink("./h", "./s")},
		"hardlink via symlink": {symlink("./d", "/etc"), hardlink("./h", "./d/passwd")},
		"file replaces dir":    {dir("./x/"), file("./x", "y", 0o644)},
	} {
		t.Run(name, func(t *testing.T) {
			parent := t.TempDir()
			dst := filepath.Join(parent, "root")
			err := extractDebBytes(makeDeb(t, "gzip", entries), dst, 0)
			if !errors.Is(err, ErrUnsafePath) {
				t.Fatalf("err = %v, want ErrUnsafePath", err)
			}
			if _, err := os.Stat(filepath.Join(parent, "escape")); err == nil {
				t.Fatal("file written outside the destination")
			}
		})
	}
}

func TestExtractDebMalformed(t *testing.T) {
	good := makeDeb(t, "gzip", goodEntries)
	for name, data := range map[string][]byte{
		"not ar":       []byte("hello world, not a package"),
		"no data":      append([]byte("!<arch>\n"), arMember("debian-binary", []byte("2.0\n"))...),
		"truncated":    good[:len(good)-100],
		"bad size":     []byte("!<arch>\ndebian-binary   0           0     0     100644  99999999999`\n"),
		"unknown comp": append([]byte("!<arch>\n"), arMember("data.tar.lz", []byte("x"))...),
		"corrupt gzip": append([]byte("!<arch>\n"), arMember("data.tar.gz", []byte("\x1f\x8b\x08garbage"))...),
		"too big":      makeDeb(t, "gzip", []tarEntry{file("./big", strings.Repeat("x", 5000), 0o644)}),
	} {
		t.Run(name, func(t *testing.T) {
			limit := int64(0)
			if name == "too big" {
				limit = 4096 // the gzip member fits, its 5000-byte content does not
			}
			if err := extractDebBytes(data, t.TempDir(), limit); err == nil {
				t.Fatal("malformed package accepted")
			}
		})
	}
}

func FuzzExtractDeb(f *testing.F) {
	f.Add(makeDeb(f, "", goodEntries))
	f.Add(makeDeb(f, "gzip", []tarEntry{symlink("./l", "/"), file("./l/x", "y", 0o644)}))
	f.Add(makeDeb(f, "", []tarEntry{hardlink("./h", "../x")}))
	f.Fuzz(func(t *testing.T, data []byte) {
		parent := t.TempDir()
		dst := filepath.Join(parent, "root")
		_ = extractDebBytes(data, dst, 1<<20)
		ents, err := os.ReadDir(parent)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			if e.Name() != "root" {
				t.Fatalf("extraction wrote %q outside its root", e.Name())
			}
		}
	})
}
