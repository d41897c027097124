package update

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParseManifest: never panics; whatever it accepts has valid
// versions, clean relative references and a Latest that Find returns.
func FuzzParseManifest(f *testing.F) {
	f.Add([]byte(`{"schema":1,"latest":"v1.0.0","releases":[{"version":"v1.0.0","tarball":"v1.0.0/banger_v1.0.0_linux_amd64.tar.gz","sha256sums":"v1.0.0/SHA256SUMS","signature":"v1.0.0/SHA256SUMS.sig","released_at":"2026-01-01T00:00:00Z"}]}`))
	f.Add([]byte(`{"schema":1,"latest":"v1.0.0","releases":[{"version":"v1.0.0","tarball":"../x","sha256sums":"a","signature":"b"}]}`))
	f.Add([]byte(`{"schema":2}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseManifest(data)
		if err != nil {
			return
		}
		if _, err := m.Find(""); err != nil {
			t.Fatalf("accepted manifest has no latest: %v", err)
		}
		for _, r := range m.Releases {
			if !ValidVersion(r.Version) {
				t.Fatalf("accepted version %q", r.Version)
			}
			for _, ref := range []string{r.Tarball, r.Sums, r.Signature} {
				if checkRef(ref) != nil || bytes.Contains([]byte(ref), []byte("..")) && (ref == ".." || bytes.HasPrefix([]byte(ref), []byte("../"))) {
					t.Fatalf("accepted reference %q", ref)
				}
			}
		}
	})
}

// FuzzParseSums: never panics; what it accepts round-trips through
// Format and names only plain files.
func FuzzParseSums(f *testing.F) {
	f.Add([]byte("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  banger_v1.0.0_linux_amd64.tar.gz\n"))
	f.Add([]byte("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 *a\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  ../b\n"))
	f.Add([]byte("zz  a\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ParseSums(data)
		if err != nil {
			return
		}
		for name := range s {
			if name == "" || bytes.ContainsAny([]byte(name), "/\\\n") || name == ".." {
				t.Fatalf("accepted name %q", name)
			}
		}
		again, err := ParseSums(s.Format())
		if err != nil || len(again) != len(s) {
			t.Fatalf("Format does not round-trip: %v", err)
		}
		for k, v := range s {
			if again[k] != v {
				t.Fatalf("round trip changed %q", k)
			}
		}
	})
}

// FuzzStage: any bytes as a (verified) tarball never panic the stager,
// never write outside its staging directory, and what it accepts holds
// exactly banger and bangerd as 0755 regular files.
func FuzzStage(f *testing.F) {
	for _, entries := range [][]tarEntry{good("v1.0.0"), append(good("v1.0.0"), tarEntry{name: "../x", typ: tar.TypeReg, data: []byte("x")})} {
		var buf bytes.Buffer
		gz := gzip.NewWriter(&buf)
		tw := tar.NewWriter(gz)
		for _, e := range entries {
			tw.WriteHeader(&tar.Header{Name: e.name, Typeflag: e.typ, Mode: 0o755, Size: int64(len(e.data))})
			tw.Write(e.data)
		}
		tw.Close()
		gz.Close()
		f.Add(buf.Bytes())
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		parent := t.TempDir()
		tgz := filepath.Join(parent, "t.tar.gz")
		if err := os.WriteFile(tgz, data, 0o644); err != nil {
			t.Fatal(err)
		}
		st, err := stage(tgz, parent, []string{"banger", "bangerd"}, []string{"banger-agent"}, 64<<10)
		ents, _ := os.ReadDir(parent)
		if err != nil {
			if len(ents) != 1 {
				t.Fatalf("a refused archive left %d entries behind", len(ents)-1)
			}
			return
		}
		files, _ := os.ReadDir(st.Dir)
		if len(files) != 2 || len(ents) != 2 {
			t.Fatalf("accepted archive staged %d files", len(files))
		}
		for _, fi := range files {
			info, _ := fi.Info()
			if !info.Mode().IsRegular() || info.Mode().Perm() != 0o755 {
				t.Fatalf("%s staged as %v", fi.Name(), info.Mode())
			}
		}
	})
}
