// Package sdktest runs the real e2b SDK (npm e2b, pinned to Version)
// against a banger E2B API: the SDK is installed once from the npm
// registry into the test cache (testreq.CacheDir), and sdk_check.mjs (the
// script the issue describes) runs with Node.
package sdktest

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/testreq"
)

// Version is the pinned SDK version.
const Version = "2.51.0"

//go:embed sdk_check.mjs
var checkScript []byte

// Install makes sure the SDK is installed in the test cache and returns
// the node_modules directory. It needs node and npm (testreq.Tools).
func Install(t testing.TB) string {
	t.Helper()
	testreq.Tools(t, "node", "npm")
	dir := testreq.CacheDir(t, "npm/e2b-"+Version)
	mods := filepath.Join(dir, "node_modules")
	if _, err := os.Stat(filepath.Join(mods, "e2b", "package.json")); err == nil {
		return mods
	}
	tmp, err := os.MkdirTemp(dir, "install-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "npm", "install", "--no-audit", "--no-fund", "--no-save", "--prefix", tmp, "e2b@"+Version)
	cmd.Env = append(os.Environ(), "npm_config_update_notifier=false")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("npm install e2b@%s: %v\n%s", Version, err, out)
	}
	if err := os.Rename(filepath.Join(tmp, "node_modules"), mods); err != nil && !os.IsExist(err) {
		if _, serr := os.Stat(filepath.Join(mods, "e2b", "package.json")); serr != nil {
			t.Fatalf("install e2b into the cache: %v", err)
		}
	}
	return mods
}

// Script writes script (an ES module importing "e2b") next to a
// node_modules link and returns its path.
func Script(t testing.TB, name string, script []byte) string {
	t.Helper()
	mods := Install(t)
	dir := t.TempDir()
	if err := os.Symlink(mods, filepath.Join(dir, "node_modules")); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, script, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// RunNode runs a script with env added and returns its output; a failing
// script fails t with the output. wrap prefixes the command (e.g. "ip
// netns exec NS").
func RunNode(t testing.TB, ctx context.Context, path string, env map[string]string, wrap ...string) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal(err)
	}
	out, err := runNode(ctx, node, path, env, wrap...)
	if err != nil {
		t.Fatalf("node %s: %v\n%s", filepath.Base(path), err, out)
	}
	return out
}

func runNode(ctx context.Context, node, path string, env map[string]string, wrap ...string) (string, error) {
	argv := append(append([]string{}, wrap...), node, path)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = os.Environ()
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// TryCheck is Check that returns the failure instead of failing t (for a
// caller that decides about a retry).
func TryCheck(t testing.TB, ctx context.Context, env map[string]string) (string, error) {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		return "", err
	}
	out, err := runNode(ctx, node, Script(t, "sdk_check.mjs", checkScript), env)
	if err == nil && !strings.Contains(out, "SDK CHECK OK") {
		err = errors.New("sdk check did not finish")
	}
	return out, err
}

// Check runs sdk_check.mjs with env (E2B_API_URL, E2B_SANDBOX_URL,
// E2B_API_KEY, OTHER_API_KEY, CHECK_ISOLATION, EXPECT_*) and fails t
// unless it reports success. It returns the script's output.
func Check(t testing.TB, ctx context.Context, env map[string]string, wrap ...string) string {
	t.Helper()
	out := RunNode(t, ctx, Script(t, "sdk_check.mjs", checkScript), env, wrap...)
	if !strings.Contains(out, "SDK CHECK OK") {
		t.Fatalf("sdk check did not finish:\n%s", out)
	}
	return out
}

// Env is the SDK environment for an API at url with key.
func Env(url, key string) map[string]string {
	return map[string]string{"E2B_API_URL": url, "E2B_SANDBOX_URL": url, "E2B_API_KEY": key, "E2B_DOMAIN": "banger.local"}
}

// Describe formats env for logs without the keys.
func Describe(env map[string]string) string {
	return fmt.Sprintf("api %s sandbox %s", env["E2B_API_URL"], env["E2B_SANDBOX_URL"])
}
