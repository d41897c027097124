package model

import (
	"errors"
	"strings"
	"testing"
)

func TestParseSizeMiB(t *testing.T) {
	good := map[string]int64{
		"2048":     2048,
		"512M":     512,
		"512m":     512,
		"512MB":    512,
		"512MiB":   512,
		"512mib":   512,
		"8G":       8 * 1024,
		"8g":       8 * 1024,
		"8GB":      8 * 1024,
		"8GiB":     8 * 1024,
		" 8G ":     8 * 1024,
		"1T":       1024 * 1024,
		"2TiB":     2 * 1024 * 1024,
		"1048576K": 1024,
		"2048KiB":  2,
		"1":        1,
	}
	for in, want := range good {
		got, err := ParseSizeMiB(in)
		if err != nil || got != want {
			t.Errorf("ParseSizeMiB(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	bad := map[string]string{
		"":                     "empty",
		"   ":                  "empty",
		"0":                    "positive",
		"0G":                   "positive",
		"-1G":                  "positive",
		"-5":                   "positive",
		"abc":                  "use e.g.",
		"8X":                   "use e.g.",
		"1.5G":                 "use e.g.",
		"G":                    "use e.g.",
		"8B":                   "use e.g.", // bytes are not a size banger accepts
		"8iB":                  "use e.g.",
		"8GG":                  "use e.g.",
		"100K":                 "whole number of MiB",
		"0K":                   "whole number of MiB",
		"99999999T":            "too large",
		"99999999999999999999": "use e.g.",
	}
	for in, want := range bad {
		got, err := ParseSizeMiB(in)
		if err == nil {
			t.Errorf("ParseSizeMiB(%q) = %d, nil; want error", in, got)
			continue
		}
		if !errors.Is(err, ErrInvalidSize) {
			t.Errorf("ParseSizeMiB(%q) error %v does not wrap ErrInvalidSize", in, err)
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("ParseSizeMiB(%q) = %q, want it to mention %q", in, err, want)
		}
	}
}

func TestFormatMiB(t *testing.T) {
	cases := map[int64]string{
		1: "1M", 512: "512M", 1024: "1G", 1536: "1536M", 8192: "8G",
		1024 * 1024: "1T", 3 * 1024 * 1024: "3T", 1024*1024 + 1024: "1025G",
	}
	for in, want := range cases {
		if got := FormatMiB(in); got != want {
			t.Errorf("FormatMiB(%d) = %q, want %q", in, got, want)
		}
	}
}

func FuzzParseSizeMiB(f *testing.F) {
	for _, s := range []string{"8G", "512M", "2048", "1T", "4096K", "0", "-1", "8GiB", "8B", "1.5G", "", " 9 g ", "1099511627776"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSizeMiB(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidSize) {
				t.Fatalf("ParseSizeMiB(%q) error %v does not wrap ErrInvalidSize", s, err)
			}
			if n != 0 {
				t.Fatalf("ParseSizeMiB(%q) returned %d with an error", s, n)
			}
			return
		}
		if n <= 0 || n > 1<<40 {
			t.Fatalf("ParseSizeMiB(%q) = %d, out of (0, 2^40]", s, n)
		}
		// The canonical rendering parses back to the same value.
		back, err := ParseSizeMiB(FormatMiB(n))
		if err != nil || back != n {
			t.Fatalf("FormatMiB(%d) = %q parses to %d, %v", n, FormatMiB(n), back, err)
		}
	})
}
