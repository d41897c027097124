package daemon

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/image"
	"github.com/bangerdev/banger/internal/rpc"
)

func TestHelperImageRequestValidation(t *testing.T) {
	h := &helperImages{dir: t.TempDir(), mirror: "http://mirror.invalid/debian"}
	for _, bad := range []imageRootfsParams{
		{Suite: "../etc"}, {Suite: "bookworm; rm"}, {Suite: "BOOKWORM"},
		{SizeMiB: maxHelperImageMiB + 1}, {SizeMiB: 10},
		{Variant: "full"}, {Packages: []string{"ok", "--root=/"}}, {Packages: []string{"A"}},
	} {
		if _, err := h.options(bad); rpc.CodeOf(err) != rpc.CodeBadRequest {
			t.Errorf("%+v: want bad_request, got %v", bad, err)
		}
	}
	o, err := h.options(imageRootfsParams{Variant: "minbase", Packages: []string{"sudo"}, SizeMiB: 1024})
	if err != nil {
		t.Fatal(err)
	}
	// The mirror is root's, whatever the owner's daemon uses.
	if o.Mirror != "http://mirror.invalid/debian" || o.Suite != "bookworm" || o.SizeMiB != 1024 {
		t.Errorf("options %+v", o)
	}
}

func TestTransientRunnerConfinesDebootstrapOnly(t *testing.T) {
	rr := &hostexec.Recorder{}
	r := transientRunner{inner: rr, rwDir: "/var/cache/banger-root"}
	ctx := context.Background()
	_, _ = r.Run(ctx, hostexec.Cmd{Name: "debootstrap", Args: []string{"--variant=minbase", "bookworm", "/var/cache/banger-root/t", "http://m"}})
	_, _ = r.Run(ctx, hostexec.Cmd{Name: "mkfs.ext4", Args: []string{"-d", "x", "y"}})
	calls := rr.Calls()
	if len(calls) != 2 || calls[0].Name != "systemd-run" || calls[1].Name != "mkfs.ext4" {
		t.Fatalf("calls %v", rr.Lines())
	}
	a := calls[0].Args
	i := slices.Index(a, "--")
	if i < 0 || !slices.Equal(a[i+1:], []string{"debootstrap", "--variant=minbase", "bookworm", "/var/cache/banger-root/t", "http://m"}) {
		t.Errorf("argv after --: %q", a)
	}
	for _, want := range []string{"--wait", "--pipe", "--collect", "--property=ProtectSystem=strict", "--property=ReadWritePaths=/var/cache/banger-root", "--property=NoNewPrivileges=yes"} {
		if !slices.Contains(a[:i], want) {
			t.Errorf("systemd-run lacks %s: %q", want, a)
		}
	}
	for _, p := range a[:i] {
		if strings.Contains(p, "RestrictSUIDSGID") {
			t.Errorf("the transient unit must allow setuid bits (dpkg sets them): %s", p)
		}
	}
}

func TestHelperImagePruneRemovesOnlyOldOutputs(t *testing.T) {
	dir := t.TempDir()
	old, fresh := filepath.Join(dir, "old.ext4"), filepath.Join(dir, "fresh.ext4")
	for _, p := range []string{old, fresh} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	then := time.Now().Add(-2 * time.Hour)
	_ = os.Chtimes(old, then, then)
	(&helperImages{}).prune(dir)
	if _, err := os.Stat(old); err == nil {
		t.Error("old output kept")
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Error("fresh output removed")
	}
}

// The owner daemon's store asks the helper only when it is not root.
func TestHelperRootfsCallsTheHelper(t *testing.T) {
	var _ image.RootfsBuilder = helperRootfs{}
	h := helperRootfs{c: rpc.NewClient(filepath.Join(t.TempDir(), "none.sock"))}
	if _, _, err := h.BuildRootfs(context.Background(), image.BuildOptions{}); err == nil || !strings.Contains(err.Error(), "banger system status") {
		t.Errorf("no helper: %v", err)
	}
}
