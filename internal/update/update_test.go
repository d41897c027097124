package update

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/buildinfo"
	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/testreq"
)

// fakeBinary is a shell script standing in for banger and bangerd: it
// answers version, --version, --check-migrations and doctor.
type fakeBinary struct {
	version    string
	migrations int    // exit status of --check-migrations
	doctorFail string // a doctor check that FAILs ("" = none)
}

func (f fakeBinary) script(name string) []byte {
	doctor := `[{"name":"arch","status":"PASS","message":"ok"}]`
	code := 0
	if f.doctorFail != "" {
		doctor = fmt.Sprintf(`[{"name":"arch","status":"PASS","message":"ok"},{"name":%q,"status":"FAIL","message":"broken"}]`, f.doctorFail)
		code = 1
	}
	return []byte(fmt.Sprintf(`#!/bin/sh
# %[1]s %[2]s
case "$1" in
version) echo '{"version":"%[2]s","commit":"c","build_time":"t"}' ;;
--version) echo "bangerd %[2]s (commit c, built t)" ;;
--check-migrations) echo "schema detail"; exit %[3]d ;;
doctor) echo '%[4]s'; exit %[5]d ;;
*) exit 9 ;;
esac
`, name, f.version, f.migrations, doctor, code))
}

// fakeServices records calls; Restart fails while the installed banger
// is failVersion (a new daemon that does not come up).
type fakeServices struct {
	mu          sync.Mutex
	mode        Mode
	install     Installation
	inFlight    []string
	failVersion string
	onRestart   func(version string)
	calls       []string
}

func (s *fakeServices) record(c string) {
	s.mu.Lock()
	s.calls = append(s.calls, c)
	s.mu.Unlock()
}

func (s *fakeServices) Mode() Mode { return s.mode }
func (s *fakeServices) InFlight(context.Context) ([]string, error) {
	s.record("inflight")
	return s.inFlight, nil
}
func (s *fakeServices) RefreshUnits(context.Context) error { s.record("refresh"); return nil }
func (s *fakeServices) Restart(ctx context.Context) error {
	v, err := s.installed(ctx)
	s.record("restart " + v)
	if s.onRestart != nil {
		s.onRestart(v)
	}
	if err != nil {
		return err
	}
	if v == s.failVersion {
		return errors.New("bangerd did not answer within 20s")
	}
	return nil
}
func (s *fakeServices) Running(ctx context.Context) (buildinfo.Info, error) {
	v, err := s.installed(ctx)
	return buildinfo.Info{Version: v}, err
}
func (s *fakeServices) installed(ctx context.Context) (string, error) {
	res, err := hostexec.Real{}.Run(ctx, hostexec.Cmd{Name: s.install.Path("bangerd"), Args: []string{"--version"}})
	if err != nil {
		return "", err
	}
	return strings.Fields(string(res.Stdout))[1], nil
}

// fixture is an installed banger (v1.0.0) and a release channel served
// over loopback HTTP.
type fixture struct {
	t        *testing.T
	channel  string // served directory
	key      *PrivateKey
	install  Installation
	services *fakeServices
	srv      *httptest.Server
	// handler wraps the file server (tests tamper with responses).
	mu      sync.Mutex
	handler func(w http.ResponseWriter, r *http.Request, next http.Handler)
}

