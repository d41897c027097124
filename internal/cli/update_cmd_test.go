package cli

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/buildinfo"
	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/system"
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

// In system mode, units are refreshed by the installed build's own
// `system install` (run from a private copy holding both binaries, for the
// recorded owner) and services restarted with its `system restart`.
func TestSystemServicesDriveTheInstalledBuild(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, system.ConfigDir), 0o755)
	os.WriteFile(filepath.Join(root, system.RecordPath), []byte("[owner]\nuser = \"alice\"\nuid = 1000\ngid = 1000\nhome = \"/home/alice\"\n"), 0o644)
	bin, lib := t.TempDir(), t.TempDir()
	in := update.Installation{Targets: []update.Target{{Name: "banger", Path: filepath.Join(bin, "banger")}, {Name: "bangerd", Path: filepath.Join(lib, "bangerd")}}}
	for _, tg := range in.Targets {
		os.WriteFile(tg.Path, []byte("#!/bin/sh\n# "+tg.Name+"\n"), 0o755)
	}
	var copies []string
	rr := &hostexec.Recorder{Respond: func(c hostexec.Cmd) (hostexec.Result, error) {
		if c.Args[1] == "install" {
			// Both binaries sit next to the banger that runs.
			for _, n := range []string{"banger", "bangerd"} {
				data, err := os.ReadFile(filepath.Join(filepath.Dir(c.Name), n))
				if err != nil || !strings.Contains(string(data), "# "+n) {
					t.Errorf("%s not beside %s: %v", n, c.Name, err)
				}
			}
			copies = append(copies, filepath.Dir(c.Name))
		}
		return hostexec.Result{}, nil
	}}
	cache := t.TempDir()
	s := &systemServices{a: &app{env: Env{SystemRoot: root}}, runner: rr, install: in, cacheDir: cache}
	if err := s.RefreshUnits(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	lines := rr.Lines()
	if len(lines) != 2 || !strings.HasSuffix(lines[0], "/banger system install --owner alice --no-start") || !strings.HasPrefix(lines[0], cache+"/units-") ||
		lines[1] != filepath.Join(bin, "banger")+" system restart" {
		t.Fatalf("ran %q", lines)
	}
	if _, err := os.Stat(copies[0]); err == nil {
		t.Errorf("the private copy %s was left behind", copies[0])
	}
}
