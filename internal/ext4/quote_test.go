package ext4

import (
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
)

// ssParse is a Go port of libss's ss_parse (e2fsprogs lib/ss/parse.c), the
// parser debugfs applies to every command line. It is the oracle for the
// quoting tests.
func ssParse(line string) ([]string, bool) {
	const (
		whitespace = iota
		token
		quoted
	)
	mode := whitespace
	var argv []string
	var cur []byte
	i := 0
	for {
		var c byte
		if i < len(line) {
			c = line[i]
		}
		switch mode {
		case whitespace:
			if i >= len(line) || c == 0 {
				return argv, true
			}
			if c == ' ' || c == '\t' {
				i++
				continue
			}
			cur = cur[:0]
			if c == '"' {
				mode = quoted
				i++
			} else {
				mode = token
			}
		case token:
			if i >= len(line) || c == 0 {
				return append(argv, string(cur)), true
			}
			if c == ' ' || c == '\t' {
				argv = append(argv, string(cur))
				mode = whitespace
				i++
			} else if c == '"' {
				mode = quoted
				i++
			} else {
				cur = append(cur, c)
				i++
			}
		case quoted:
			if i >= len(line) || c == 0 {
				return nil, false // unbalanced quotes
			}
			if c == '"' {
				i++
				if i < len(line) && line[i] == '"' {
					cur = append(cur, '"')
					i++
				} else {
					mode = token
				}
			} else {
				cur = append(cur, c)
				i++
			}
		}
	}
}

func TestQuoteArgRoundTrip(t *testing.T) {
	for _, s := range []string{"", "a", "with space", `q"uote`, `""`, `"`, "tab\there", "ünïcødé ✓", "-rf", "<12>", `a\b`, "!sh", "#x"} {
		q, err := quoteArg(s)
		if err != nil {
			t.Fatalf("quoteArg(%q): %v", s, err)
		}
		argv, ok := ssParse("cmd " + q + " tail")
		if !ok || !slices.Equal(argv, []string{"cmd", s, "tail"}) {
			t.Errorf("quoteArg(%q) = %s parses as %q (ok=%v)", s, q, argv, ok)
		}
	}
}

func TestQuoteArgRefuses(t *testing.T) {
	for _, s := range []string{"a\nb", "a\rb", "a\x00b", strings.Repeat("x", maxPathLen+1)} {
		if _, err := quoteArg(s); !errors.Is(err, ErrUnrepresentable) {
			t.Errorf("quoteArg(%q) error = %v, want ErrUnrepresentable", s, err)
		}
	}
}

func TestCheckPath(t *testing.T) {
	good := []string{"/", "/etc", "/a b/c\"d", "/" + strings.Repeat("n", 255)}
	bad := []string{"", "etc", "/etc/", "/a/../b", "/a//b", "/./a", "/a\nb", "/" + strings.Repeat("n", 256)}
	for _, p := range good {
		if err := CheckPath(p); err != nil {
			t.Errorf("CheckPath(%q) = %v, want nil", p, err)
		}
	}
	for _, p := range bad {
		if err := CheckPath(p); err == nil {
			t.Errorf("CheckPath(%q) = nil, want error", p)
		}
	}
}

func FuzzQuoteArg(f *testing.F) {
	for _, s := range []string{"a", `x"y`, "a\nb", `"""`, " lead", "trail ", "\t"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		q, err := quoteArg(s)
		if err != nil {
			if !strings.ContainsAny(s, "\n\r\x00") && len(s) <= maxPathLen {
				t.Fatalf("quoteArg(%q) refused a representable string: %v", s, err)
			}
			return
		}
		if strings.ContainsAny(q, "\n\r\x00") {
			t.Fatalf("quoted form %q contains a line break", q)
		}
		argv, ok := ssParse("stat " + q)
		if !ok || len(argv) != 2 || argv[1] != s {
			t.Fatalf("quoteArg(%q) = %s parses as %q (ok=%v)", s, q, argv, ok)
		}
	})
}

func FuzzCheckPath(f *testing.F) {
	for _, s := range []string{"/", "/etc/x", "/a/../b", "/a\n", "rel"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		if CheckPath(p) != nil {
			return
		}
		// Every accepted path must quote and parse back as itself.
		q, err := quoteArg(p)
		if err != nil {
			t.Fatalf("CheckPath accepted %q but quoteArg refused it: %v", p, err)
		}
		if argv, ok := ssParse("rm " + q); !ok || len(argv) != 2 || argv[1] != p {
			t.Fatalf("%q parses as %q", p, argv)
		}
	})
}

const statRegular = `Inode: 17   Type: regular    Mode:  04755   Flags: 0x80000
Generation: 0    Version: 0x00000000:00000000
User: 100000   Group:    42   Project:     0   Size: 5
File ACL: 0
Links: 2   Blockcount: 2
Fragment:  Address: 0    Number: 0    Size: 0
 ctime: 0x6b07cafe:00000000 -- Thu Nov 26 06:00:30 2026
Size of extra inode fields: 32
EXTENTS:
(0):4389
`

const statSymlink = `Inode: 18   Type: symlink    Mode:  0777   Flags: 0x0
Generation: 0    Version: 0x00000000:00000000
User:     0   Group:     0   Project:     0   Size: 18
File ACL: 0
Links: 1   Blockcount: 0
Fragment:  Address: 0    Number: 0    Size: 0
Size of extra inode fields: 32
Fast link dest: "/target with space"
`

func TestParseStat(t *testing.T) {
	fi, err := parseStat("/x", []byte(statRegular))
	if err != nil {
		t.Fatal(err)
	}
	want := FileInfo{Path: "/x", Inode: 17, Mode: 0o755 | os.ModeSetuid, UID: 100000, GID: 42, Size: 5, Links: 2}
	if fi != want {
		t.Errorf("regular: got %+v want %+v", fi, want)
	}
	fi, err = parseStat("/l", []byte(statSymlink))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode != os.ModeSymlink|0o777 || fi.Target != "/target with space" || fi.Size != 18 {
		t.Errorf("symlink: got %+v", fi)
	}
	if _, err := parseStat("/y", []byte("garbage")); err == nil {
		t.Error("garbage stat output parsed without error")
	}
	dev := strings.Replace(statRegular, "Type: regular", "Type: character special", 1)
	if fi, err := parseStat("/d", []byte(dev)); err != nil || fi.Mode&os.ModeCharDevice == 0 {
		t.Errorf("char device: %+v %v", fi, err)
	}
}

func FuzzParseStat(f *testing.F) {
	f.Add(statRegular)
	f.Add(statSymlink)
	f.Add(strings.Replace(statRegular, "Type: regular", "Type: block special", 1))
	f.Add(strings.Replace(statRegular, "Type: regular", "Type: bad type", 1))
	f.Add("Inode: x Type: directory Mode: 9999\nUser: -1 Size: -5\nFast link dest: \"")
	f.Add("Inode:")
	f.Fuzz(func(t *testing.T, out string) {
		fi, err := parseStat("/p", []byte(out))
		if err != nil {
			if !strings.HasPrefix(err.Error(), "ext4: ") {
				t.Fatalf("error without context: %v", err)
			}
			return
		}
		if !strings.HasPrefix(out, "Inode:") || fi.Path != "/p" {
			t.Fatalf("accepted %q as %+v", out, fi)
		}
		if fi.Mode.Perm() != fi.Mode.Perm()&0o777 || fi.kind() == kindMissing {
			t.Fatalf("mode %v kind %v from %q", fi.Mode, fi.kind(), out)
		}
	})
}