const installedVersion = "v1.0.0"

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{t: t, channel: t.TempDir()}
	var err error
	if f.key, err = GenerateKey(); err != nil {
		t.Fatal(err)
	}
	prefix := t.TempDir()
	for _, d := range []string{"bin", "lib"} {
		if err := os.MkdirAll(filepath.Join(prefix, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	f.install = Installation{Targets: []Target{
		{Name: "banger", Path: filepath.Join(prefix, "bin", "banger")},
		{Name: "bangerd", Path: filepath.Join(prefix, "lib", "bangerd")},
	}}
	old := fakeBinary{version: installedVersion}
	for _, tg := range f.install.Targets {
		if err := os.WriteFile(tg.Path, old.script(tg.Name), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	f.services = &fakeServices{mode: ModeUser, install: f.install}
	files := http.FileServer(http.Dir(f.channel))
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		h := f.handler
		f.mu.Unlock()
		if h != nil {
			h(w, r, files)
			return
		}
		files.ServeHTTP(w, r)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fixture) setHandler(h func(w http.ResponseWriter, r *http.Request, next http.Handler)) {
	f.mu.Lock()
	f.handler = h
	f.mu.Unlock()
}

// publish adds a release built from fake binaries.
func (f *fixture) publish(b fakeBinary) {
	f.t.Helper()
	dir := f.t.TempDir()
	files := map[string]string{}
	for _, n := range []string{"banger", "bangerd"} {
		p := filepath.Join(dir, n)
		if err := os.WriteFile(p, b.script(n), 0o755); err != nil {
			f.t.Fatal(err)
		}
		files[n] = p
	}
	if _, err := Publish(ReleaseOptions{OutDir: f.channel, Version: b.version, GOOS: "linux", GOARCH: "amd64", Files: files, Key: f.key, Now: time.Unix(1_700_000_000, 0)}); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) updater() *Updater {
	return &Updater{
		ManifestURL: f.srv.URL + "/manifest.json",
		Key:         f.key.Public(),
		Current:     buildinfo.Info{Version: installedVersion},
		Install:     f.install,
		CacheDir:    filepath.Join(f.t.TempDir(), "cache"),
		Services:    f.services,
		Runner:      hostexec.Real{},
		GOOS:        "linux",
		GOARCH:      "amd64",
		Euid:        func() int { return 1000 },
	}
}

// snapshot is the installed files' bytes (and whether .previous exists).
func (f *fixture) snapshot() map[string]string {
	f.t.Helper()
	s := map[string]string{}
	for _, tg := range f.install.Targets {
		for _, p := range []string{tg.Path, tg.Path + PreviousSuffix} {
			data, err := os.ReadFile(p)
			if err == nil {
				s[p] = string(data)
			}
		}
	}
	return s
}

func (f *fixture) versionOf(name string) string {
	f.t.Helper()
	data, err := os.ReadFile(f.install.Path(name))
	if err != nil {
		f.t.Fatal(err)
	}
	return strings.Fields(strings.SplitN(string(data), "\n", 3)[1])[2]
}

// resign rewrites a release's SHA256SUMS (via edit) and signs it with key.
func (f *fixture) resign(version string, key *PrivateKey, edit func(Sums)) {
	f.t.Helper()
	p := filepath.Join(f.channel, version, "SHA256SUMS")
	data, err := os.ReadFile(p)
	if err != nil {
		f.t.Fatal(err)
	}
	sums, err := ParseSums(data)
	if err != nil {
		f.t.Fatal(err)
	}
	if edit != nil {
		edit(sums)
	}
	data = sums.Format()
	sig, err := key.Sign(data)
	if err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(p+".sig", sig, 0o644); err != nil {
		f.t.Fatal(err)
	}
}

// replaceTarball writes a custom tarball for version and re-signs its sum.
func (f *fixture) replaceTarball(version string, entries []tarEntry) {
	f.t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: 0o755, Size: int64(len(e.data)), Linkname: e.link}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			f.t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			tw.Write(e.data)
		}
	}
	tw.Close()
	gz.Close()
	name := TarballName(version, "linux", "amd64")
	if err := os.WriteFile(filepath.Join(f.channel, version, name), buf.Bytes(), 0o644); err != nil {
		f.t.Fatal(err)
	}
	h := sha256.Sum256(buf.Bytes())
	f.resign(version, f.key, func(s Sums) { s[name] = hex.EncodeToString(h[:]) })
}

type tarEntry struct {
	name string
	typ  byte
	data []byte
	link string
}

func good(v string) []tarEntry {
	b := fakeBinary{version: v}
	return []tarEntry{{name: "banger", typ: tar.TypeReg, data: b.script("banger")}, {name: "bangerd", typ: tar.TypeReg, data: b.script("bangerd")}}
}

func TestUpdateInstallsVerifiedReleaseAndKeepsPrevious(t *testing.T) {
	f := newFixture(t)
	f.publish(fakeBinary{version: "v1.1.0"})
	before := f.snapshot()
	var out bytes.Buffer
	u := f.updater()
	u.Out = &out
	res, err := u.Update(context.Background(), Options{})
	if err != nil {
		t.Fatalf("Update: %v\n%s", err, out.String())
	}
	if !res.Installed || res.Target != "v1.1.0" || res.Daemon != "v1.1.0" {
		t.Fatalf("result %+v", res)
	}
	for _, tg := range f.install.Targets {
		if v := f.versionOf(tg.Name); v != "v1.1.0" {
			t.Errorf("%s is %s after the update", tg.Name, v)
		}
		prev, _ := os.ReadFile(tg.Path + PreviousSuffix)
		if string(prev) != before[tg.Path] {
			t.Errorf("%s.previous is not the old binary", tg.Name)
		}
		st, _ := os.Stat(tg.Path)
		if st.Mode().Perm() != 0o755 {
			t.Errorf("%s mode %v", tg.Name, st.Mode())
		}
	}
	if got := strings.Join(f.services.calls, ","); got != "inflight,refresh,restart v1.1.0" {
		t.Errorf("service calls %q", got)
	}
	// The cache keeps the verified tarball; nothing else is left behind.
	ents, _ := os.ReadDir(u.CacheDir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if got := strings.Join(names, ","); got != "banger_v1.1.0_linux_amd64.tar.gz,update.lock" {
		t.Errorf("cache holds %s", got)
	}
	// Up to date now: a second run changes nothing.
	u.Current = buildinfo.Info{Version: "v1.1.0"}
	res, err = u.Update(context.Background(), Options{})
	if err != nil || res.Installed || !res.UpToDate {
		t.Fatalf("second update: %+v, %v", res, err)
	}
}

func TestDryRunVerifiesAndStagesOnly(t *testing.T) {
	f := newFixture(t)
	f.publish(fakeBinary{version: "v1.1.0", migrations: 1})
	before := f.snapshot()
	res, err := f.updater().Update(context.Background(), Options{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if !res.DryRun || res.Installed || res.Migrations != "schema detail" {
		t.Fatalf("result %+v", res)
	}
	assertUnchanged(t, f, before)
	if len(f.services.calls) != 0 {
		t.Errorf("dry run called services: %v", f.services.calls)
	}
}

func assertUnchanged(t *testing.T, f *fixture, before map[string]string) {
	t.Helper()
	after := f.snapshot()
	if len(after) != len(before) {
		t.Errorf("install has %d files, had %d", len(after), len(before))
	}
	for p, b := range before {
		if after[p] != b {
			t.Errorf("%s changed", p)
		}
	}
	for _, tg := range f.install.Targets {
		ents, _ := os.ReadDir(filepath.Dir(tg.Path))
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), ".") {
				t.Errorf("left behind %s", e.Name())
			}
		}
	}
}

// TestBadInputChangesNothing: every refusal says why, wraps the sentinel
// callers branch on, and leaves the install byte-identical.
func TestBadInputChangesNothing(t *testing.T) {
	other, _ := GenerateKey()
	cases := []struct {
		name  string
		setup func(f *fixture, u *Updater, o *Options)
		want  error
		msg   string
	}{
		{"manifest unreachable", func(f *fixture, u *Updater, o *Options) { f.srv.Close() }, ErrUnreachable, "check the network"},
		{"manifest missing", func(f *fixture, u *Updater, o *Options) { u.ManifestURL = f.srv.URL + "/nope.json" }, ErrUnreachable, "404"},
		{"malformed manifest", func(f *fixture, u *Updater, o *Options) {
			os.WriteFile(filepath.Join(f.channel, "manifest.json"), []byte(`{"schema":1,"latest":`), 0o644)
		}, ErrBadManifest, "not valid JSON"},
		{"unknown --to", func(f *fixture, u *Updater, o *Options) { o.To = "v9.9.9" }, ErrUnknownVersion, "available: v1.1.0"},
		{"bad --to", func(f *fixture, u *Updater, o *Options) { o.To = "latest" }, ErrUnknownVersion, "not a version"},
		{"signature by another key", func(f *fixture, u *Updater, o *Options) { f.resign("v1.1.0", other, nil) }, ErrBadSignature, "not signed by the pinned release key"},
		{"missing signature", func(f *fixture, u *Updater, o *Options) {
			os.Remove(filepath.Join(f.channel, "v1.1.0", "SHA256SUMS.sig"))
		}, ErrBadSignature, "SHA256SUMS.sig"},
		{"empty signature", func(f *fixture, u *Updater, o *Options) {
			os.WriteFile(filepath.Join(f.channel, "v1.1.0", "SHA256SUMS.sig"), nil, 0o644)
		}, ErrBadSignature, "empty"},
		{"sums do not list the tarball", func(f *fixture, u *Updater, o *Options) {
			f.resign("v1.1.0", f.key, func(s Sums) {
				for k := range s {
					delete(s, k)
				}
				s["other.tar.gz"] = strings.Repeat("0", 64)
			})
		}, ErrNotListed, "does not list banger_v1.1.0_linux_amd64.tar.gz"},
		{"tarball hash mismatch", func(f *fixture, u *Updater, o *Options) { flipByte(t, f, "v1.1.0") }, ErrHashMismatch, "tampered"},
		{"truncated download", func(f *fixture, u *Updater, o *Options) {
			f.setHandler(func(w http.ResponseWriter, r *http.Request, next http.Handler) {
				if !strings.HasSuffix(r.URL.Path, ".tar.gz") {
					next.ServeHTTP(w, r)
					return
				}
				data, _ := os.ReadFile(filepath.Join(f.channel, r.URL.Path))
				w.Header().Set("Content-Length", fmt.Sprint(len(data)))
				w.Write(data[:len(data)/2])
				// Returning with fewer bytes than promised closes the connection.
			})
		}, ErrTruncated, "of"},
		{"extra tar entry", func(f *fixture, u *Updater, o *Options) {
			f.replaceTarball("v1.1.0", append(good("v1.1.0"), tarEntry{name: "evil", typ: tar.TypeReg, data: []byte("x")}))
		}, ErrBadArchive, `unexpected entry "evil"`},
		{"traversing tar entry", func(f *fixture, u *Updater, o *Options) {
			f.replaceTarball("v1.1.0", append(good("v1.1.0"), tarEntry{name: "../banger", typ: tar.TypeReg, data: []byte("x")}))
		}, ErrBadArchive, "has a path"},
		{"symlink tar entry", func(f *fixture, u *Updater, o *Options) {
			f.replaceTarball("v1.1.0", []tarEntry{good("v1.1.0")[0], {name: "bangerd", typ: tar.TypeSymlink, link: "/bin/sh"}})
		}, ErrBadArchive, "symlink"},
		{"device tar entry", func(f *fixture, u *Updater, o *Options) {
			f.replaceTarball("v1.1.0", []tarEntry{good("v1.1.0")[0], {name: "bangerd", typ: tar.TypeChar}})
		}, ErrBadArchive, "device"},
		{"duplicate tar entry", func(f *fixture, u *Updater, o *Options) {
			f.replaceTarball("v1.1.0", append(good("v1.1.0"), good("v1.1.0")[0]))
		}, ErrBadArchive, "twice"},
		{"missing tar entry", func(f *fixture, u *Updater, o *Options) { f.replaceTarball("v1.1.0", good("v1.1.0")[:1]) }, ErrBadArchive, "missing bangerd"},
		{"binaries of another version", func(f *fixture, u *Updater, o *Options) { f.replaceTarball("v1.1.0", good("v1.0.5")) }, ErrBadBuild, "reports version"},
		{"incompatible migrations", func(f *fixture, u *Updater, o *Options) {
			f.publish(fakeBinary{version: "v1.2.0", migrations: 2})
		}, ErrIncompatible, "cannot use this state store"},
		{"migrations check error", func(f *fixture, u *Updater, o *Options) {
			f.publish(fakeBinary{version: "v1.2.0", migrations: 3})
		}, ErrIncompatible, "could not check"},
		{"operations in flight", func(f *fixture, u *Updater, o *Options) {
			f.services.inFlight = []string{"vm.create dev (boot, op-1)"}
		}, ErrInFlight, "vm.create dev"},
		{"system mode without root", func(f *fixture, u *Updater, o *Options) { f.services.mode = ModeSystem }, ErrNeedsRoot, "sudo banger update"},
		{"no channel", func(f *fixture, u *Updater, o *Options) { u.Key = nil }, ErrNoChannel, "--pubkey-file"},
		{"downgrade without --to", func(f *fixture, u *Updater, o *Options) { u.Current.Version = "v2.0.0" }, ErrDowngrade, "--to v1.1.0"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.publish(fakeBinary{version: "v1.1.0"})
			u := f.updater()
			var o Options
			tc.setup(f, u, &o)
			before := f.snapshot()
			_, err := u.Update(context.Background(), o)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("message %q does not say %q", err, tc.msg)
			}
			assertUnchanged(t, f, before)
			for _, c := range f.services.calls {
				if c != "inflight" {
					t.Errorf("services called: %v", f.services.calls)
				}
			}
			// Nothing unverified stays in the cache.
			ents, _ := os.ReadDir(u.CacheDir)
			for _, e := range ents {
				if e.Name() != "update.lock" && !(errors.Is(tc.want, ErrBadArchive) || errors.Is(tc.want, ErrBadBuild) || errors.Is(tc.want, ErrIncompatible) || errors.Is(tc.want, ErrInFlight)) {
					t.Errorf("cache holds %s", e.Name())
				}
				if strings.HasPrefix(e.Name(), "staged-") || strings.Contains(e.Name(), ".partial") {
					t.Errorf("cache holds %s", e.Name())
				}
			}
		})
	}
}

