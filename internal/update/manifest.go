package update

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ManifestSchema is the manifest format version this build reads.
const ManifestSchema = 1

// Limits on what the updater reads from the network.
const (
	MaxManifestBytes  = 1 << 20   // manifest.json
	MaxSumsBytes      = 64 << 10  // SHA256SUMS
	MaxSignatureBytes = 4 << 10   // SHA256SUMS.sig
	MaxTarballBytes   = 512 << 20 // the release tarball
	MaxBinaryBytes    = 256 << 20 // one binary inside it
)

// Manifest is a release channel's manifest.json. It is not signed: it
// only says where a release's files are. Everything it points at is
// verified against the signed SHA256SUMS, and the tarball's name (which
// carries the version) must be listed there, so a hostile manifest can
// withhold releases or offer an older signed one, never different bytes.
type Manifest struct {
	Schema   int       `json:"schema"`
	Latest   string    `json:"latest"`
	Releases []Release `json:"releases"`
}

// Release is one version in the manifest. File references are relative
// to the manifest's URL.
type Release struct {
	Version    string    `json:"version"`
	Tarball    string    `json:"tarball"`    // e.g. v1.2.3/banger_v1.2.3_linux_amd64.tar.gz
	Sums       string    `json:"sha256sums"` // e.g. v1.2.3/SHA256SUMS
	Signature  string    `json:"signature"`  // e.g. v1.2.3/SHA256SUMS.sig
	ReleasedAt time.Time `json:"released_at"`
}

var versionRE = regexp.MustCompile(`^v(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})(-[0-9A-Za-z.-]{1,64})?$`)

// ValidVersion reports whether v is a release version: vMAJOR.MINOR.PATCH
// with an optional -prerelease suffix.
func ValidVersion(v string) bool { return versionRE.MatchString(v) }

// CompareVersions orders two valid versions like semver (a prerelease
// sorts before its release; prereleases compare as strings). It returns
// -1, 0 or 1.
func CompareVersions(a, b string) int {
	pa, pb := versionRE.FindStringSubmatch(a), versionRE.FindStringSubmatch(b)
	if pa == nil || pb == nil {
		return strings.Compare(a, b)
	}
	for i := 1; i <= 3; i++ {
		x, _ := strconv.Atoi(pa[i])
		y, _ := strconv.Atoi(pb[i])
		if x != y {
			if x < y {
				return -1
			}
			return 1
		}
	}
	switch {
	case pa[4] == pb[4]:
		return 0
	case pa[4] == "":
		return 1
	case pb[4] == "":
		return -1
	}
	return strings.Compare(pa[4], pb[4])
}

// TarballName is the release tarball's file name for a version; it is
// what SHA256SUMS must list.
func TarballName(version, goos, goarch string) string {
	return fmt.Sprintf("banger_%s_%s_%s.tar.gz", version, goos, goarch)
}

// ParseManifest decodes and validates manifest.json. Unknown fields are
// rejected (a newer schema must bump Schema).
func ParseManifest(data []byte) (*Manifest, error) {
	if len(data) > MaxManifestBytes {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrBadManifest, MaxManifestBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("%w: not valid JSON: %v", ErrBadManifest, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: trailing data after the JSON object", ErrBadManifest)
	}
	if m.Schema != ManifestSchema {
		return nil, fmt.Errorf("%w: schema %d, this banger reads schema %d (update banger by hand)", ErrBadManifest, m.Schema, ManifestSchema)
	}
	if len(m.Releases) == 0 {
		return nil, fmt.Errorf("%w: no releases", ErrBadManifest)
	}
	seen := map[string]bool{}
	for i, r := range m.Releases {
		if !ValidVersion(r.Version) {
			return nil, fmt.Errorf("%w: release %d: version %q is not vMAJOR.MINOR.PATCH", ErrBadManifest, i, r.Version)
		}
		if seen[r.Version] {
			return nil, fmt.Errorf("%w: version %s listed twice", ErrBadManifest, r.Version)
		}
		seen[r.Version] = true
		for _, f := range []struct{ name, ref string }{{"tarball", r.Tarball}, {"sha256sums", r.Sums}, {"signature", r.Signature}} {
			if err := checkRef(f.ref); err != nil {
				return nil, fmt.Errorf("%w: release %s: %s: %v", ErrBadManifest, r.Version, f.name, err)
			}
		}
	}
	if !seen[m.Latest] {
		return nil, fmt.Errorf("%w: latest %q is not one of the listed releases", ErrBadManifest, m.Latest)
	}
	return &m, nil
}

// checkRef accepts a relative, clean, slash-separated path below the
// manifest's directory.
func checkRef(ref string) error {
	switch {
	case ref == "":
		return fmt.Errorf("missing")
	case len(ref) > 512:
		return fmt.Errorf("longer than 512 bytes")
	case strings.ContainsAny(ref, "\\?#%:\x00") || strings.ContainsFunc(ref, func(r rune) bool { return r < 0x21 || r == 0x7f }):
		return fmt.Errorf("%q: only a plain relative path is allowed", ref)
	case strings.HasPrefix(ref, "/"), path.Clean(ref) != ref, ref == "..", strings.HasPrefix(ref, "../"):
		return fmt.Errorf("%q is not a clean path below the manifest", ref)
	}
	return nil
}

// Find returns the release for version ("" = Latest). An unknown version
// is an error wrapping ErrUnknownVersion that lists the available ones.
func (m *Manifest) Find(version string) (*Release, error) {
	if version == "" {
		version = m.Latest
	}
	var have []string
	for i := range m.Releases {
		if m.Releases[i].Version == version {
			return &m.Releases[i], nil
		}
		have = append(have, m.Releases[i].Version)
	}
	return nil, fmt.Errorf("%w: %s is not in the release manifest (available: %s)", ErrUnknownVersion, version, strings.Join(have, ", "))
}

// resolve turns a checked reference into an absolute URL below base.
func resolve(base *url.URL, ref string) string {
	return base.ResolveReference(&url.URL{Path: ref}).String()
}

func jsonIndent(v any) ([]byte, error) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

func sortStrings(s []string) { slices.Sort(s) }
