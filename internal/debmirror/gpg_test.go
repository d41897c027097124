package debmirror

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/testreq"
)

// testSigner is a throwaway gpg home with one signing key.
type testSigner struct {
	home, keyring string
	run           hostexec.Runner
}

func newTestSigner(t *testing.T, uid string) *testSigner {
	t.Helper()
	home, err := os.MkdirTemp("", "bgpg") // short: gpg-agent's socket lives here
	if err != nil {
		t.Fatal(err)
	}
	s := &testSigner{home: home, keyring: filepath.Join(home, "trusted.gpg"), run: hostexec.Real{}}
	t.Cleanup(func() {
		s.gpg(context.Background(), "gpgconf", nil, "--kill", "all")
		os.RemoveAll(home)
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := s.gpg(ctx, "gpg", nil, "--batch", "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never"); err != nil {
		t.Fatalf("gpg key generation: %v", err)
	}
	pub, err := s.gpg(ctx, "gpg", nil, "--batch", "--export", uid)
	if err != nil || len(pub) == 0 {
		t.Fatalf("gpg export: %v", err)
	}
	if err := os.WriteFile(s.keyring, pub, 0o644); err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *testSigner) gpg(ctx context.Context, name string, stdin []byte, args ...string) ([]byte, error) {
	c := hostexec.Cmd{Name: name, Args: args, Env: []string{"GNUPGHOME=" + s.home}}
	if stdin != nil {
		c.Stdin = bytes.NewReader(stdin)
	}
	res, err := s.run.Run(ctx, c)
	return res.Stdout, err
}

func (s *testSigner) clearsign(t *testing.T, content []byte) []byte {
	t.Helper()
	out, err := s.gpg(context.Background(), "gpg", content, "--batch", "--pinentry-mode", "loopback", "--passphrase", "", "--digest-algo", "SHA256", "--clearsign")
	if err != nil {
		t.Fatalf("clearsign: %v", err)
	}
	return out
}

// TestGPGVRealSignatures signs a Release with a throwaway key and checks the
// real gpgv path: good signature accepted, altered text rejected, a key
// outside the keyring rejected.
func TestGPGVRealSignatures(t *testing.T) {
	testreq.Tools(t, "gpg", "gpgv", "gpgconf")
	trusted := newTestSigner(t, "banger test archive <archive@test.invalid>")
	other := newTestSigner(t, "someone else <evil@test.invalid>")

	a := newFakeArchive(t, "gz", true)
	path := "dists/" + testSuite + "/InRelease"
	release := bytes.TrimPrefix(a.files[path], []byte("FAKE-SIGNED\n"))
	signed := trusted.clearsign(t, release)

	m := a.mirror(t.TempDir())
	m.Verifier = nil
	m.Runner = hostexec.Real{}
	m.Keyring = trusted.keyring

	a.set(path, signed)
	if _, err := m.Lookup(context.Background(), "hello"); err != nil {
		t.Fatalf("good signature rejected: %v", err)
	}

	for name, body := range map[string][]byte{
		"altered text":            bytes.Replace(signed, []byte("Codename: "+testSuite), []byte("Codename: "+testSuite+"x"), 1),
		"altered hash":            alterHash(signed),
		"untrusted key":           other.clearsign(t, release),
		"unsigned":                release,
		"prepended unsigned text": append([]byte("SHA256:\n "+strings.Repeat("0", 64)+" 1 main/binary-amd64/Packages.gz\n\n"), signed...),
	} {
		t.Run(name, func(t *testing.T) {
			a.set(path, body)
			m2 := a.mirror("")
			m2.Verifier, m2.Runner, m2.Keyring = nil, hostexec.Real{}, trusted.keyring
			rel, err := m2.Release(context.Background())
			if name == "prepended unsigned text" {
				// gpgv outputs only the signed part; the injected hash must not be used.
				if err == nil && rel.Files["main/binary-amd64/Packages.gz"].SHA256 == strings.Repeat("0", 64) {
					t.Fatal("unsigned text outside the signature was trusted")
				}
				return
			}
			if !errors.Is(err, ErrVerify) {
				t.Fatalf("err = %v, want ErrVerify", err)
			}
		})
	}
}

// TestRealMirror verifies the host's Debian mirror end to end: InRelease
// against debian-archive-keyring with gpgv, then the Packages index, and
// resolves the cloud kernel meta package.
func TestRealMirror(t *testing.T) {
	testreq.Tools(t, "gpgv")
	if _, err := os.Stat(DefaultKeyring); err != nil {
		t.Fatalf("%s missing: apt-get install debian-archive-keyring", DefaultKeyring)
	}
	m, err := FromHost("", hostexec.Real{}, testreq.CacheDir(t, "debmirror"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rel, err := m.Release(ctx)
	if err != nil {
		t.Fatalf("real InRelease (is %s reachable?): %v", m.URL, err)
	}
	if len(rel.Files) < 10 {
		t.Fatalf("release lists only %d files", len(rel.Files))
	}
	p, err := m.Lookup(ctx, "linux-image-cloud-amd64")
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Depends) == 0 || !strings.HasPrefix(p.Depends[0][0].Name, "linux-image-") {
		t.Fatalf("linux-image-cloud-amd64 depends on %+v", p.Depends)
	}
	// a forged InRelease (real content, signature stripped) is refused by the real keyring
	forged := &Mirror{URL: m.URL, Suite: m.Suite, Runner: hostexec.Real{}}
	if _, err := forged.verifier().Verify(ctx, []byte("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nSuite: x\n-----BEGIN PGP SIGNATURE-----\n\niQIzBAEBCAAdFiEE\n-----END PGP SIGNATURE-----\n")); !errors.Is(err, ErrVerify) {
		t.Fatalf("forged signature: err = %v, want ErrVerify", err)
	}
}

// alterHash flips the first hex digit of the Packages.gz SHA256 line.
func alterHash(signed []byte) []byte {
	out := bytes.Clone(signed)
	i := bytes.Index(out, []byte("SHA256:\n "))
	if i < 0 {
		panic("no SHA256 field")
	}
	j := i + len("SHA256:\n ")
	if out[j] == '0' {
		out[j] = '1'
	} else {
		out[j] = '0'
	}
	return out
}
