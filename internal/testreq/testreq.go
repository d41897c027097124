// Package testreq states what a test needs from the host (root, host tools,
// real guests) and decides whether a missing requirement skips the test (on
// a developer laptop) or fails it (in CI, where BANGER_TEST_STRICT=1 and
// nothing may be skipped silently).
//
// Layers:
//   - unit tests: need nothing; never call this package.
//   - integration tests: call Root and/or Tools.
//   - end-to-end tests (real guests under QEMU): call E2E, which requires
//     BANGER_E2E=1 (set by `make e2e` and by CI).
package testreq

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Strict reports whether missing requirements must fail tests (CI).
func Strict() bool { return os.Getenv("BANGER_TEST_STRICT") == "1" }

// Missing skips t with the reason, or fails it in strict mode (CI).
func Missing(t testing.TB, what string) {
	t.Helper()
	missing(t, what)
}

func missing(t testing.TB, what string) {
	t.Helper()
	if Strict() {
		t.Fatalf("test requirement missing: %s (BANGER_TEST_STRICT=1: CI must provide it; see .ci/run)", what)
	}
	t.Skipf("skipping: %s", what)
}

// Root requires euid 0.
func Root(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		missing(t, "needs root (run the integration tests as root: sudo make test)")
	}
}

// Tools requires each named program on PATH.
func Tools(t testing.TB, names ...string) {
	t.Helper()
	var absent []string
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			absent = append(absent, n)
		}
	}
	if len(absent) > 0 {
		missing(t, "host tools not installed: "+strings.Join(absent, ", ")+" (.ci/run installs them with apt-get)")
	}
}

// E2E gates tests that boot real guests. They run when BANGER_E2E=1.
func E2E(t testing.TB) {
	t.Helper()
	if os.Getenv("BANGER_E2E") != "1" {
		if Strict() {
			t.Fatalf("end-to-end test not enabled: set BANGER_E2E=1 (CI must run every layer)")
		}
		t.Skip("skipping end-to-end test: set BANGER_E2E=1 to boot real guests")
	}
	Root(t)
	Tools(t, "qemu-system-x86_64")
}

// CacheDir is a persistent directory shared by test runs for expensive
// artifacts (kernel packages, debootstrap trees, images), keyed by the
// caller's sub-path. BANGER_TEST_CACHE overrides the default
// ($XDG_CACHE_HOME or ~/.cache)/banger-test.
func CacheDir(t testing.TB, sub string) string {
	t.Helper()
	base := os.Getenv("BANGER_TEST_CACHE")
	if base == "" {
		c, err := os.UserCacheDir()
		if err != nil {
			c = os.TempDir()
		}
		base = filepath.Join(c, "banger-test")
	}
	dir := filepath.Join(base, sub)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("test cache dir: %v", err)
	}
	return dir
}
