package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/buildinfo"
	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/system"
)

func runSystemCLI(t *testing.T, env Env, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	env.Stdin, env.Stdout, env.Stderr = strings.NewReader(""), &out, &errb
	if env.Getenv == nil {
		env.Getenv = func(string) string { return "" }
	}
	code := Main(context.Background(), env, args)
	return out.String(), errb.String(), code
}

// `banger system install --root DIR --owner nobody --no-start` installs
// under DIR from the binaries next to the running banger, and uninstall
// --root --purge removes it again.
func TestSystemInstallRootCommand(t *testing.T) {
	src := t.TempDir()
	for _, b := range []string{"banger", "bangerd", "banger-agent"} {
		if err := os.WriteFile(filepath.Join(src, b), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	root := t.TempDir()
	rr := &hostexec.Recorder{}
	build := buildinfo.Info{Version: "v9.9.9", Commit: "c"}
	env := Env{Build: build, System: &system.Host{Runner: rr, Build: build, Executable: filepath.Join(src, "banger"),
		Getenv: func(string) string { return "" }}}
	out, serr, code := runSystemCLI(t, env, "system", "install", "--root", root, "--owner", "nobody", "--no-start")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, serr)
	}
	if !strings.Contains(out, "installed under "+root+" for owner nobody") {
		t.Errorf("stdout: %s", out)
	}
	rec, err := system.ReadRecord(root)
	if err != nil || rec.Owner.User != "nobody" || rec.Build != build {
		t.Fatalf("record %+v %v", rec, err)
	}
	if len(rr.Calls()) != 0 {
		t.Errorf("ran %v", rr.Lines())
	}
	if _, serr, code := runSystemCLI(t, env, "system", "install", "--root", root, "--owner", "no-such-user-xyz"); code == 0 || !strings.Contains(serr, "unknown owner") {
		t.Errorf("unknown owner: exit %d %s", code, serr)
	}
	if _, serr, code := runSystemCLI(t, env, "system", "uninstall", "--root", root, "--purge"); code != 0 {
		t.Fatalf("uninstall: %s", serr)
	}
	if system.Installed(root) {
		t.Error("still installed")
	}
}

// With a system install record, the CLI talks to the system daemon and
// never starts a user-mode one; daemon status says which daemon it is.
func TestCLIUsesSystemDaemonWhenInstalled(t *testing.T) {
	if _, err := os.Stat(system.DaemonSocket); err == nil {
		t.Skip("this host runs a system bangerd")
	}
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, system.ConfigDir), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, system.RecordPath), []byte("[owner]\nuser = \"alice\"\nuid = 1000\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	env := Env{SystemRoot: root, DaemonBinary: "/nonexistent/bangerd-must-not-start"}
	out, _, code := runSystemCLI(t, env, "daemon", "status")
	if code != 3 || !strings.Contains(out, "system daemon (bangerd.service) is not answering at /run/banger/bangerd.sock") {
		t.Errorf("daemon status: exit %d: %s", code, out)
	}
	_, serr, code := runSystemCLI(t, env, "vm", "list")
	if code == 0 || !strings.Contains(serr, "sudo banger system restart") || strings.Contains(serr, "bangerd-must-not-start") {
		t.Errorf("vm list: exit %d: %s", code, serr)
	}
	_, serr, code = runSystemCLI(t, env, "daemon", "stop")
	if code == 0 || !strings.Contains(serr, "systemctl stop bangerd") {
		t.Errorf("daemon stop: exit %d: %s", code, serr)
	}
	// BANGER_MODE=user picks the user-mode daemon even then.
	env.Getenv = func(k string) string {
		if k == "BANGER_MODE" {
			return "user"
		}
		return os.Getenv(k)
	}
	out, _, _ = runSystemCLI(t, env, "daemon", "status")
	if strings.Contains(out, "system daemon") {
		t.Errorf("BANGER_MODE=user: %s", out)
	}
}
