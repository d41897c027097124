package debmirror

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/progress"
	"github.com/ulikunitz/xz"
)

// fakeArchive serves a tiny Debian archive over HTTP. Tests mutate files
// after construction to simulate a tampering mirror.
type fakeArchive struct {
	t     *testing.T
	srv   *httptest.Server
	mu    sync.Mutex
	files map[string][]byte
	reqs  []string
	deb   []byte
}

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

const testSuite = "testsuite"

func newFakeArchive(t *testing.T, compress string, byHash bool) *fakeArchive {
	t.Helper()
	a := &fakeArchive{t: t, files: map[string][]byte{}}
	a.deb = bytes.Repeat([]byte("!<arch>\nfake deb payload "), 4000)
	oldDeb := []byte("old version")
	debPath := "pool/main/h/hello/hello_1.2-1_amd64.deb"
	a.files[debPath] = a.deb
	a.files["pool/main/h/hello/hello_1.0-1_amd64.deb"] = oldDeb
	packages := fmt.Sprintf("Package: hello\nVersion: 1.0-1\nArchitecture: amd64\nFilename: pool/main/h/hello/hello_1.0-1_amd64.deb\nSize: %d\nSHA256: %s\n\n", len(oldDeb), sha(oldDeb)) +
		fmt.Sprintf("Package: hello\nVersion: 1.2-1\nArchitecture: amd64\nDepends: libc6 (>= 2.34), hello-data | hello-extra\nFilename: %s\nSize: %d\nSHA256: %s\nDescription: greets\n multi-line\n\n", debPath, len(a.deb), sha(a.deb)) +
		fmt.Sprintf("Package: hello-meta\nVersion: 2\nArchitecture: all\nDepends: hello (= 1.2-1)\nFilename: pool/main/h/hello/hello-meta_2_all.deb\nSize: 3\nSHA256: %s\n", sha([]byte("abc")))
	var idx []byte
	name := "main/binary-amd64/Packages"
	switch compress {
	case "gz":
		var b bytes.Buffer
		w := gzip.NewWriter(&b)
		w.Write([]byte(packages))
		w.Close()
		idx, name = b.Bytes(), name+".gz"
	case "xz":
		var b bytes.Buffer
		w, _ := xz.NewWriter(&b)
		w.Write([]byte(packages))
		w.Close()
		idx, name = b.Bytes(), name+".xz"
	default:
		idx = []byte(packages)
	}
	a.files["dists/"+testSuite+"/"+name] = idx
	if byHash {
		a.files["dists/"+testSuite+"/main/binary-amd64/by-hash/SHA256/"+sha(idx)] = idx
	}
	release := fmt.Sprintf("Origin: Test\nSuite: testing\nDate: Sat, 05 Dec 2026 00:00:00 UTC\nCodename: %s\nAcquire-By-Hash: %s\nSHA256:\n %s %d %s\n %s %d main/binary-i386/Packages\n",
		testSuite, map[bool]string{true: "yes", false: "no"}[byHash], sha(idx), len(idx), name, sha(nil), 0)
	a.files["dists/"+testSuite+"/InRelease"] = []byte("FAKE-SIGNED\n" + release)
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.reqs = append(a.reqs, r.URL.Path)
		body, ok := a.files[strings.TrimPrefix(r.URL.Path, "/debian/")]
		a.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Write(body)
	}))
	t.Cleanup(a.srv.Close)
	return a
}

func (a *fakeArchive) set(path string, body []byte) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if body == nil {
		delete(a.files, path)
		return
	}
	a.files[path] = body
}

func (a *fakeArchive) requests() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.reqs...)
}

// fakeVerifier accepts InRelease files starting with FAKE-SIGNED.
type fakeVerifier struct{}

func (fakeVerifier) Verify(_ context.Context, in []byte) ([]byte, error) {
	rest, ok := bytes.CutPrefix(in, []byte("FAKE-SIGNED\n"))
	if !ok {
		return nil, fmt.Errorf("%w: fake signature missing", ErrVerify)
	}
	return rest, nil
}

