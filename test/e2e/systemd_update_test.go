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

// Versions of the builds the update steps publish.
const (
	updateVersion = "v0.99.0-e2e" // a good second build
	brokenVersion = "v0.99.1-e2e" // its bangerd never comes up
)

// releaseChannel is the signed release channel the update steps publish
// into the container's /srv/share/channel.
type releaseChannel struct {
	key *update.PrivateKey
	dir string // host side
}

// updateSteps are the survival steps for `banger update`: an update to a
// second, differently stamped build, then an update to a third whose
// daemon and helper never come up, which must roll back. Releases are
// signed into c.Share() and served over HTTP from a listener inside the
// container's network namespace (its loopback, c.ServeShare); root in the
// container runs the installed banger's own `banger update`.
func updateSteps() []survivalStep {
	rc := &releaseChannel{}
	return []survivalStep{
		{"banger update to a second build", rc.updateStep},
		{"failed banger update rolls back", rc.rollbackStep},
	}
}

func (rc *releaseChannel) flags(c *sysContainer, t *testing.T) []string {
	return []string{"--manifest-url", c.ServeShare(t) + "/channel/manifest.json", "--pubkey-file", ctrShare + "/release.pub"}
}

// publish builds banger and bangerd stamped with version and signs them
// into the channel; edit may change the built files first.
func (rc *releaseChannel) publish(t *testing.T, c *sysContainer, version string, edit func(bin string)) {
	t.Helper()
	if rc.key == nil {
		k, err := update.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		rc.key, rc.dir = k, filepath.Join(c.Share(), "channel")
		if err := os.WriteFile(filepath.Join(c.Share(), "release.pub"), k.Public().PEM(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(c.Share(), "build-"+version)
	ld := fmt.Sprintf("-X github.com/bangerdev/banger/internal/buildinfo.Version=%s -X github.com/bangerdev/banger/internal/buildinfo.Commit=e2e", version)
	if out, err := exec.Command("go", "build", "-trimpath", "-ldflags", ld, "-o", bin+"/", "../../cmd/banger", "../../cmd/bangerd").CombinedOutput(); err != nil {
		t.Fatalf("build banger %s: %v\n%s", version, err, out)
	}
	agent := exec.Command("go", "build", "-trimpath", "-ldflags", ld+" -s -w", "-o", bin+"/", "../../cmd/banger-agent")
	agent.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := agent.CombinedOutput(); err != nil {
		t.Fatalf("build banger-agent %s: %v\n%s", version, err, out)
	}
	files := map[string]string{"banger": filepath.Join(bin, "banger"), "bangerd": filepath.Join(bin, "bangerd"), "banger-agent": filepath.Join(bin, "banger-agent")}
	if edit != nil {
		edit(bin)
	}
	if _, err := update.Publish(update.ReleaseOptions{OutDir: rc.dir, Version: version, GOOS: runtime.GOOS, GOARCH: runtime.GOARCH, Key: rc.key, Now: time.Now(), Files: files}); err != nil {
		t.Fatal(err)
	}
}

func (rc *releaseChannel) updateStep(t *testing.T, c *sysContainer) {
	rc.publish(t, c, updateVersion, nil)
	flags := rc.flags(c, t)
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
	c.mustExec("test", "-f", "/usr/local/bin/banger.previous")
	c.mustExec("test", "-f", "/usr/local/lib/banger/bangerd.previous")
}

// rollbackStep publishes a build whose bangerd answers --version and
// --check-migrations but exits at once as daemon or helper: the update
// must restore the installed build (byte for byte, .previous included),
// bring it back up and say so.
func (rc *releaseChannel) rollbackStep(t *testing.T, c *sysContainer) {
	rc.publish(t, c, brokenVersion, func(bin string) {
		real := filepath.Join(bin, "bangerd")
		if err := os.Rename(real, real+".real"); err != nil {
			t.Fatal(err)
		}
		script := fmt.Sprintf("#!/bin/sh\ncase \"$1\" in --version|--check-migrations) exec %s \"$@\" ;; esac\necho 'bangerd: simulated start-up failure' >&2\nexit 1\n",
			ctrShare+"/build-"+brokenVersion+"/bangerd.real")
		if err := os.WriteFile(real, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	})
	sums := func() string {
		return c.mustExec("sha256sum", "/usr/local/bin/banger", "/usr/local/lib/banger/bangerd", "/usr/local/bin/banger.previous", "/usr/local/lib/banger/bangerd.previous")
	}
	before := sums()
	start := time.Now()
	out, err := c.exec(append([]string{"/usr/local/bin/banger", "update"}, rc.flags(c, t)...)...)
	if err == nil || !strings.Contains(out, "(rolled back to previous install)") {
		t.Fatalf("update to a build that does not come up: %v\n%s", err, out)
	}
	t.Logf("failed update and rollback took %s", time.Since(start).Round(time.Millisecond))
	if after := sums(); after != before {
		t.Fatalf("the install is not byte-identical after the rollback:\nbefore\n%s\nafter\n%s", before, after)
	}
	c.waitHelper()
	c.waitDaemon()
	if status := c.mustExec("/usr/local/bin/banger", "system", "status", "--json"); strings.Contains(status, brokenVersion) {
		t.Errorf("system status still mentions %s:\n%s", brokenVersion, status)
	}
}
