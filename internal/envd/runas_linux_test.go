package envd

import (
	"errors"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
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

// TestServerRunsAsTheUser: with real credentials (root), processes run as
// the request's user and /files reads and writes with its permissions.
func TestServerRunsAsTheUser(t *testing.T) {
	testreq.Root(t)
	root := t.TempDir()
	for _, d := range []string{filepath.Dir(root), root} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	home := filepath.Join(root, "home")
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	passwd := "root:x:0:0:root:/root:/bin/sh\nuser:x:65534:65534::" + home + ":/bin/sh\n"
	if err := os.WriteFile(filepath.Join(root, "etc/passwd"), []byte(passwd), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(home, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(root, "secret")
	if err := os.WriteFile(secret, []byte("s"), 0o600); err != nil {
		t.Fatal(err)
	}
	ts, _ := newTestServer(t, func(o *Options) {
		o.Accounts = FileAccounts{Root: root}
		o.AsUser = RunAsUser
		o.SwitchCredential = nil
	})
	evs, e := startStream(t, ts, "Start", StartRequest{Process: &ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", "id -u; echo $HOME; pwd"}}}, nil)
	if _, out, _, end := collect(evs); e != nil || end == nil || out != "65534\n"+home+"\n"+home+"\n" {
		t.Fatalf("process as user: %v %q", e, out)
	}
	req, _ := http.NewRequest("POST", ts.URL+"/files?path=up.txt", strings.NewReader("x"))
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("X-Access-Token", testToken)
	if resp := do(t, req); resp.StatusCode != 200 {
		t.Fatalf("upload: %d", resp.StatusCode)
	}
	fi, err := os.Stat(filepath.Join(home, "up.txt"))
	if err != nil || fi.Sys().(*syscall.Stat_t).Uid != 65534 {
		t.Fatalf("uploaded file owner: %v %+v", err, fi)
	}
	for _, p := range []string{secret, "../secret"} {
		req, _ = http.NewRequest("GET", ts.URL+"/files?path="+p, nil)
		req.Header.Set("X-Access-Token", testToken)
		if resp := do(t, req); resp.StatusCode != http.StatusForbidden {
			t.Fatalf("read %s as user: %d, want 403", p, resp.StatusCode)
		}
	}
	req, _ = http.NewRequest("POST", ts.URL+"/files?path=/etc-owned-by-root.txt", strings.NewReader("x"))
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("X-Access-Token", testToken)
	if resp := do(t, req); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("write to / as user: %d, want 403", resp.StatusCode)
	}
	if _, err := os.Stat("/etc-owned-by-root.txt"); err == nil {
		os.Remove("/etc-owned-by-root.txt")
		t.Fatal("user wrote into /")
	}
	// root may.
	req, _ = http.NewRequest("GET", ts.URL+"/files?username=root&path="+secret, nil)
	req.Header.Set("X-Access-Token", testToken)
	if resp := do(t, req); resp.StatusCode != 200 {
		t.Fatalf("read as root: %d", resp.StatusCode)
	}
}