func flipByte(t *testing.T, f *fixture, version string) {
	t.Helper()
	p := filepath.Join(f.channel, version, TarballName(version, "linux", "amd64"))
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0x01
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestTamperedReleaseIsRefused is the acceptance check: one
// flipped byte in the tarball, a signature by another key, and a
// manifest pointing at a missing file are refused and the installed
// binaries stay byte-identical.
func TestTamperedReleaseIsRefused(t *testing.T) {
	other, _ := GenerateKey()
	for name, tamper := range map[string]func(f *fixture){
		"flipped tarball byte":   func(f *fixture) { flipByte(t, f, "v1.1.0") },
		"signature by other key": func(f *fixture) { f.resign("v1.1.0", other, nil) },
		"manifest points at a missing file": func(f *fixture) {
			os.Remove(filepath.Join(f.channel, "v1.1.0", TarballName("v1.1.0", "linux", "amd64")))
		},
	} {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t)
			f.publish(fakeBinary{version: "v1.1.0"})
			tamper(f)
			want := map[string][]byte{}
			for _, tg := range f.install.Targets {
				want[tg.Path], _ = os.ReadFile(tg.Path)
			}
			if _, err := f.updater().Update(context.Background(), Options{Force: true}); err == nil {
				t.Fatal("a tampered release was installed")
			}
			for p, w := range want {
				got, err := os.ReadFile(p)
				if err != nil || !bytes.Equal(got, w) {
					t.Errorf("%s is not byte-identical after the refused update", p)
				}
				if _, err := os.Stat(p + PreviousSuffix); err == nil {
					t.Errorf("%s%s exists", p, PreviousSuffix)
				}
			}
		})
	}
}

