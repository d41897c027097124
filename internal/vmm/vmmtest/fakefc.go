package vmmtest

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/hostexec"
)

const fakeDirEnv = "VMMTEST_FAKEFC_DIR"

// FakeFC builds cmd/fakefc once per test process and returns a directory
// holding links to it named "firecracker" and "jailer", so processes started
// through them have the real names as comm. Helper subprocesses reuse the
// build through $VMMTEST_FAKEFC_DIR.
func FakeFC(t *testing.T) string {
	t.Helper()
	if dir := os.Getenv(fakeDirEnv); dir != "" {
		if _, err := os.Stat(filepath.Join(dir, "firecracker")); err == nil {
			return dir
		}
	}
	dir, err := os.MkdirTemp("", "fakefc-bin")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin := filepath.Join(dir, "fakefc")
	if _, err := (hostexec.Real{}).Run(ctx, hostexec.Cmd{Name: "go", Args: []string{"build", "-o", bin, "github.com/bangerdev/banger/cmd/fakefc"}}); err != nil {
		t.Fatalf("build fakefc: %v", err)
	}
	for _, name := range []string{"firecracker", "jailer"} {
		if err := os.Symlink(bin, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	// Shared with helper subprocesses; removed by the process that built it.
	os.Setenv(fakeDirEnv, dir)
	t.Cleanup(func() {
		os.Unsetenv(fakeDirEnv)
		os.RemoveAll(dir)
	})
	return dir
}
