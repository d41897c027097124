package model

import (
	"crypto/rand"
	"errors"
	"fmt"
	"math/big"
	"strconv"
	"strings"
)

// NameRule is shown to users whenever a VM name is rejected.
const NameRule = "names are DNS labels: 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'"

// ErrInvalidName is wrapped by ValidateName errors.
var ErrInvalidName = errors.New("invalid name")

// ValidateName checks that name is a DNS label usable as <name>.vm.
func ValidateName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: empty name (%s)", ErrInvalidName, NameRule)
	}
	if len(name) > 63 {
		return fmt.Errorf("%w: %q is %d characters long (%s)", ErrInvalidName, truncate(name), len(name), NameRule)
	}
	pos := 0
	for _, c := range name {
		pos++
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("%w: %q has %q at position %d (%s)", ErrInvalidName, truncate(name), c, pos, NameRule)
		}
	}
	if name[0] == '-' || name[len(name)-1] == '-' {
		return fmt.Errorf("%w: %q starts or ends with '-' (%s)", ErrInvalidName, name, NameRule)
	}
	return nil
}

func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

var adjectives = []string{
	"brave", "calm", "clever", "cosmic", "crisp", "daring", "eager", "fancy", "fluffy", "gentle",
	"happy", "jolly", "keen", "lively", "lucky", "mellow", "nimble", "plucky", "quick", "quiet",
	"rapid", "shiny", "silent", "snappy", "sunny", "swift", "tidy", "witty", "zesty", "bold",
}

var nouns = []string{
	"otter", "falcon", "badger", "comet", "maple", "pebble", "walrus", "panda", "heron", "lynx",
	"orca", "quokka", "raven", "tiger", "yak", "koala", "gecko", "bison", "ferret", "puffin",
	"cedar", "meteor", "nebula", "harbor", "canyon", "glacier", "lagoon", "summit", "willow", "ember",
}

// GenerateName returns a random adjective-noun name for which taken returns
// false, adding a numeric suffix after a few collisions.
func GenerateName(taken func(string) bool) string {
	pick := func(list []string) string {
		n, err := rand.Int(rand.Reader, big.NewInt(int64(len(list))))
		if err != nil {
			return list[0]
		}
		return list[n.Int64()]
	}
	for i := 0; ; i++ {
		name := pick(adjectives) + "-" + pick(nouns)
		if i >= 10 {
			name += "-" + strconv.Itoa(i)
		}
		if taken == nil || !taken(name) {
			return name
		}
	}
}

// ErrInvalidSize is wrapped by ParseSizeMiB errors.
var ErrInvalidSize = errors.New("invalid size")

// ParseSizeMiB parses sizes such as "8G", "8GiB", "8GB", "512M", "1T" or a
// bare number of MiB ("2048") and returns MiB. Units are binary and case
// insensitive; "K" sizes must be whole MiB. Zero, negative, fractional and
// byte sizes ("8B") are rejected.
func ParseSizeMiB(s string) (int64, error) {
	orig := s
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, fmt.Errorf("%w: empty (use e.g. 8G, 512M or 2048 for MiB)", ErrInvalidSize)
	}
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return 0, fmt.Errorf("%w: %q (use e.g. 8G, 512M or 2048 for MiB)", ErrInvalidSize, orig)
		}
	}
	num := strings.ToUpper(s)
	// An optional "B" or "iB" is only meaningful after a unit letter.
	if unit := strings.TrimSuffix(strings.TrimSuffix(num, "IB"), "B"); unit != num {
		if unit == "" || !strings.ContainsRune("KMGT", rune(unit[len(unit)-1])) {
			return 0, fmt.Errorf("%w: %q (use e.g. 8G, 512M or 2048 for MiB)", ErrInvalidSize, orig)
		}
		num = unit
	}
	mult := int64(1)
	switch {
	case strings.HasSuffix(num, "K"):
		return parseKiB(orig, strings.TrimSuffix(num, "K"))
	case strings.HasSuffix(num, "M"):
		num = strings.TrimSuffix(num, "M")
	case strings.HasSuffix(num, "G"):
		mult, num = 1024, strings.TrimSuffix(num, "G")
	case strings.HasSuffix(num, "T"):
		mult, num = 1024*1024, strings.TrimSuffix(num, "T")
	}
	n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: %q (use e.g. 8G, 512M or 2048 for MiB)", ErrInvalidSize, orig)
	}
	if n <= 0 {
		return 0, fmt.Errorf("%w: %q must be positive", ErrInvalidSize, orig)
	}
	if n > (1<<40)/mult {
		return 0, fmt.Errorf("%w: %q is too large", ErrInvalidSize, orig)
	}
	return n * mult, nil
}

func parseKiB(orig, num string) (int64, error) {
	n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: %q (use e.g. 8G, 512M or 2048 for MiB)", ErrInvalidSize, orig)
	}
	if n <= 0 || n%1024 != 0 {
		return 0, fmt.Errorf("%w: %q must be a positive whole number of MiB", ErrInvalidSize, orig)
	}
	return n / 1024, nil
}

// FormatMiB renders MiB as a short human size ("8G", "512M").
func FormatMiB(mib int64) string {
	switch {
	case mib >= 1024*1024 && mib%(1024*1024) == 0:
		return fmt.Sprintf("%dT", mib/(1024*1024))
	case mib >= 1024 && mib%1024 == 0:
		return fmt.Sprintf("%dG", mib/1024)
	default:
		return fmt.Sprintf("%dM", mib)
	}
}

// DNSDomain is the zone VM names live in: NAME.vm resolves to the VM's
// address (banger's DNS server, the ssh config's Host *.vm, the resolver
// routing). The one home of the value.
const DNSDomain = "vm"

// VM size limits, the one home of these values (CLI, config, daemon and
// `vm set` all check against them).
const (
	MaxVCPU      = 64
	MinMemoryMiB = 128
	MinDiskMiB   = 64
)

// ValidateVCPU checks a vCPU count: 1 to MaxVCPU.
func ValidateVCPU(n int) error {
	if n < 1 || n > MaxVCPU {
		return fmt.Errorf("vcpu must be between 1 and %d, got %d: %w", MaxVCPU, n, ErrInvalidSize)
	}
	return nil
}

// ValidateMemoryMiB checks a memory size: at least MinMemoryMiB.
func ValidateMemoryMiB(n int64) error {
	if n < MinMemoryMiB {
		return fmt.Errorf("memory must be at least %s, got %s: %w", FormatMiB(MinMemoryMiB), FormatMiB(n), ErrInvalidSize)
	}
	return nil
}

// ValidateDiskMiB checks a /root disk size: at least MinDiskMiB.
func ValidateDiskMiB(n int64) error {
	if n < MinDiskMiB {
		return fmt.Errorf("disk size must be at least %s, got %s: %w", FormatMiB(MinDiskMiB), FormatMiB(n), ErrInvalidSize)
	}
	return nil
}