func TestNewDaemonNotComingUpRollsBack(t *testing.T) {
	f := newFixture(t)
	f.publish(fakeBinary{version: "v1.1.0"})
	f.services.failVersion = "v1.1.0"
	before := f.snapshot()
	_, err := f.updater().Update(context.Background(), Options{})
	if !errors.Is(err, ErrRolledBack) || !strings.Contains(err.Error(), "(rolled back to previous install)") || !strings.Contains(err.Error(), "did not answer") {
		t.Fatalf("err = %v", err)
	}
	assertUnchanged(t, f, before)
	if got := strings.Join(f.services.calls, ","); got != "inflight,refresh,restart v1.1.0,refresh,restart v1.0.0" {
		t.Errorf("service calls %q", got)
	}

	// With a .previous from an earlier update, the rollback restores it
	// too: --rollback still reaches the build before.
	f.services.failVersion = ""
	f.publish(fakeBinary{version: "v1.2.0"})
	if _, err := f.updater().Update(context.Background(), Options{To: "v1.1.0"}); err != nil {
		t.Fatal(err)
	}
	f.services.failVersion = "v1.2.0"
	before = f.snapshot()
	if _, err := f.updater().Update(context.Background(), Options{To: "v1.2.0"}); !errors.Is(err, ErrRolledBack) {
		t.Fatalf("err = %v", err)
	}
	assertUnchanged(t, f, before)
}

