package update

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/bangerdev/banger/internal/atomicfile"
)

// ReleaseOptions describe one release to publish.
type ReleaseOptions struct {
	OutDir  string            // the channel directory (holds manifest.json)
	Version string            // vX.Y.Z
	GOOS    string            // target OS (tarball name)
	GOARCH  string            // target architecture (tarball name)
	Files   map[string]string // archive entry → built binary (update.ReleaseEntries)
	Key     *PrivateKey
	Now     time.Time
}

// Publish writes a release into a channel directory servable by any
// static HTTP server:
//
//	OutDir/manifest.json                         (created or updated; Latest = the highest version)
//	OutDir/<version>/banger_<version>_<os>_<arch>.tar.gz
//	OutDir/<version>/SHA256SUMS                  (lists the tarball)
//	OutDir/<version>/SHA256SUMS.sig              (signature of SHA256SUMS)
//
// The tarball is deterministic (sorted entries, fixed mtime, uid/gid 0,
// mode 0755). Publishing a version that already exists is refused.
func Publish(o ReleaseOptions) (*Release, error) {
	if !ValidVersion(o.Version) {
		return nil, fmt.Errorf("version %q is not vMAJOR.MINOR.PATCH", o.Version)
	}
	if o.Key == nil {
		return nil, errors.New("no signing key")
	}
	m := &Manifest{Schema: ManifestSchema}
	mpath := filepath.Join(o.OutDir, "manifest.json")
	if data, err := os.ReadFile(mpath); err == nil {
		if m, err = ParseManifest(data); err != nil {
			return nil, fmt.Errorf("existing %s: %w", mpath, err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if _, err := m.Find(o.Version); err == nil {
		return nil, fmt.Errorf("%s is already in %s: releases are immutable, pick a new version", o.Version, mpath)
	}
	vdir := filepath.Join(o.OutDir, o.Version)
	if err := os.MkdirAll(vdir, 0o755); err != nil {
		return nil, err
	}
	tgz, err := tarball(o.Files, o.Now)
	if err != nil {
		return nil, err
	}
	name := TarballName(o.Version, o.GOOS, o.GOARCH)
	h := sha256.Sum256(tgz)
	sums := Sums{name: hex.EncodeToString(h[:])}.Format()
	sig, err := o.Key.Sign(sums)
	if err != nil {
		return nil, fmt.Errorf("sign SHA256SUMS: %w", err)
	}
	if err := o.Key.Public().Verify(sums, sig); err != nil {
		return nil, err
	}
	for f, data := range map[string][]byte{name: tgz, "SHA256SUMS": sums, "SHA256SUMS.sig": sig} {
		if err := atomicfile.Write(filepath.Join(vdir, f), data, 0o644); err != nil {
			return nil, err
		}
	}
	rel := Release{
		Version:    o.Version,
		Tarball:    o.Version + "/" + name,
		Sums:       o.Version + "/SHA256SUMS",
		Signature:  o.Version + "/SHA256SUMS.sig",
		ReleasedAt: o.Now.UTC(),
	}
	m.Releases = append(m.Releases, rel)
	if m.Latest == "" || CompareVersions(o.Version, m.Latest) > 0 {
		m.Latest = o.Version
	}
	data, err := jsonIndent(m)
	if err != nil {
		return nil, err
	}
	if _, err := ParseManifest(data); err != nil {
		return nil, fmt.Errorf("internal error: the manifest written would not parse: %w", err)
	}
	if err := atomicfile.Write(mpath, data, 0o644); err != nil {
		return nil, err
	}
	return &rel, nil
}

func tarball(files map[string]string, now time.Time) ([]byte, error) {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sortStrings(names)
	for _, n := range names {
		data, err := os.ReadFile(files[n])
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", n, err)
		}
		hdr := &tar.Header{Name: n, Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(data)), ModTime: now.UTC().Truncate(time.Second), Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := gz.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
