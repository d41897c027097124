package guest

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/bangerdev/banger/internal/testreq"
)

func TestEnsureKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	s1, pub1, err := EnsureKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	if s1.PublicKey().Type() != ssh.KeyAlgoED25519 || !strings.HasPrefix(pub1, "ssh-ed25519 ") || !strings.HasSuffix(pub1, " banger") {
		t.Fatalf("key %s, line %q", s1.PublicKey().Type(), pub1)
	}
	for path, mode := range map[string]os.FileMode{dir: 0o700, KeyPath(dir): 0o600, KeyPath(dir) + ".pub": 0o644} {
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != mode {
			t.Fatalf("%s: mode %v err %v, want %v", path, fi.Mode().Perm(), err, mode)
		}
	}
	if pub, _ := os.ReadFile(KeyPath(dir) + ".pub"); string(pub) != pub1+"\n" {
		t.Fatalf(".pub = %q", pub)
	}
	// Second use: the same key.
	s2, pub2, err := EnsureKey(dir)
	if err != nil || pub2 != pub1 || !bytes.Equal(s2.PublicKey().Marshal(), s1.PublicKey().Marshal()) {
		t.Fatalf("second EnsureKey: %v %q", err, pub2)
	}
	// Loose permissions are tightened (OpenSSH refuses such keys).
	os.Chmod(KeyPath(dir), 0o644)
	if _, _, err := EnsureKey(dir); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(KeyPath(dir)); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode after EnsureKey: %v", fi.Mode().Perm())
	}
	// A damaged key is reported, never silently replaced.
	os.WriteFile(KeyPath(dir), []byte("garbage"), 0o600)
	if _, _, err := EnsureKey(dir); err == nil || !strings.Contains(err.Error(), "move it away") {
		t.Fatalf("damaged key: %v", err)
	}
	if data, _ := os.ReadFile(KeyPath(dir)); string(data) != "garbage" {
		t.Fatal("damaged key overwritten")
	}
}

func TestEnsureKeyConcurrent(t *testing.T) {
	dir := t.TempDir()
	var wg sync.WaitGroup
	lines := make([]string, 16)
	for i := range lines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, lines[i], _ = EnsureKey(dir)
		}()
	}
	wg.Wait()
	for _, l := range lines {
		if l == "" || l != lines[0] {
			t.Fatalf("concurrent EnsureKey returned different keys: %q vs %q", l, lines[0])
		}
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".id_ed25519-*")); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}

func TestOpenSSHReadsManagedKey(t *testing.T) {
	testreq.Tools(t, "ssh-keygen")
	dir := t.TempDir()
	_, pub, err := EnsureKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("ssh-keygen", "-y", "-f", KeyPath(dir)).CombinedOutput()
	if err != nil {
		t.Fatalf("ssh-keygen -y: %v\n%s", err, out)
	}
	if got := strings.Fields(string(out)); len(got) < 2 || got[0]+" "+got[1] != strings.Join(strings.Fields(pub)[:2], " ") {
		t.Fatalf("ssh-keygen derived %q, banger says %q", out, pub)
	}
}

