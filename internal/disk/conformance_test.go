package disk_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/disk"
	"github.com/bangerdev/banger/internal/disk/disktest"
	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/privops"
)

func newStrategy(s disk.Strategy) func(t *testing.T) disk.CoW {
	return func(t *testing.T) disk.CoW {
		r := hostexec.Real{}
		c, err := disk.New(s, privops.NewLocal(r, nil), r)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
}

func TestConformanceCopy(t *testing.T) {
	disktest.RunConformance(t, newStrategy(disk.Copy), t.TempDir())
}

func TestConformanceReflinkBtrfs(t *testing.T) {
	disktest.RunConformance(t, newStrategy(disk.Reflink), disktest.ScratchFS(t, "btrfs"))
}

func TestConformanceReflinkXFS(t *testing.T) {
	disktest.RunConformance(t, newStrategy(disk.Reflink), disktest.ScratchFS(t, "xfs"))
}

// TestConformanceCopyOnBtrfs runs the copy strategy where copy_file_range
// may share extents instead of copying.
func TestConformanceCopyOnBtrfs(t *testing.T) {
	disktest.RunConformance(t, newStrategy(disk.Copy), disktest.ScratchFS(t, "btrfs"))
}

func TestConformanceDM(t *testing.T) {
	disktest.Require(t, disk.DM, dmMissing())
	disktest.RunConformance(t, newStrategy(disk.DM), t.TempDir())
}

// dmMissing says why real device-mapper snapshots cannot be made here,
// asking the same question the daemon's probe asks.
func dmMissing() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root")
	}
	for _, tool := range []string{"dmsetup", "losetup", "blockdev"} {
		if _, err := exec.LookPath(tool); err != nil {
			return errors.New(tool + " not installed")
		}
	}
	r := hostexec.Real{}
	_, err := disk.DMStatus(context.Background(), privops.NewLocal(r, nil), r)
	return err
}

// TestProbeOnScratchFilesystems checks that Probe finds reflink where it
// works (ops nil rules dm out) and that it leaves nothing behind.
func TestProbeOnScratchFilesystems(t *testing.T) {
	for _, fs := range []string{"btrfs", "xfs"} {
		dir := disktest.ScratchFS(t, fs)
		choice, reason := disk.Probe(t.Context(), dir, nil, nil)
		if choice != disk.Reflink || !strings.Contains(reason, fs) {
			t.Errorf("Probe on %s = %s (%s), want reflink", fs, choice, reason)
		}
		if es, _ := os.ReadDir(dir); len(es) != 0 {
			t.Errorf("Probe left %v in %s", es, dir)
		}
	}
}
