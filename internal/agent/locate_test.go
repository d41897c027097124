package agent_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/agent"
)

func TestFindBinary(t *testing.T) {
	t.Setenv(agent.EnvBinary, "")
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	os.MkdirAll(bin, 0o755)
	exe := filepath.Join(bin, "bangerd")
	if _, err := agent.FindBinary(exe); err == nil {
		t.Fatal("found an agent in an empty dir")
	}
	// A dynamically linked executable is refused.
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	data, _ := os.ReadFile(sh)
	os.WriteFile(filepath.Join(bin, agent.BinaryName), data, 0o755)
	if _, err := agent.FindBinary(exe); err == nil || !strings.Contains(err.Error(), "dynamically linked") {
		t.Fatalf("dynamic binary: %v", err)
	}
	// A static one beside exe is taken.
	out := filepath.Join(dir, "static")
	cmd := exec.Command("go", "build", "-o", out, "../../cmd/banger-agent")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if testing.Short() {
		t.Skip("-short: no static build")
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, b)
	}
	os.Remove(filepath.Join(bin, agent.BinaryName))
	lib := filepath.Join(dir, "lib", "banger")
	os.MkdirAll(lib, 0o755)
	os.Rename(out, filepath.Join(lib, agent.BinaryName))
	got, err := agent.FindBinary(exe)
	if err != nil || got != filepath.Join(lib, agent.BinaryName) {
		t.Fatalf("FindBinary = %q, %v", got, err)
	}
	t.Setenv(agent.EnvBinary, sh)
	if _, err := agent.FindBinary(exe); err == nil {
		t.Fatal("env override to a dynamic binary accepted")
	}
}