func TestKnownHostsPinForgetPreserve(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kh")
	other := newSigner(t).PublicKey()
	hashed := knownhosts.HashHostname("hashed.vm")
	original := "# a comment the user wrote\n" +
		"@cert-authority *.example ssh-ed25519 " + strings.Fields(string(ssh.MarshalAuthorizedKey(other)))[1] + "\n" +
		knownhosts.Line([]string{"other.vm"}, other) + "\n" +
		hashed + " " + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(other))) + "\n" +
		"not a valid line\n" +
		"\n"
	os.WriteFile(path, []byte(original), 0o600)
	kh, err := OpenKnownHosts(path)
	if err != nil {
		t.Fatal(err)
	}
	// Forgetting unknown hosts leaves the file byte for byte.
	if err := kh.Forget("nothere.vm", "10.0.0.1"); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(path); string(data) != original {
		t.Fatalf("Forget of unknown hosts changed the file:\n%s", data)
	}
	// Hashed entries are matched.
	if keys, _ := kh.Keys("hashed.vm"); len(keys) != 1 {
		t.Fatal("hashed entry not matched")
	}
	// Pin replaces earlier keys of the same hosts.
	k1, k2 := newSigner(t).PublicKey(), newSigner(t).PublicKey()
	if err := kh.Pin([]string{"172.30.0.9", "app.vm"}, k1); err != nil {
		t.Fatal(err)
	}
	if err := kh.Pin([]string{"172.30.0.9:22", "APP.vm"}, k2); err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"172.30.0.9", "app.vm"} {
		keys, _ := kh.Keys(h)
		if len(keys) != 1 || !bytes.Equal(keys[0].Marshal(), k2.Marshal()) {
			t.Fatalf("%s pinned %d keys after re-Pin", h, len(keys))
		}
	}
	if err := kh.Check([]string{"172.30.0.9"}, k1); !errors.Is(err, ErrHostKeyMismatch) {
		t.Fatalf("old key after Pin: %v", err)
	}
	// Forget removes exactly those hosts, including hashed ones.
	if err := kh.Forget("172.30.0.9", "app.vm", "hashed.vm"); err != nil {
		t.Fatal(err)
	}
	want := "# a comment the user wrote\n" +
		"@cert-authority *.example ssh-ed25519 " + strings.Fields(string(ssh.MarshalAuthorizedKey(other)))[1] + "\n" +
		knownhosts.Line([]string{"other.vm"}, other) + "\n" +
		"not a valid line\n" +
		"\n"
	if data, _ := os.ReadFile(path); string(data) != want {
		t.Fatalf("after Forget:\n%s\nwant:\n%s", data, want)
	}
}

func TestForgetSplitsSharedLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kh")
	key := newSigner(t).PublicKey()
	os.WriteFile(path, []byte(knownhosts.Line([]string{"a.vm", "10.0.0.2", "b.vm"}, key)+"\n"), 0o600)
	kh, _ := OpenKnownHosts(path)
	if err := kh.Forget("10.0.0.2"); err != nil {
		t.Fatal(err)
	}
	for h, want := range map[string]int{"a.vm": 1, "b.vm": 1, "10.0.0.2": 0} {
		if keys, _ := kh.Keys(h); len(keys) != want {
			t.Fatalf("%s: %d keys, want %d", h, len(keys), want)
		}
	}
}

func TestConcurrentFirstUsePinsOnce(t *testing.T) {
	kh, _ := OpenKnownHosts(filepath.Join(t.TempDir(), "kh"))
	key := newSigner(t).PublicKey()
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := kh.Check([]string{"172.30.0.4:22", "x.vm"}, key); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	data, _ := os.ReadFile(kh.Path())
	if n := strings.Count(string(data), "\n"); n != 2 {
		t.Fatalf("%d lines after concurrent first use:\n%s", n, data)
	}
}

func FuzzKnownHostsRead(f *testing.F) {
	f.Add("172.30.0.5 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMvrFv0Tt9Wg5N3Z2nAqzJBLsVZKQ1wz9H1RZ3dzb3c3\n# c\n\n")
	f.Add("|1|abc|def ssh-rsa AAAA\n@revoked * x\n")
	f.Fuzz(func(t *testing.T, content string) {
		path := filepath.Join(t.TempDir(), "kh")
		os.WriteFile(path, []byte(content), 0o600)
		kh := &KnownHosts{path: path}
		if _, err := kh.Keys("172.30.0.5"); err != nil {
			t.Fatal(err)
		}
		if err := kh.Forget("never-pinned.invalid"); err != nil {
			t.Fatal(err)
		}
		after, _ := os.ReadFile(path)
		if string(after) != content && !(content != "" && !strings.HasSuffix(content, "\n") && string(after) == content+"\n") {
			t.Fatalf("Forget of an unknown host rewrote the file: %q -> %q", content, after)
		}
	})
}