func (a *fakeArchive) mirror(cache string) *Mirror {
	return &Mirror{URL: a.srv.URL + "/debian/", Suite: testSuite, Verifier: fakeVerifier{}, CacheDir: cache}
}

func TestLookupAndDownload(t *testing.T) {
	for _, comp := range []string{"xz", "gz", ""} {
		t.Run("packages"+comp, func(t *testing.T) {
			a := newFakeArchive(t, comp, true)
			cache := t.TempDir()
			m := a.mirror(cache)
			var mu sync.Mutex
			var events []progress.Event
			ctx := progress.WithSink(context.Background(), func(e progress.Event) { mu.Lock(); events = append(events, e); mu.Unlock() })

			p, err := m.Lookup(ctx, "hello")
			if err != nil {
				t.Fatal(err)
			}
			if p.Version != "1.2-1" || p.Size != int64(len(a.deb)) || p.SHA256 != sha(a.deb) {
				t.Fatalf("Lookup picked %+v, want version 1.2-1", p)
			}
			if len(p.Depends) != 2 || p.Depends[0][0].Name != "libc6" || len(p.Depends[1]) != 2 {
				t.Fatalf("Depends = %+v", p.Depends)
			}
			if _, err := m.Lookup(ctx, "absent"); !errors.Is(err, model.ErrNotFound) {
				t.Fatalf("Lookup(absent) err = %v, want ErrNotFound", err)
			}
			dir := t.TempDir()
			got, err := m.Download(ctx, p, dir)
			if err != nil {
				t.Fatal(err)
			}
			if got != filepath.Join(dir, "hello_1.2-1_amd64.deb") {
				t.Fatalf("Download path = %s", got)
			}
			if b, _ := os.ReadFile(got); !bytes.Equal(b, a.deb) {
				t.Fatal("downloaded content differs")
			}
			mu.Lock()
			var sawFull bool
			for _, e := range events {
				if e.Stage == "download" && e.Fraction == 1 {
					sawFull = true
				}
			}
			mu.Unlock()
			if !sawFull {
				t.Errorf("no download progress event reaching 1.0: %+v", events)
			}
			// The index came by hash.
			var byHash bool
			for _, r := range a.requests() {
				byHash = byHash || strings.Contains(r, "/by-hash/SHA256/")
			}
			if !byHash {
				t.Errorf("index not fetched by hash: %v", a.requests())
			}

			// A fresh Mirror with the same cache downloads the .deb from the cache.
			before := len(a.requests())
			m2 := a.mirror(cache)
			p2, err := m2.Lookup(context.Background(), "hello")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := m2.Download(context.Background(), p2, t.TempDir()); err != nil {
				t.Fatal(err)
			}
			for _, r := range a.requests()[before:] {
				if strings.HasSuffix(r, ".deb") || strings.Contains(r, "Packages") {
					t.Errorf("cached file fetched again: %s", r)
				}
			}
		})
	}
}

func TestByHashFallback(t *testing.T) {
	a := newFakeArchive(t, "gz", true)
	for p := range a.files {
		if strings.Contains(p, "by-hash") {
			a.set(p, nil)
		}
	}
	if _, err := a.mirror("").Lookup(context.Background(), "hello"); err != nil {
		t.Fatalf("no fallback to the canonical index path: %v", err)
	}
}

func TestTamperedPackagesRejected(t *testing.T) {
	a := newFakeArchive(t, "", false)
	idx := "dists/" + testSuite + "/main/binary-amd64/Packages"
	orig := a.files[idx]
	// same size, one changed byte: a different SHA256 for the .deb
	evil := bytes.Replace(orig, []byte("SHA256: "+sha(a.deb)), []byte("SHA256: "+strings.Repeat("0", 64)), 1)
	if bytes.Equal(evil, orig) || len(evil) != len(orig) {
		t.Fatal("test setup: tamper failed")
	}
	a.set(idx, evil)
	cache := t.TempDir()
	_, err := a.mirror(cache).Lookup(context.Background(), "hello")
	if !errors.Is(err, ErrVerify) || !strings.Contains(err.Error(), "SHA256") {
		t.Fatalf("tampered Packages: err = %v, want ErrVerify mentioning SHA256", err)
	}
	assertNoPartials(t, cache)
}

