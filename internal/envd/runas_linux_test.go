package envd

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/bangerdev/banger/internal/testreq"
)

// TestRunAsUserKernelChecks: as an unprivileged account, a root-only file
// cannot be read directly, through "..", or through a symlink the user
// owns; the user's own files can; and the calling thread's identity is
// untouched afterwards.
func TestRunAsUserKernelChecks(t *testing.T) {
	testreq.Root(t)
	dir := t.TempDir()
	// t.TempDir's parent is 0700: open the path to others.
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte("s"), 0o600); err != nil {
		t.Fatal(err)
	}
	home := filepath.Join(dir, "home")
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	const uid = 65534 // nobody
	if err := os.Chown(home, uid, uid); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(secret, filepath.Join(home, "link")); err != nil {
		t.Fatal(err)
	}
	a := &Account{Name: "nobody", UID: uid, GID: uid, Home: home}
	for _, p := range []string{secret, resolvePath(a, "../secret"), resolvePath(a, "link")} {
		err := RunAsUser(a, func() error { _, err := os.ReadFile(p); return err })
		if !errors.Is(err, fs.ErrPermission) {
			t.Errorf("read %s as nobody: %v, want permission denied", p, err)
		}
	}
	err := RunAsUser(a, func() error { return os.WriteFile(filepath.Join(home, "mine"), []byte("m"), 0o644) })
	if err != nil {
		t.Fatalf("write own file: %v", err)
	}
	fi, err := os.Stat(filepath.Join(home, "mine"))
	if err != nil {
		t.Fatal(err)
	}
	if owner := infoOf(filepath.Join(home, "mine"), fi).Owner; owner != "nobody" && owner != "65534" {
		t.Fatalf("new file owner %q, want nobody", owner)
	}
	if _, err := os.ReadFile(secret); err != nil {
		t.Fatalf("the server's own identity changed: %v", err)
	}
}