func TestNewDoctorFailRollsBackButOldFailsDoNot(t *testing.T) {
	f := newFixture(t)
	f.publish(fakeBinary{version: "v1.1.0", doctorFail: "state store"})
	before := f.snapshot()
	_, err := f.updater().Update(context.Background(), Options{})
	if !errors.Is(err, ErrRolledBack) || !strings.Contains(err.Error(), "state store: broken") {
		t.Fatalf("err = %v", err)
	}
	assertUnchanged(t, f, before)

	// The same FAIL in the installed doctor is the host's, not the update's.
	g := newFixture(t)
	for _, tg := range g.install.Targets {
		os.WriteFile(tg.Path, fakeBinary{version: installedVersion, doctorFail: "kvm"}.script(tg.Name), 0o755)
	}
	g.publish(fakeBinary{version: "v1.1.0", doctorFail: "kvm"})
	var out bytes.Buffer
	u := g.updater()
	u.Out = &out
	if _, err := u.Update(context.Background(), Options{}); err != nil {
		t.Fatalf("update with a pre-existing FAIL: %v", err)
	}
	if !strings.Contains(out.String(), "previous install had too: kvm") {
		t.Errorf("output does not mention the pre-existing FAIL:\n%s", out.String())
	}
}

func TestForceUpdatesWhileOperationsRun(t *testing.T) {
	f := newFixture(t)
	f.publish(fakeBinary{version: "v1.1.0"})
	f.services.inFlight = []string{"image.build x"}
	if _, err := f.updater().Update(context.Background(), Options{Force: true}); err != nil {
		t.Fatal(err)
	}
	if f.versionOf("banger") != "v1.1.0" {
		t.Fatal("not updated")
	}
}