func TestTamperedDebRejected(t *testing.T) {
	for _, tc := range []struct {
		name string
		body func([]byte) []byte
	}{
		{"same size other bytes", func(b []byte) []byte { c := bytes.Clone(b); c[100] ^= 1; return c }},
		{"longer", func(b []byte) []byte { return append(bytes.Clone(b), "extra"...) }},
		{"truncated", func(b []byte) []byte { return b[:len(b)/2] }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newFakeArchive(t, "gz", true)
			cache := t.TempDir()
			m := a.mirror(cache)
			p, err := m.Lookup(context.Background(), "hello")
			if err != nil {
				t.Fatal(err)
			}
			a.set(p.Filename, tc.body(a.deb))
			dir := t.TempDir()
			_, err = m.Download(context.Background(), p, dir)
			if !errors.Is(err, ErrVerify) {
				t.Fatalf("tampered .deb: err = %v, want ErrVerify", err)
			}
			if ents, _ := os.ReadDir(dir); len(ents) != 0 {
				t.Errorf("files left in destination after rejected download: %v", ents)
			}
			assertNoPartials(t, cache)
			if _, err := os.Stat(filepath.Join(cache, "by-hash", p.SHA256)); err == nil {
				t.Error("rejected download entered the cache")
			}
		})
	}
}

