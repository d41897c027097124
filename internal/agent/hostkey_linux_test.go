package agent

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/crypto/ssh"
)

// fakeProc makes a /proc with one process per entry (pid -> comm, ppid).
func fakeProc(t *testing.T, procs map[string][2]string) string {
	t.Helper()
	dir := t.TempDir()
	for pid, p := range procs {
		if err := os.MkdirAll(filepath.Join(dir, pid), 0o755); err != nil {
			t.Fatal(err)
		}
		_ = os.WriteFile(filepath.Join(dir, pid, "comm"), []byte(p[0]+"\n"), 0o644)
		_ = os.WriteFile(filepath.Join(dir, pid, "stat"), []byte(pid+" ("+p[0]+") S "+p[1]+" 1 1 0 -1\n"), 0o644)
	}
	return dir
}

// TestApplyHostKeySSHD: the key files are written either way; with no sshd
// running nothing is checked; with one running and
// SSHDKeysPerConnection, the handshake is skipped and said so.
func TestApplyHostKeySSHD(t *testing.T) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	key := pem.EncodeToMemory(block)
	signer, _ := ssh.NewSignerFromKey(priv)
	for name, tc := range map[string]struct {
		procs map[string][2]string
		want  string
	}{
		"no sshd":       {map[string][2]string{"1": {"systemd", "0"}}, SSHDNotRunning},
		"sshd, trusted": {map[string][2]string{"1": {"systemd", "0"}, "4242": {"sshd", "1"}, "4300": {"sshd", "4242"}}, SSHDTrusted},
	} {
		t.Run(name, func(t *testing.T) {
			g := &Guest{Root: t.TempDir(), ProcRoot: fakeProc(t, tc.procs), Kernel: true}
			fp, how, err := g.applyHostKey(context.Background(), Identity{HostKey: key, Hostname: "vm1", SSHDKeysPerConnection: true})
			if err != nil || how != tc.want || fp != ssh.FingerprintSHA256(signer.PublicKey()) {
				t.Fatalf("applyHostKey = %q, %q, %v; want %s", fp, how, err, tc.want)
			}
			got, err := os.ReadFile(filepath.Join(g.Root, "etc/ssh/ssh_host_ed25519_key"))
			if err != nil || string(got) != string(key) {
				t.Fatalf("key file: %v", err)
			}
			pub, err := os.ReadFile(filepath.Join(g.Root, "etc/ssh/ssh_host_ed25519_key.pub"))
			if err != nil || string(pub) != string(ssh.MarshalAuthorizedKey(signer.PublicKey()))[:len(ssh.MarshalAuthorizedKey(signer.PublicKey()))-1]+" root@vm1\n" {
				t.Fatalf("pub file %q: %v", pub, err)
			}
		})
	}
}
