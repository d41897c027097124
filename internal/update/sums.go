package update

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"path"
	"slices"
	"strings"
)

// Sums is a parsed SHA256SUMS file: file name → lowercase hex digest.
type Sums map[string]string

// ParseSums parses the output of `sha256sum` (text "  " or binary " *"
// separator). Every line must be well formed; names must be plain file
// names, each listed once.
func ParseSums(data []byte) (Sums, error) {
	if len(data) > MaxSumsBytes {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrBadSums, MaxSumsBytes)
	}
	s := Sums{}
	for i, line := range bytes.Split(data, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		l := string(line)
		if len(l) < 64+3 || (l[64:66] != "  " && l[64:66] != " *") {
			return nil, fmt.Errorf("%w: line %d is not \"<sha256>  <file>\"", ErrBadSums, i+1)
		}
		sum, name := l[:64], l[66:]
		if _, err := hex.DecodeString(sum); err != nil || strings.ToLower(sum) != sum {
			return nil, fmt.Errorf("%w: line %d: %q is not a lowercase hex sha256", ErrBadSums, i+1, sum)
		}
		if name == "" || strings.Contains(name, "/") || name != path.Base(name) || name == "." || name == ".." || strings.ContainsFunc(name, func(r rune) bool { return r < 0x20 || r == 0x7f || r == '\\' }) {
			return nil, fmt.Errorf("%w: line %d: %q is not a plain file name", ErrBadSums, i+1, name)
		}
		if _, dup := s[name]; dup {
			return nil, fmt.Errorf("%w: %s is listed twice", ErrBadSums, name)
		}
		s[name] = sum
	}
	if len(s) == 0 {
		return nil, fmt.Errorf("%w: no entries", ErrBadSums)
	}
	return s, nil
}

// Lookup returns the digest listed for name, or an error wrapping
// ErrNotListed.
func (s Sums) Lookup(name string) (string, error) {
	if sum, ok := s[name]; ok {
		return sum, nil
	}
	return "", fmt.Errorf("%w: the signed SHA256SUMS does not list %s", ErrNotListed, name)
}

// Format renders sums as a SHA256SUMS file, sorted by name.
func (s Sums) Format() []byte {
	names := make([]string, 0, len(s))
	for n := range s {
		names = append(names, n)
	}
	slices.Sort(names)
	var b bytes.Buffer
	for _, n := range names {
		fmt.Fprintf(&b, "%s  %s\n", s[n], n)
	}
	return b.Bytes()
}