func TestToInstallsAnOlderVersionAndRollbackSwaps(t *testing.T) {
	f := newFixture(t)
	f.publish(fakeBinary{version: "v0.9.0"})
	f.publish(fakeBinary{version: "v1.1.0"})
	u := f.updater()
	if _, err := u.Update(context.Background(), Options{To: "v0.9.0"}); err != nil {
		t.Fatal(err)
	}
	if f.versionOf("bangerd") != "v0.9.0" {
		t.Fatal("--to v0.9.0 not installed")
	}
	v, err := u.Rollback(context.Background(), false)
	if err != nil || v != installedVersion || f.versionOf("banger") != installedVersion {
		t.Fatalf("rollback: %q, %v", v, err)
	}
	// Rolling back again undoes the rollback.
	if v, err := u.Rollback(context.Background(), false); err != nil || v != "v0.9.0" {
		t.Fatalf("second rollback: %q, %v", v, err)
	}
}

func TestRollbackWithoutPreviousChangesNothing(t *testing.T) {
	f := newFixture(t)
	before := f.snapshot()
	_, err := f.updater().Rollback(context.Background(), false)
	if !errors.Is(err, ErrNoPrevious) {
		t.Fatalf("err = %v", err)
	}
	assertUnchanged(t, f, before)
	f.services.mode = ModeSystem
	if _, err := f.updater().Rollback(context.Background(), false); !errors.Is(err, ErrNeedsRoot) {
		t.Fatalf("system rollback without root: %v", err)
	}
}

func TestCachedTarballIsReverifiedAndReused(t *testing.T) {
	f := newFixture(t)
	f.publish(fakeBinary{version: "v1.1.0"})
	u := f.updater()
	if _, err := u.Update(context.Background(), Options{DryRun: true}); err != nil {
		t.Fatal(err)
	}
	var tarballGets int
	f.setHandler(func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		if strings.HasSuffix(r.URL.Path, ".tar.gz") {
			tarballGets++
		}
		next.ServeHTTP(w, r)
	})
	if _, err := u.Update(context.Background(), Options{}); err != nil {
		t.Fatal(err)
	}
	if tarballGets != 0 {
		t.Errorf("downloaded the verified tarball again (%d)", tarballGets)
	}
	// A cached file that no longer matches is downloaded again.
	cached := filepath.Join(u.CacheDir, TarballName("v1.1.0", "linux", "amd64"))
	os.WriteFile(cached, []byte("garbage"), 0o644)
	if _, err := u.Update(context.Background(), Options{Force: true}); err != nil {
		t.Fatal(err)
	}
	if tarballGets != 1 {
		t.Errorf("tarball downloads = %d, want 1", tarballGets)
	}
}

func TestConcurrentUpdateIsRefused(t *testing.T) {
	f := newFixture(t)
	f.publish(fakeBinary{version: "v1.1.0"})
	u := f.updater()
	unlock, err := u.lock()
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if _, err := u.Update(context.Background(), Options{}); !errors.Is(err, ErrBusy) {
		t.Fatalf("err = %v", err)
	}
}

func TestEd25519KeysVerify(t *testing.T) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	k := &PrivateKey{key: priv}
	pem, err := k.PEM()
	if err != nil {
		t.Fatal(err)
	}
	k2, err := ParsePrivateKey(pem)
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("abc  file\n")
	sig, _ := k2.Sign(msg)
	pub, err := ParsePublicKey(k.Public().PEM())
	if err != nil {
		t.Fatal(err)
	}
	if err := pub.Verify(msg, sig); err != nil {
		t.Fatal(err)
	}
	sig[0] ^= 1
	if err := pub.Verify(msg, sig); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("tampered ed25519 signature: %v", err)
	}
	// The one-line build-stamp form parses to the same key.
	if p2, err := ParsePublicKey([]byte(pub.Base64())); err != nil || p2.Fingerprint() != pub.Fingerprint() {
		t.Fatalf("base64 form: %v", err)
	}
}

func TestKeyFilesRoundTrip(t *testing.T) {
	p := filepath.Join(t.TempDir(), "release.key")
	pub, err := WriteNewKeyPair(p)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("private key mode %v", st.Mode().Perm())
	}
	data, _ := os.ReadFile(p + ".pub")
	got, err := ParsePublicKey(data)
	if err != nil || got.Fingerprint() != pub.Fingerprint() {
		t.Fatalf("public key file: %v", err)
	}
	if _, err := WriteNewKeyPair(p); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("overwrote a key: %v", err)
	}
	if _, err := ParsePublicKey([]byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")); !errors.Is(err, ErrBadKey) {
		t.Fatalf("private key accepted as public: %v", err)
	}
}

