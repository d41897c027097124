package firecracker

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
)

// Version is a Firecracker release number.
type Version struct{ Major, Minor, Patch int }

// Known versions: the oldest supported release and the spec'd releases the
// driver is tested against (shared/firecracker-api).
var (
	MinVersion     = Version{1, 5, 0}
	V1_14_1        = Version{1, 14, 1}
	V1_16_1        = Version{1, 16, 1}
	NewestTested   = V1_16_1
	TestedVersions = []Version{MinVersion, V1_14_1, NewestTested}
)

func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Patch) }

// Compare returns -1, 0 or 1.
func (v Version) Compare(o Version) int {
	for _, d := range [3]int{v.Major - o.Major, v.Minor - o.Minor, v.Patch - o.Patch} {
		if d < 0 {
			return -1
		}
		if d > 0 {
			return 1
		}
	}
	return 0
}

// AtLeast reports v >= o.
func (v Version) AtLeast(o Version) bool { return v.Compare(o) >= 0 }

// IsZero reports an unknown version.
func (v Version) IsZero() bool { return v == Version{} }

var versionPattern = regexp.MustCompile(`(?:^|[^0-9.])v?(\d{1,4})\.(\d{1,4})\.(\d{1,6})(?:[-+][0-9A-Za-z.-]+)?(?:$|[^0-9.])`)

// ErrBadVersion is returned for text that carries no Firecracker version.
var ErrBadVersion = errors.New("no firecracker version found")

// ParseVersion reads the first x.y.z version in s: "1.14.1", "v1.14.1",
// "Firecracker v1.14.1" (the first line of `firecracker --version`) and
// pre-release suffixes ("1.15.0-dev") all parse.
func ParseVersion(s string) (Version, error) {
	m := versionPattern.FindStringSubmatch(s)
	if m == nil {
		return Version{}, fmt.Errorf("%w in %q", ErrBadVersion, truncate(s, 80))
	}
	var v Version
	v.Major, _ = strconv.Atoi(m[1])
	v.Minor, _ = strconv.Atoi(m[2])
	v.Patch, _ = strconv.Atoi(m[3])
	return v, nil
}

// ErrUnsupportedVersion is returned for releases older than MinVersion.
var ErrUnsupportedVersion = errors.New("unsupported firecracker version")

// CheckVersion returns an error for versions older than MinVersion and a
// warning (non-empty) for versions newer than NewestTested.
func CheckVersion(v Version) (warning string, err error) {
	if !v.AtLeast(MinVersion) {
		return "", fmt.Errorf("%w %s: banger needs firecracker >= %s (install a newer release)", ErrUnsupportedVersion, v, MinVersion)
	}
	if v.Compare(NewestTested) > 0 {
		return fmt.Sprintf("firecracker %s is newer than the newest release banger is tested against (%s); it should work, report problems", v, NewestTested), nil
	}
	return "", nil
}

// FeatureLevel is the newest tested release not newer than v: the request
// shapes of that release's API spec are used for v.
func FeatureLevel(v Version) Version {
	level := MinVersion
	for _, t := range TestedVersions {
		if v.AtLeast(t) {
			level = t
		}
	}
	return level
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
