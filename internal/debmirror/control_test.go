package debmirror

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseControl(t *testing.T) {
	in := "Package: a\nDescription: short\n long line\n .\n more\n\n\n# comment\npackage: b\nVersion: 1\n"
	var got []Paragraph
	if err := ParseControl(strings.NewReader(in), func(p Paragraph) error { got = append(got, p); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("got %d paragraphs, want 2: %v", len(got), got)
	}
	if got[0].Get("description") != "short\nlong line\n.\nmore" {
		t.Errorf("continuation: %q", got[0].Get("Description"))
	}
	if got[1].Get("Package") != "b" || got[1].Get("Version") != "1" {
		t.Errorf("second paragraph: %v", got[1])
	}
	for _, bad := range []string{" starts with space\n", "no colon here\n", "Bad Name: x\n"} {
		if err := ParseControl(strings.NewReader(bad), func(Paragraph) error { return nil }); err == nil {
			t.Errorf("ParseControl(%q) accepted malformed input", bad)
		}
	}
}

func TestParseRelations(t *testing.T) {
	got := ParseRelations("linux-image-6.1.0-50-cloud-amd64 (= 6.1.176-1), kmod, initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, libc6:any (>> 2.3) [amd64], foo <!nocheck>,")
	want := [][]Relation{
		{{Name: "linux-image-6.1.0-50-cloud-amd64", Op: "=", Version: "6.1.176-1"}},
		{{Name: "kmod"}},
		{{Name: "initramfs-tools", Op: ">=", Version: "0.120+deb8u2"}, {Name: "linux-initramfs-tool"}},
		{{Name: "libc6", Op: ">>", Version: "2.3"}},
		{{Name: "foo"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ParseRelations =\n%+v\nwant\n%+v", got, want)
	}
}

func TestCompareVersions(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		want int
	}{
		{"1.0", "1.0", 0},
		{"1.0", "1.1", -1},
		{"1.10", "1.9", 1},
		{"1.0~rc1", "1.0", -1},
		{"1.0~~", "1.0~", -1},
		{"1:0.1", "2.0", 1},
		{"6.1.176-1", "6.1.158-1", 1},
		{"1.35.0-4+deb12u1+b1", "1.35.0-4+deb12u1", 1},
		{"1.0-1", "1.0-1a", -1},
		{"1.0a", "1.0+", -1}, // letters sort before non-letters
		{"0001", "1", 0},
		{"1.0-1", "1.0", 1},
	} {
		if got := CompareVersions(tt.a, tt.b); got != tt.want {
			t.Errorf("CompareVersions(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
		if got := CompareVersions(tt.b, tt.a); got != -tt.want {
			t.Errorf("CompareVersions(%q, %q) = %d, want %d", tt.b, tt.a, got, -tt.want)
		}
	}
}

func FuzzParseControl(f *testing.F) {
	f.Add("Package: a\nDepends: b (>= 1) | c, d\n\nPackage: e\n x\n")
	f.Add("SHA256:\n " + strings.Repeat("a", 64) + " 12 main/x\n")
	f.Fuzz(func(t *testing.T, in string) {
		_ = ParseControl(strings.NewReader(in), func(p Paragraph) error {
			_ = ParseRelations(p.Get("Depends"))
			_, _ = packageFromParagraph(p)
			return nil
		})
		_, _ = ParseRelease([]byte(in))
		idx := map[string]*Package{}
		if err := parsePackagesInto(strings.NewReader(in), idx); err == nil {
			for name, p := range idx {
				if name != p.Name || len(p.SHA256) != 64 {
					t.Fatalf("index entry %q = %+v", name, p)
				}
			}
		}
	})
}

func FuzzCompareVersions(f *testing.F) {
	f.Add("1:2.0~rc1-3", "2.0")
	f.Add("1.0", "1.0a")
	f.Fuzz(func(t *testing.T, a, b string) {
		ab, ba := CompareVersions(a, b), CompareVersions(b, a)
		if ab != -ba {
			t.Fatalf("not antisymmetric: cmp(%q,%q)=%d cmp(%q,%q)=%d", a, b, ab, b, a, ba)
		}
		if CompareVersions(a, a) != 0 {
			t.Fatalf("cmp(%q,%q) != 0", a, a)
		}
	})
}

func FuzzParseRelease(f *testing.F) {
	sum := strings.Repeat("ab", 32)
	f.Add("Suite: stable\nCodename: bookworm\nDate: Sat, 10 Jun 2023 08:51:46 UTC\nAcquire-By-Hash: yes\nSHA256:\n " + sum + " 1234 main/binary-amd64/Packages.xz\n " + sum + " 0 main/binary-amd64/Release\n")
	f.Add("Valid-Until: Sat, 17 Jun 2023 08:51:46 UTC\nSHA256:\n " + sum + " 12 main/x\n")
	f.Add("SHA256:\n " + sum + " -1 main/x\n")
	f.Add("SHA256:\n zz 12 main/x\n")
	f.Add("Suite: x\n")
	f.Add("")
	f.Fuzz(func(t *testing.T, in string) {
		rel, err := ParseRelease([]byte(in))
		if err != nil {
			if rel != nil {
				t.Fatal("a Release with an error")
			}
			return
		}
		if len(rel.Files) == 0 {
			t.Fatal("accepted a Release without files")
		}
		for name, fh := range rel.Files {
			if name == "" || len(fh.SHA256) != 64 || fh.SHA256 != strings.ToLower(fh.SHA256) || fh.Size < 0 {
				t.Fatalf("file %q: %+v", name, fh)
			}
		}
	})
}

func FuzzParseRelations(f *testing.F) {
	f.Add("libc6 (>= 2.34), libssl3 (>= 3.0.0) | libssl1.1, debconf [amd64] <!nocheck>")
	f.Add("a:any (= 1:2.0-1)")
	f.Add(", | ,(>=")
	f.Fuzz(func(t *testing.T, in string) {
		for _, group := range ParseRelations(in) {
			if len(group) == 0 {
				t.Fatalf("empty alternative group from %q", in)
			}
			for _, r := range group {
				if r.Name == "" || strings.ContainsAny(r.Name, ",|(") {
					t.Fatalf("relation name %q from %q", r.Name, in)
				}
				switch r.Op {
				case "", "=", ">=", "<=", ">>", "<<", ">", "<": // > and < are Debian's obsolete forms
				default:
					t.Fatalf("relation op %q from %q", r.Op, in)
				}
			}
		}
	})
}

func TestParseRelationsSkipsNamelessAlternatives(t *testing.T) {
	got := ParseRelations("(>= 1) | a, :any, b (<< 2)")
	if len(got) != 2 || len(got[0]) != 1 || got[0][0].Name != "a" || got[1][0] != (Relation{Name: "b", Op: "<<", Version: "2"}) {
		t.Fatalf("got %+v", got)
	}
}