func TestPublishRefusesAnExistingVersion(t *testing.T) {
	f := newFixture(t)
	f.publish(fakeBinary{version: "v1.1.0"})
	f.publish(fakeBinary{version: "v1.0.1"})
	data, _ := os.ReadFile(filepath.Join(f.channel, "manifest.json"))
	m, err := ParseManifest(data)
	if err != nil || m.Latest != "v1.1.0" || len(m.Releases) != 2 {
		t.Fatalf("manifest %+v, %v", m, err)
	}
	_, err = Publish(ReleaseOptions{OutDir: f.channel, Version: "v1.1.0", GOOS: "linux", GOARCH: "amd64", Key: f.key, Files: map[string]string{}})
	if err == nil || !strings.Contains(err.Error(), "immutable") {
		t.Fatalf("republish: %v", err)
	}
}

func TestCompareVersions(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want int
	}{
		{"v1.0.0", "v1.0.0", 0}, {"v1.0.0", "v1.0.1", -1}, {"v1.10.0", "v1.9.0", 1},
		{"v2.0.0-rc1", "v2.0.0", -1}, {"v2.0.0-rc2", "v2.0.0-rc1", 1},
	} {
		if got := CompareVersions(c.a, c.b); got != c.want {
			t.Errorf("CompareVersions(%s, %s) = %d, want %d", c.a, c.b, got, c.want)
		}
	}
}

func TestSharedCacheDirIsRefused(t *testing.T) {
	f := newFixture(t)
	f.publish(fakeBinary{version: "v1.1.0"})
	u := f.updater()
	if err := os.MkdirAll(u.CacheDir, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(u.CacheDir, 0o777)
	before := f.snapshot()
	if _, err := u.Update(context.Background(), Options{}); err == nil || !strings.Contains(err.Error(), "writable only by it") {
		t.Fatalf("err = %v", err)
	}
	assertUnchanged(t, f, before)
}

func TestCheckMigrationsRunsAsOwnerWithEnv(t *testing.T) {
	f := newFixture(t)
	f.publish(fakeBinary{version: "v1.1.0"})
	u := f.updater()
	rec := &hostexec.Recorder{Respond: func(c hostexec.Cmd) (hostexec.Result, error) {
		if c.Name == "setpriv" { // run what it wraps, as this user
			c = hostexec.Cmd{Name: c.Args[4], Args: c.Args[5:], Env: c.Env}
		}
		return hostexec.Real{}.Run(context.Background(), c)
	}}
	u.Runner = rec
	u.Env = []string{"BANGER_MODE=system"}
	u.RunAsOwner = []string{"setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", "--"}
	if _, err := u.Update(context.Background(), Options{DryRun: true}); err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, c := range rec.Calls() {
		if strings.HasSuffix(c.String(), "bangerd --check-migrations") {
			found = true
			if !strings.HasPrefix(c.String(), "setpriv --reuid=1000 --regid=1000 --clear-groups -- /") || strings.Join(c.Env, " ") != "BANGER_MODE=system" {
				t.Errorf("check-migrations ran as %q env %v", c.String(), c.Env)
			}
		}
	}
	if !found {
		t.Fatalf("no --check-migrations in %v", rec.Lines())
	}
}

// TestOpenSSLSignaturesVerify: keys and signatures made with openssl (an
// HSM or an operator's own tooling) are accepted, P-256 and ed25519.
func TestOpenSSLSignaturesVerify(t *testing.T) {
	testreq.Tools(t, "openssl")
	dir := t.TempDir()
	sums := filepath.Join(dir, "SHA256SUMS")
	os.WriteFile(sums, []byte(strings.Repeat("a", 64)+"  banger_v1.0.0_linux_amd64.tar.gz\n"), 0o644)
	openssl := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("openssl", args...).CombinedOutput(); err != nil {
			t.Fatalf("openssl %v: %v\n%s", args, err, out)
		}
	}
	for _, kind := range []struct{ name, sign string }{{"EC", "dgst"}, {"ED25519", "pkeyutl"}} {
		key, pub, sig := filepath.Join(dir, kind.name+".key"), filepath.Join(dir, kind.name+".pub"), filepath.Join(dir, kind.name+".sig")
		if kind.name == "EC" {
			openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key)
			openssl("dgst", "-sha256", "-sign", key, "-out", sig, sums)
		} else {
			openssl("genpkey", "-algorithm", "ED25519", "-out", key)
			openssl("pkeyutl", "-sign", "-rawin", "-inkey", key, "-in", sums, "-out", sig)
		}
		openssl("pkey", "-in", key, "-pubout", "-out", pub)
		pubData, _ := os.ReadFile(pub)
		p, err := ParsePublicKey(pubData)
		if err != nil {
			t.Fatalf("%s public key: %v", kind.name, err)
		}
		msg, _ := os.ReadFile(sums)
		sigData, _ := os.ReadFile(sig)
		if err := p.Verify(msg, sigData); err != nil {
			t.Errorf("%s: %v", kind.name, err)
		}
		if err := p.Verify(append(msg, ' '), sigData); !errors.Is(err, ErrBadSignature) {
			t.Errorf("%s: a changed SHA256SUMS verified: %v", kind.name, err)
		}
		keyData, _ := os.ReadFile(key)
		if _, err := ParsePrivateKey(keyData); err != nil {
			t.Errorf("%s private key: %v", kind.name, err)
		}
	}
}

