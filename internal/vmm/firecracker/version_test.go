package firecracker

import (
	"errors"
	"testing"
)

func TestParseVersion(t *testing.T) {
	cases := map[string]Version{
		"1.14.1": {1, 14, 1},
		"v1.5.0": {1, 5, 0},
		"Firecracker v1.16.1\n\nSupported snapshot data format versions: v1.0.0 v2.0.0\n": {1, 16, 1},
		"Firecracker v1.15.0-dev\n": {1, 15, 0},
		"1.10.2+abc":                {1, 10, 2},
	}
	for in, want := range cases {
		got, err := ParseVersion(in)
		if err != nil || got != want {
			t.Errorf("%q: got %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "Firecracker", "v1.2", "1.2.x", "11.22.33.44"} {
		if v, err := ParseVersion(bad); !errors.Is(err, ErrBadVersion) {
			t.Errorf("%q: got %v, %v; want ErrBadVersion", bad, v, err)
		}
	}
}

func TestCheckVersionAndFeatureLevel(t *testing.T) {
	if _, err := CheckVersion(Version{1, 4, 9}); !errors.Is(err, ErrUnsupportedVersion) {
		t.Errorf("1.4.9: %v", err)
	}
	for _, ok := range []Version{{1, 5, 0}, {1, 14, 1}, {1, 16, 1}} {
		if warn, err := CheckVersion(ok); err != nil || warn != "" {
			t.Errorf("%v: %q %v", ok, warn, err)
		}
	}
	if warn, err := CheckVersion(Version{1, 17, 0}); err != nil || warn == "" {
		t.Errorf("1.17.0: want a warning, got %q %v", warn, err)
	}
	for v, want := range map[Version]Version{
		{1, 5, 0}: MinVersion, {1, 10, 0}: MinVersion, {1, 14, 1}: V1_14_1, {1, 15, 3}: V1_14_1, {1, 16, 1}: NewestTested, {2, 0, 0}: NewestTested, {1, 14, 0}: MinVersion,
	} {
		if got := FeatureLevel(v); got != want {
			t.Errorf("FeatureLevel(%v) = %v, want %v", v, got, want)
		}
	}
	if (Version{1, 9, 9}).Compare(Version{1, 10, 0}) != -1 || !(Version{2, 0, 0}).AtLeast(Version{1, 99, 99}) {
		t.Error("compare")
	}
}

func FuzzParseVersion(f *testing.F) {
	f.Add("Firecracker v1.14.1")
	f.Add("v0.0.0-")
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseVersion(s)
		if err == nil && (v.Major < 0 || v.Minor < 0 || v.Patch < 0) {
			t.Fatalf("negative version %v from %q", v, s)
		}
	})
}
