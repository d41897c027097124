package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/update"
)

// updateVersion is the second build the update step installs.
const updateVersion = "v0.99.0-e2e"

// updateStep updates the system install to a second, differently stamped
// build: signed into a release channel in the shared directory, served
// over HTTP from a listener inside the container's network namespace (its
// loopback, c.ServeShare), and installed with the installed banger's own
// `banger update` as root in the container. The owner is refused (sudo).
// The survival loop then checks the VM's pid and boot_id.
func updateStep() survivalStep {
	return survivalStep{"banger update to a second build", func(t *testing.T, c *sysContainer) {
		bin := t.TempDir()
		ld := fmt.Sprintf("-X github.com/bangerdev/banger/internal/buildinfo.Version=%s -X github.com/bangerdev/banger/internal/buildinfo.Commit=e2e", updateVersion)
		if out, err := exec.Command("go", "build", "-trimpath", "-ldflags", ld, "-o", bin+"/", "../../cmd/banger", "../../cmd/bangerd").CombinedOutput(); err != nil {
			t.Fatalf("build the second banger: %v\n%s", err, out)
		}
		key, err := update.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		channel := filepath.Join(c.Share(), "channel")
		if _, err := update.Publish(update.ReleaseOptions{
			OutDir: channel, Version: updateVersion, GOOS: runtime.GOOS, GOARCH: runtime.GOARCH, Key: key, Now: time.Now(),
			Files: map[string]string{"banger": filepath.Join(bin, "banger"), "bangerd": filepath.Join(bin, "bangerd")},
		}); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(c.Share(), "release.pub"), key.Public().PEM(), 0o644); err != nil {
			t.Fatal(err)
		}
		flags := []string{"--manifest-url", c.ServeShare(t) + "/channel/manifest.json", "--pubkey-file", ctrShare + "/release.pub"}

		// The owner cannot update a system install.
		if out, err := c.asOwner(append([]string{"/usr/local/bin/banger", "update"}, flags...)...); err == nil || !strings.Contains(out, "sudo banger update") {
			t.Errorf("update as the owner: %v\n%s", err, out)
		}
		start := time.Now()
		out := c.mustExec(append([]string{"/usr/local/bin/banger", "update"}, flags...)...)
		if !strings.Contains(out, "-> "+updateVersion) {
			t.Fatalf("banger update:\n%s", out)
		}
		t.Logf("banger update (verify, swap, unit refresh, restart, doctor) took %s", time.Since(start).Round(time.Millisecond))
		c.waitHelper()
		c.waitDaemon()
		status := c.mustExec("/usr/local/bin/banger", "system", "status", "--json")
		if n := strings.Count(status, `"version": "`+updateVersion+`"`); n < 3 {
			t.Errorf("system status does not show %s for the CLI, daemon and helper:\n%s", updateVersion, status)
		}
		if rec := c.mustExec("cat", "/etc/banger/install.toml"); !strings.Contains(rec, updateVersion) {
			t.Errorf("the install record was not refreshed by the new build:\n%s", rec)
		}
		for _, p := range []string{"/usr/local/bin/banger.previous", "/usr/local/lib/banger/bangerd.previous"} {
			c.mustExec("test", "-f", p)
		}
	}}
}