func TestFileChannel(t *testing.T) {
	f := newFixture(t)
	f.publish(fakeBinary{version: "v1.1.0"})
	u := f.updater()
	u.ManifestURL = "file://" + filepath.Join(f.channel, "manifest.json")
	if _, err := u.Update(context.Background(), Options{}); err != nil {
		t.Fatal(err)
	}
	if f.versionOf("banger") != "v1.1.0" {
		t.Fatal("not updated from a file:// channel")
	}
}

func TestInterruptAfterSwapStillRollsBack(t *testing.T) {
	f := newFixture(t)
	f.publish(fakeBinary{version: "v1.1.0"})
	ctx, cancel := context.WithCancel(context.Background())
	f.services.onRestart = func(v string) {
		if v == "v1.1.0" {
			cancel() // Ctrl-C while the new daemon starts
		}
	}
	f.services.failVersion = "v1.1.0"
	before := f.snapshot()
	_, err := f.updater().Update(ctx, Options{})
	if !errors.Is(err, ErrRolledBack) {
		t.Fatalf("err = %v", err)
	}
	assertUnchanged(t, f, before)
}

func TestSilentServerIsGivenUpOn(t *testing.T) {
	for _, c := range []struct {
		name string
		hang func(path string) bool // hang before or in the middle of this response
		mid  bool
		want error
		msg  string
	}{
		{"no answer to the manifest", func(p string) bool { return strings.HasSuffix(p, "manifest.json") }, false, ErrUnreachable, "did not answer within"},
		{"tarball stops flowing", func(p string) bool { return strings.HasSuffix(p, ".tar.gz") }, true, ErrTruncated, "sent nothing for"},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			f.publish(fakeBinary{version: "v1.1.0"})
			f.setHandler(func(w http.ResponseWriter, r *http.Request, next http.Handler) {
				if !c.hang(r.URL.Path) {
					next.ServeHTTP(w, r)
					return
				}
				if c.mid {
					data, _ := os.ReadFile(filepath.Join(f.channel, r.URL.Path))
					w.Header().Set("Content-Length", fmt.Sprint(len(data)))
					w.Write(data[:len(data)/2])
					w.(http.Flusher).Flush()
				}
				select {
				case <-r.Context().Done():
				case <-time.After(10 * time.Second):
				}
			})
			u := f.updater()
			u.Stall = 300 * time.Millisecond
			before := f.snapshot()
			start := time.Now()
			_, err := u.Update(context.Background(), Options{})
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("err = %v, want %v (%s)", err, c.want, c.msg)
			}
			// The handler stays silent for 10s: finishing sooner means the
			// stall timer, not the server, ended the request.
			if time.Since(start) > 8*time.Second {
				t.Errorf("gave up only after %s", time.Since(start))
			}
			assertUnchanged(t, f, before)
		})
	}
}

// A swap that fails on the second binary (after the first is in place)
// puts the first one back, and its .previous as it was.
func TestSwapFailingHalfwayRestoresEverything(t *testing.T) {
	f := newFixture(t)
	f.publish(fakeBinary{version: "v1.1.0"})
	f.publish(fakeBinary{version: "v1.2.0"})
	u := f.updater()
	if _, err := u.Update(context.Background(), Options{To: "v1.1.0"}); err != nil {
		t.Fatal(err)
	}
	// bangerd (the second target) cannot get a .previous: a non-empty
	// directory is in the way.
	prev := f.install.Path("bangerd") + PreviousSuffix
	os.Remove(prev)
	os.MkdirAll(filepath.Join(prev, "x"), 0o755)
	before := f.snapshot()
	u.Current.Version = "v1.1.0"
	_, err := u.Update(context.Background(), Options{To: "v1.2.0"})
	if err == nil || !strings.Contains(err.Error(), "previous install is in place") {
		t.Fatalf("err = %v", err)
	}
	if f.versionOf("banger") != "v1.1.0" {
		t.Errorf("banger is %s after the failed swap", f.versionOf("banger"))
	}
	assertUnchanged(t, f, before)
	if st, err := os.Stat(filepath.Join(prev, "x")); err != nil || !st.IsDir() {
		t.Errorf("the directory in the way was disturbed: %v", err)
	}
}
