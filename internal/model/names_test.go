package model

import (
	"errors"
	"regexp"
	"strings"
	"testing"
)

// nameRE is an independent statement of the DNS-label rule.
var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

func TestValidateName(t *testing.T) {
	good := []string{"a", "a1", "1", "web-1", "x-y-z", strings.Repeat("a", 63), "0-0"}
	for _, n := range good {
		if err := ValidateName(n); err != nil {
			t.Errorf("ValidateName(%q) = %v, want nil", n, err)
		}
	}
	bad := map[string]string{
		"":                       "empty",
		"-bad":                   "starts or ends",
		"bad-":                   "starts or ends",
		"-":                      "starts or ends",
		"Web":                    "'W' at position 1",
		"a_b":                    "'_' at position 2",
		"a.vm":                   "'.' at position 2",
		"a b":                    "' ' at position 2",
		"café":                   "'é' at position 4",
		strings.Repeat("a", 64):  "64 characters",
		strings.Repeat("a", 200): "200 characters",
	}
	for n, want := range bad {
		err := ValidateName(n)
		if err == nil {
			t.Errorf("ValidateName(%q) = nil, want error", n)
			continue
		}
		if !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidateName(%q) error %v does not wrap ErrInvalidName", n, err)
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("ValidateName(%q) = %q, want it to mention %q", n, err, want)
		}
		if !strings.Contains(err.Error(), NameRule) {
			t.Errorf("ValidateName(%q) = %q, want it to show the rule", n, err)
		}
	}
}

func FuzzValidateName(f *testing.F) {
	for _, s := range []string{"", "a", "-a", "a-", "ab-cd", "A", "é", strings.Repeat("z", 63), strings.Repeat("z", 64), "a\x00b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		err := ValidateName(name)
		want := nameRE.MatchString(name)
		if (err == nil) != want {
			t.Fatalf("ValidateName(%q) = %v, reference rule says valid=%v", name, err, want)
		}
		if err != nil {
			if !errors.Is(err, ErrInvalidName) {
				t.Fatalf("error %v does not wrap ErrInvalidName", err)
			}
			if !strings.Contains(err.Error(), NameRule) {
				t.Fatalf("error %q does not show the naming rule", err)
			}
			if len(err.Error()) > 800 { // bounded whatever the input length
				t.Fatalf("error for a %d-byte name is %d bytes long", len(name), len(err.Error()))
			}
		}
	})
}

func TestGenerateName(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 200; i++ {
		n := GenerateName(nil)
		if err := ValidateName(n); err != nil {
			t.Fatalf("GenerateName produced invalid name %q: %v", n, err)
		}
		if strings.Count(n, "-") != 1 {
			t.Fatalf("GenerateName(nil) = %q, want adjective-noun", n)
		}
		seen[n] = true
	}
	if len(seen) < 50 {
		t.Fatalf("200 generated names gave only %d distinct values", len(seen))
	}
}

func TestGenerateNameAvoidsTaken(t *testing.T) {
	// Every plain adjective-noun pair is taken: the generator must fall back
	// to a numbered name that is still valid and not taken.
	var asked []string
	taken := func(n string) bool {
		asked = append(asked, n)
		return strings.Count(n, "-") == 1
	}
	n := GenerateName(taken)
	if taken(n) {
		t.Fatalf("GenerateName returned taken name %q", n)
	}
	if err := ValidateName(n); err != nil {
		t.Fatalf("fallback name %q invalid: %v", n, err)
	}
	if !regexp.MustCompile(`^[a-z]+-[a-z]+-[0-9]+$`).MatchString(n) {
		t.Fatalf("fallback name %q, want adjective-noun-N", n)
	}
	if len(asked) < 11 {
		t.Fatalf("generator asked only %d names before falling back to a suffix", len(asked))
	}

	// A specific set of taken names is never returned.
	blocked := map[string]bool{}
	for _, a := range adjectives {
		for _, b := range nouns[:len(nouns)-1] {
			blocked[a+"-"+b] = true
		}
	}
	for i := 0; i < 50; i++ {
		n := GenerateName(func(s string) bool { return blocked[s] })
		if blocked[n] {
			t.Fatalf("GenerateName returned blocked name %q", n)
		}
	}
}

func TestWordListsMakeValidNames(t *testing.T) {
	for _, a := range adjectives {
		for _, b := range nouns {
			if n := a + "-" + b + "-99999"; ValidateName(n) != nil {
				t.Fatalf("word pair %q cannot form a valid name", n)
			}
		}
	}
}
