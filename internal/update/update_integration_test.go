package update_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/testreq"
)

const pkg = "github.com/bangerdev/banger/internal/buildinfo"

// buildBanger builds banger and bangerd stamped with version into dir.
func buildBanger(t *testing.T, dir, version string) {
	t.Helper()
	ld := fmt.Sprintf("-X %s.Version=%s -X %s.Commit=c%s", pkg, version, pkg, strings.ReplaceAll(version, ".", ""))
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", ld, "-o", dir+"/", "../../cmd/banger", "../../cmd/bangerd")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", version, err, out)
	}
	// A release carries the static guest agent too (banger-release refuses
	// a --bin without it), and a user install keeps it beside bangerd.
	cmd = exec.Command("go", "build", "-trimpath", "-ldflags", ld+" -s -w", "-o", dir+"/", "../../cmd/banger-agent")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s banger-agent: %v\n%s", version, err, out)
	}
}

// installed are the files a user install holds and an update replaces.
var installed = []string{"banger", "bangerd", "banger-agent"}

type userInstall struct {
	t      *testing.T
	prefix string // holds banger and bangerd
	env    []string
}

func (u *userInstall) run(args ...string) (string, string, int) {
	u.t.Helper()
	cmd := exec.Command(filepath.Join(u.prefix, "banger"), args...)
	cmd.Env = u.env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		u.t.Fatalf("banger %v: %v", args, err)
	}
	return stdout.String(), stderr.String(), code
}