func TestCorruptCacheEntryRefetched(t *testing.T) {
	a := newFakeArchive(t, "gz", true)
	cache := t.TempDir()
	m := a.mirror(cache)
	p, err := m.Lookup(context.Background(), "hello")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(cache, "by-hash"), 0o755); err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(a.deb)
	bad[0] = 'X'
	if err := os.WriteFile(filepath.Join(cache, "by-hash", p.SHA256), bad, 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := m.Download(context.Background(), p, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(got); !bytes.Equal(b, a.deb) {
		t.Fatal("corrupt cache entry was used")
	}
}

func TestUnsafeFilenameRejected(t *testing.T) {
	m := &Mirror{URL: "http://127.0.0.1:1/"}
	for _, fn := range []string{"pool/../../etc/passwd.deb", "pool/x/notadeb", ""} {
		_, err := m.Download(context.Background(), &Package{Name: "x", Filename: fn, SHA256: strings.Repeat("a", 64), Size: 1}, t.TempDir())
		if !errors.Is(err, ErrVerify) {
			t.Errorf("Filename %q: err = %v, want ErrVerify", fn, err)
		}
	}
}

func TestReleaseChecks(t *testing.T) {
	t.Run("unsigned", func(t *testing.T) {
		a := newFakeArchive(t, "gz", true)
		rel := a.files["dists/"+testSuite+"/InRelease"]
		a.set("dists/"+testSuite+"/InRelease", bytes.TrimPrefix(rel, []byte("FAKE-SIGNED\n")))
		if _, err := a.mirror("").Release(context.Background()); !errors.Is(err, ErrVerify) {
			t.Fatalf("err = %v, want ErrVerify", err)
		}
	})
	t.Run("wrong suite", func(t *testing.T) {
		a := newFakeArchive(t, "gz", true)
		a.set("dists/other/InRelease", a.files["dists/"+testSuite+"/InRelease"])
		m := a.mirror("")
		m.Suite = "other"
		if _, err := m.Release(context.Background()); !errors.Is(err, ErrVerify) || !strings.Contains(err.Error(), "other") {
			t.Fatalf("err = %v, want ErrVerify naming the suite", err)
		}
	})
	t.Run("expired", func(t *testing.T) {
		a := newFakeArchive(t, "gz", true)
		p := "dists/" + testSuite + "/InRelease"
		a.set(p, bytes.Replace(a.files[p], []byte("Origin: Test\n"), []byte("Origin: Test\nValid-Until: Sat, 01 Jan 2000 00:00:00 UTC\n"), 1))
		if _, err := a.mirror("").Release(context.Background()); !errors.Is(err, ErrVerify) || !strings.Contains(err.Error(), "expired") {
			t.Fatalf("err = %v, want ErrVerify about expiry", err)
		}
	})
	t.Run("replayed", func(t *testing.T) {
		// A validly signed but older Release than one seen before is a
		// replay (#15.11): refused, and the newer date stays recorded.
		a := newFakeArchive(t, "gz", true)
		cache := t.TempDir()
		if _, err := a.mirror(cache).Release(context.Background()); err != nil {
			t.Fatal(err)
		}
		p := "dists/" + testSuite + "/InRelease"
		newer := a.files[p]
		a.set(p, bytes.Replace(newer, []byte("Date: Sat, 05 Dec 2026"), []byte("Date: Mon, 01 Jun 2026"), 1))
		_, err := a.mirror(cache).Release(context.Background())
		if !errors.Is(err, ErrVerify) || !strings.Contains(err.Error(), "older") {
			t.Fatalf("replayed Release: err = %v, want ErrVerify about an older Release", err)
		}
		a.set(p, newer)
		if _, err := a.mirror(cache).Release(context.Background()); err != nil {
			t.Fatalf("the same Release again: %v", err)
		}
		a.set(p, bytes.Replace(newer, []byte("Date: Sat, 05 Dec 2026"), []byte("Date: Sun, 06 Dec 2026"), 1))
		if _, err := a.mirror(cache).Release(context.Background()); err != nil {
			t.Fatalf("a newer Release: %v", err)
		}
	})
	t.Run("unreachable", func(t *testing.T) {
		a := newFakeArchive(t, "gz", true)
		m := a.mirror("")
		a.srv.Close()
		_, err := m.Release(context.Background())
		if err == nil || !strings.Contains(err.Error(), "reachable") {
			t.Fatalf("err = %v, want a hint about reachability", err)
		}
	})
}

func TestGPGVCommandAndStatus(t *testing.T) {
	for _, tc := range []struct {
		name   string
		stderr string
		err    error
		ok     bool
	}{
		{"good", "[GNUPG:] NEWSIG\n[GNUPG:] ERRSIG AAAA 1 8 01 0 9\n[GNUPG:] NO_PUBKEY AAAA\n[GNUPG:] GOODSIG 6ED0 Debian\n[GNUPG:] VALIDSIG 4CB5 2026\n", nil, true},
		{"no good sig", "[GNUPG:] ERRSIG AAAA 1 8 01 0 9\n[GNUPG:] NO_PUBKEY AAAA\n", nil, false},
		{"expired key only", "[GNUPG:] EXPKEYSIG 6ED0 Debian\n[GNUPG:] VALIDSIG 4CB5\n", nil, false},
		{"bad sig wins", "[GNUPG:] GOODSIG 6ED0 x\n[GNUPG:] VALIDSIG 4CB5\n[GNUPG:] BADSIG 1111 y\n", nil, false},
		{"gpgv fails", "", &hostexec.ExitError{Cmd: "gpgv", ExitCode: 1, Stderr: "bad"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &hostexec.Recorder{Respond: func(c hostexec.Cmd) (hostexec.Result, error) {
				return hostexec.Result{Stdout: []byte("Suite: x\n"), Stderr: []byte(tc.stderr)}, tc.err
			}}
			out, err := GPGV{Runner: rec, Keyring: "/k.gpg"}.Verify(context.Background(), []byte("signed"))
			if lines := rec.Lines(); len(lines) != 1 || lines[0] != "gpgv --keyring /k.gpg --status-fd 2 --output - -" {
				t.Fatalf("commands = %q", lines)
			}
			if tc.ok {
				if err != nil || string(out) != "Suite: x\n" {
					t.Fatalf("Verify = %q, %v", out, err)
				}
				return
			}
			if !errors.Is(err, ErrVerify) {
				t.Fatalf("err = %v, want ErrVerify", err)
			}
		})
	}
}

func assertNoPartials(t *testing.T, dir string) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), ".part-") {
			t.Errorf("partial download left behind: %s", p)
		}
		return nil
	})
}
