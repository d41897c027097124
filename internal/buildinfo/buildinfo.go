// Package buildinfo holds the version stamped into the binaries at link
// time (-ldflags "-X github.com/bangerdev/banger/internal/buildinfo.Version=...").
package buildinfo

import "fmt"

// Set by the linker; see the Makefile.
var (
	Version   = "dev"
	Commit    = "unknown"
	BuildTime = "unknown"

	// UpdateManifestURL is the release channel `banger update` reads by
	// default (its manifest.json); "" = none (config or --manifest-url).
	UpdateManifestURL = ""
	// UpdatePublicKey is the pinned release key: the base64 of a DER
	// SubjectPublicKeyInfo (ECDSA P-256 or ed25519); "" = none. See
	// docs/update.md.
	UpdatePublicKey = ""
)

// Info is the build identity of a binary.
type Info struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	BuildTime string `json:"build_time"`
}

// Get returns this binary's build identity.
func Get() Info { return Info{Version: Version, Commit: Commit, BuildTime: BuildTime} }

// String renders "banger VERSION (commit COMMIT, built TIME)".
func (i Info) String() string {
	return fmt.Sprintf("%s (commit %s, built %s)", i.Version, i.Commit, i.BuildTime)
}

// Same reports whether two builds are the same version and commit.
func (i Info) Same(o Info) bool { return i.Version == o.Version && i.Commit == o.Commit }
