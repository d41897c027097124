package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/buildinfo"
	"github.com/bangerdev/banger/internal/update"
)

// userUpdateEnv points the layout at temporary user-mode directories.
func userUpdateEnv(t *testing.T) Env {
	dir := t.TempDir()
	for _, k := range []string{"STATE", "CACHE", "RUNTIME", "CONFIG"} {
		t.Setenv("BANGER_"+k+"_DIR", filepath.Join(dir, strings.ToLower(k)))
	}
	t.Setenv("BANGER_MODE", "")
	return Env{Build: buildinfo.Info{Version: "v1.0.0"}, SystemRoot: t.TempDir(), DaemonBinary: "/bin/true"}
}

func TestUpdateCommandRefusesBadInputClearly(t *testing.T) {
	env := userUpdateEnv(t)
	badKey := filepath.Join(t.TempDir(), "bad.pub")
	os.WriteFile(badKey, []byte("not a key"), 0o644)
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"rollback with --to", []string{"update", "--rollback", "--to", "v1.2.3"}, "--rollback cannot be combined"},
		{"no channel", []string{"update", "--check"}, "pass --manifest-url and --pubkey-file"},
		{"missing key file", []string{"update", "--pubkey-file", "/nonexistent/k.pub", "--manifest-url", "http://127.0.0.1:1/m.json"}, "read release public key"},
		{"bad key file", []string{"update", "--pubkey-file", badKey, "--manifest-url", "http://127.0.0.1:1/m.json"}, "bad release key"},
		{"unreachable", []string{"update", "--check", "--pubkey-file", pubKeyFile(t), "--manifest-url", "http://127.0.0.1:1/m.json"}, "release server unreachable"},
		{"bad --to", []string{"update", "--check", "--to", "latest", "--pubkey-file", pubKeyFile(t), "--manifest-url", "http://127.0.0.1:1/m.json"}, "not a version like v1.2.3"},
		{"rollback without previous", []string{"update", "--rollback"}, "nothing to roll back to"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, serr, code := runSystemCLI(t, env, c.args...)
			if code != 1 || !strings.Contains(serr, c.want) || strings.Contains(serr, "panic") {
				t.Fatalf("exit %d, stderr %q; want %q", code, serr, c.want)
			}
		})
	}
}

func pubKeyFile(t *testing.T) string {
	t.Helper()
	k, err := update.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "release.pub")
	if err := os.WriteFile(p, k.Public().PEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