func (u *userInstall) must(args ...string) string {
	u.t.Helper()
	out, errOut, code := u.run(args...)
	if code != 0 {
		u.t.Fatalf("banger %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

func (u *userInstall) daemonVersion() string {
	u.t.Helper()
	out, _, _ := u.run("daemon", "status", "--json")
	var st struct {
		Running bool `json:"running"`
		Daemon  struct {
			Build struct {
				Version string `json:"version"`
			} `json:"build"`
		} `json:"daemon"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		u.t.Fatalf("daemon status --json: %v: %s", err, out)
	}
	if !st.Running {
		return "not running"
	}
	return st.Daemon.Build.Version
}

func (u *userInstall) binaries() map[string][]byte {
	u.t.Helper()
	m := map[string][]byte{}
	for _, n := range installed {
		data, err := os.ReadFile(filepath.Join(u.prefix, n))
		if err != nil {
			u.t.Fatal(err)
		}
		m[n] = data
	}
	return m
}

func sameBinaries(a, b map[string][]byte) bool {
	for _, n := range installed {
		if !bytes.Equal(a[n], b[n]) {
			return false
		}
	}
	return true
}

// TestUserModeUpdateEndToEnd updates a real user-mode install (banger and
// bangerd in a temporary prefix, its daemon running) to a second,
// differently stamped build served from a loopback HTTP server; then to a
// third whose daemon does not come up (rolled back); then rolls back by
// hand.
func TestUserModeUpdateEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds banger three times; run without -short")
	}
	testreq.Tools(t, "go", "openssl")
	root := t.TempDir()
	u := &userInstall{t: t, prefix: filepath.Join(root, "prefix", "bin")}
	buildBanger(t, u.prefix, "v1.0.0")
	buildBanger(t, filepath.Join(root, "v1.1.0"), "v1.1.0")
	buildBanger(t, filepath.Join(root, "v1.2.0"), "v1.2.0")
	tool := filepath.Join(root, "tool")
	if out, err := exec.Command("go", "build", "-o", tool+"/", "../../cmd/banger-release").CombinedOutput(); err != nil {
		t.Fatalf("build banger-release: %v\n%s", err, out)
	}
	release := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(filepath.Join(tool, "banger-release"), args...).CombinedOutput(); err != nil {
			t.Fatalf("banger-release %v: %v\n%s", args, err, out)
		}
	}
	key := filepath.Join(root, "keys", "release.key")
	os.MkdirAll(filepath.Dir(key), 0o700)
	release("--gen-key", key)
	channel := filepath.Join(root, "channel")
	release("--key", key, "--out", channel, "--version", "v1.1.0", "--bin", filepath.Join(root, "v1.1.0"))
	srv := httptest.NewServer(http.FileServer(http.Dir(channel)))
	defer srv.Close()

	// A state of its own, and a DNS port nobody else uses.
	l, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dnsAddr := l.LocalAddr().String()
	l.Close()
	cfgDir := filepath.Join(root, "config")
	os.MkdirAll(cfgDir, 0o700)
	os.WriteFile(filepath.Join(cfgDir, "config.toml"), []byte(fmt.Sprintf("[network]\ndns_listen = %q\n", dnsAddr)), 0o600)
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "BANGER_") {
			u.env = append(u.env, e)
		}
	}
	u.env = append(u.env,
		"BANGER_STATE_DIR="+filepath.Join(root, "state"),
		"BANGER_CACHE_DIR="+filepath.Join(root, "cache"),
		"BANGER_RUNTIME_DIR="+filepath.Join(root, "run"),
		"BANGER_CONFIG_DIR="+cfgDir,
		"NO_COLOR=1",
	)
	t.Cleanup(func() { u.run("daemon", "stop") })
	channelFlags := []string{"--manifest-url", srv.URL + "/manifest.json", "--pubkey-file", key + ".pub"}

	u.must("vm", "create", "--no-start", "--name", "keep")
	if v := u.daemonVersion(); v != "v1.0.0" {
		t.Fatalf("daemon before the update: %s", v)
	}
	v1 := u.binaries()

	// Tampered releases are refused by the real CLI and change nothing
	// (before anything is cached: a verified cached tarball is reused).
	relDir := filepath.Join(channel, "v1.1.0")
	tarballPath := filepath.Join(relDir, "banger_v1.1.0_"+runtime.GOOS+"_"+runtime.GOARCH+".tar.gz")
	otherKey := filepath.Join(root, "keys", "other.key")
	release("--gen-key", otherKey)
	for _, tc := range []struct {
		name   string
		tamper func() (restore func())
		want   string
	}{
		{"flipped tarball byte", func() func() {
			orig := must(os.ReadFile(tarballPath))
			bad := bytes.Clone(orig)
			bad[len(bad)/2] ^= 1
			os.WriteFile(tarballPath, bad, 0o644)
			return func() { os.WriteFile(tarballPath, orig, 0o644) }
		}, "hash mismatch"},
		{"signature by another key", func() func() {
			sigPath := filepath.Join(relDir, "SHA256SUMS.sig")
			orig := must(os.ReadFile(sigPath))
			// Sign the same SHA256SUMS with another key (openssl's format).
			out, err := exec.Command("openssl", "dgst", "-sha256", "-sign", otherKey, filepath.Join(relDir, "SHA256SUMS")).Output()
			if err != nil {
				t.Fatalf("openssl: %v", err)
			}
			os.WriteFile(sigPath, out, 0o644)
			return func() { os.WriteFile(sigPath, orig, 0o644) }
		}, "not signed by the pinned release key"},
		{"manifest points at a missing file", func() func() {
			os.Rename(tarballPath, tarballPath+".away")
			return func() { os.Rename(tarballPath+".away", tarballPath) }
		}, "404"},
	} {
		restore := tc.tamper()
		out, errOut, code := u.run(append([]string{"update"}, channelFlags...)...)
		restore()
		if code == 0 || !strings.Contains(errOut, tc.want) {
			t.Fatalf("%s: exit %d\n%s%s", tc.name, code, out, errOut)
		}
		if !sameBinaries(u.binaries(), v1) {
			t.Fatalf("%s: the installed binaries changed", tc.name)
		}
		if _, err := os.Stat(filepath.Join(u.prefix, "banger.previous")); err == nil {
			t.Fatalf("%s: banger.previous appeared", tc.name)
		}
	}
	if v := u.daemonVersion(); v != "v1.0.0" {
		t.Fatalf("daemon after the refused updates: %s", v)
	}

	out := u.must(append([]string{"update", "--check"}, channelFlags...)...)
	if !strings.Contains(out, "v1.1.0 is available") {
		t.Fatalf("--check: %s", out)
	}
	out = u.must(append([]string{"update", "--dry-run"}, channelFlags...)...)
	if !strings.Contains(out, "nothing changed") || !sameBinaries(u.binaries(), v1) {
		t.Fatalf("--dry-run changed the install: %s", out)
	}

	// 1. A real update.
	start := time.Now()
	out = u.must(append([]string{"update"}, channelFlags...)...)
	t.Logf("user-mode update v1.0.0 -> v1.1.0 (download, verify, stage, swap, restart, doctor): %s", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(out, "updated banger v1.0.0 -> v1.1.0") {
		t.Fatalf("update: %s", out)
	}
	if v := u.daemonVersion(); v != "v1.1.0" {
		t.Fatalf("daemon after the update: %s", v)
	}
	if got := u.must("version", "--json"); !strings.Contains(got, `"version": "v1.1.0"`) {
		t.Fatalf("installed banger: %s", got)
	}
	for _, n := range installed {
		prev, _ := os.ReadFile(filepath.Join(u.prefix, n+".previous"))
		if !bytes.Equal(prev, v1[n]) {
			t.Errorf("%s.previous is not the v1.0.0 binary", n)
		}
	}
	if out := u.must("vm", "list"); !strings.Contains(out, "keep") {
		t.Fatalf("the state did not survive the update: %s", out)
	}
	v11 := u.binaries()

	// 2. A release whose daemon does not come up is rolled back.
	broken := filepath.Join(root, "broken")
	os.MkdirAll(broken, 0o755)
	for _, n := range []string{"banger", "banger-agent"} {
		os.WriteFile(filepath.Join(broken, n), must(os.ReadFile(filepath.Join(root, "v1.2.0", n))), 0o755)
	}
	os.WriteFile(filepath.Join(broken, "bangerd"), []byte(fmt.Sprintf(`#!/bin/sh
case "$1" in --version|--check-migrations) exec %s "$@" ;; esac
echo "bangerd: simulated start-up failure" >&2
exit 1
`, filepath.Join(root, "v1.2.0", "bangerd"))), 0o755)
	release("--key", key, "--out", channel, "--version", "v1.2.0", "--bin", broken)
	start = time.Now()
	out, errOut, code := u.run(append([]string{"update"}, channelFlags...)...)
	t.Logf("failed update to v1.2.0 and automatic rollback: %s", time.Since(start).Round(time.Millisecond))
	if code == 0 || !strings.Contains(errOut, "(rolled back to previous install)") || !strings.Contains(errOut, "simulated start-up failure") {
		t.Fatalf("broken update: exit %d\n%s%s", code, out, errOut)
	}
	if !sameBinaries(u.binaries(), v11) {
		t.Fatal("the install is not byte-identical to v1.1.0 after the rollback")
	}
	if v := u.daemonVersion(); v != "v1.1.0" {
		t.Fatalf("daemon after the rollback: %s", v)
	}

	// 3. --rollback by hand returns to v1.0.0 (the .previous of the last
	// successful update).
	out = u.must(append([]string{"update", "--rollback"}, channelFlags...)...)
	if !strings.Contains(out, "v1.0.0 is running") || !sameBinaries(u.binaries(), v1) {
		t.Fatalf("--rollback: %s", out)
	}
	if v := u.daemonVersion(); v != "v1.0.0" {
		t.Fatalf("daemon after --rollback: %s", v)
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}
