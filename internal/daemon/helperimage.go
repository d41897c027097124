package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/image"
	"github.com/bangerdev/banger/internal/rpc"
)

// Image builds for an owner daemon that is not root. debootstrap needs
// root, so the root helper runs it, confined to its own cache:
//
//   - the owner names only the recipe's inputs (suite, variant, extra
//     packages, size), each validated; the mirror comes from root's own
//     config (or the host's apt sources), never from the request;
//   - trees and outputs live in the helper's cache (/var/cache/banger-root
//     in system mode: root's, 0711), never in a directory the owner can
//     write, so the owner cannot swap a file the root side then reads;
//   - under systemd, debootstrap runs as a transient service (systemd-run)
//     confined to that cache: the helper's own sandbox has
//     RestrictSUIDSGID=yes, which forbids the setuid bits dpkg sets;
//   - the finished image file is given to the owner (0600) for the daemon
//     to copy into its image store; the helper removes outputs older than
//     an hour at each build.

// methodImageRootfs is the helper method (not part of privops.Ops: only
// the image store uses it).
const methodImageRootfs = "helper.image.rootfs"

type imageRootfsParams struct {
	Suite    string   `json:"suite"`
	Variant  string   `json:"variant"`
	Packages []string `json:"packages,omitempty"`
	SizeMiB  int64    `json:"size_mib"`
}

type imageRootfsResult struct {
	Path string `json:"path"`
}

// maxHelperImageMiB bounds what the owner may ask the helper to build.
const maxHelperImageMiB = 64 << 10

var suiteRE = regexp.MustCompile(`^[a-z]{2,20}$`)

// helperImages serves methodImageRootfs inside the root helper.
type helperImages struct {
	dir      string // the helper's cache
	mirror   string // root's configured mirror ("" = host apt sources)
	owner    [2]int // uid, gid
	runner   hostexec.Runner
	systemd  bool // running as a systemd service: use a transient unit
	logger   *slog.Logger
	now      func() time.Time
	keepFor  time.Duration
	validate func(o *image.BuildOptions, mirror string) error
}

func (h *helperImages) options(p imageRootfsParams) (image.BuildOptions, error) {
	if p.Suite != "" && !suiteRE.MatchString(p.Suite) {
		return image.BuildOptions{}, rpc.Errorf(rpc.CodeBadRequest, "suite %q is not a Debian suite name", p.Suite)
	}
	if p.SizeMiB > maxHelperImageMiB {
		return image.BuildOptions{}, rpc.Errorf(rpc.CodeBadRequest, "image size %d MiB is over the helper's limit of %d MiB", p.SizeMiB, maxHelperImageMiB)
	}
	o := image.BuildOptions{Name: "helper-build", Suite: p.Suite, Variant: p.Variant, Packages: p.Packages, SizeMiB: p.SizeMiB}
	validate := h.validate
	if validate == nil {
		validate = func(o *image.BuildOptions, m string) error { return o.Validate(m) }
	}
	if err := validate(&o, h.mirror); err != nil {
		return image.BuildOptions{}, rpc.Errorf(rpc.CodeBadRequest, "%v", err)
	}
	return o, nil
}

func (h *helperImages) build(ctx context.Context, p imageRootfsParams) (*imageRootfsResult, error) {
	o, err := h.options(p)
	if err != nil {
		return nil, err
	}
	out := filepath.Join(h.dir, "out")
	if err := os.MkdirAll(out, 0o711); err != nil {
		return nil, fmt.Errorf("helper image cache: %w", err)
	}
	if err := os.Chmod(out, 0o711); err != nil {
		return nil, fmt.Errorf("helper image cache: %w", err)
	}
	h.prune(out)
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	path := filepath.Join(out, hex.EncodeToString(b)+".ext4")
	runner := h.runner
	if h.systemd {
		runner = transientRunner{inner: h.runner, rwDir: h.dir}
	}
	st := &image.Store{Dir: filepath.Join(h.dir, "images"), CacheDir: h.dir, Runner: runner, Mirror: h.mirror}
	if err := st.BuildFile(ctx, o, path); err != nil {
		_ = os.Remove(path)
		return nil, err
	}
	if err := os.Chown(path, h.owner[0], h.owner[1]); err != nil {
		_ = os.Remove(path)
		return nil, fmt.Errorf("give the image to uid %d: %w", h.owner[0], err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		_ = os.Remove(path)
		return nil, err
	}
	h.logger.Info("built an image file for the owner", "path", path, "recipe", o.RecipeHash(), "op_id", rpc.OpIDFrom(ctx))
	return &imageRootfsResult{Path: path}, nil
}

// prune removes outputs older than keepFor (the daemon copies them at
// once; anything older was abandoned).
func (h *helperImages) prune(dir string) {
	keep := h.keepFor
	if keep == 0 {
		keep = time.Hour
	}
	now := time.Now
	if h.now != nil {
		now = h.now
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() && now().Sub(fi.ModTime()) > keep {
			_ = os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

// transientRunner runs debootstrap as a transient systemd service confined
// to rwDir (see the comment at the top of this file); every other command
// runs as is.
type transientRunner struct {
	inner hostexec.Runner
	rwDir string
}

func (r transientRunner) Run(ctx context.Context, c hostexec.Cmd) (hostexec.Result, error) {
	if c.Name != "debootstrap" {
		return r.inner.Run(ctx, c)
	}
	args := []string{"--quiet", "--wait", "--pipe", "--collect", "--service-type=exec",
		"--description=banger image build (debootstrap)",
		"--property=ProtectSystem=strict",
		"--property=ReadWritePaths=" + r.rwDir,
		"--property=ProtectHome=yes",
		"--property=PrivateTmp=yes",
		"--property=NoNewPrivileges=yes",
		"--property=CapabilityBoundingSet=CAP_CHOWN CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_FOWNER CAP_FSETID CAP_MKNOD CAP_SETUID CAP_SETGID CAP_SYS_CHROOT CAP_SYS_ADMIN",
		"--", "debootstrap"}
	c.Name = "systemd-run"
	c.Args = append(args, c.Args...)
	return r.inner.Run(ctx, c)
}

// helperRootfs is the owner daemon's image.RootfsBuilder: it asks the
// root helper.
type helperRootfs struct{ c *rpc.Client }

func (h helperRootfs) BuildRootfs(ctx context.Context, o image.BuildOptions) (string, func(), error) {
	var r imageRootfsResult
	err := h.c.Call(ctx, methodImageRootfs, imageRootfsParams{Suite: o.Suite, Variant: o.Variant, Packages: o.Packages, SizeMiB: o.SizeMiB}, &r)
	if err != nil {
		return "", nil, fmt.Errorf("root helper: %w (is bangerd-root.service running? `banger system status`)", err)
	}
	// The file is the owner's: empty it once copied (the helper removes
	// it later; the owner cannot unlink in root's directory).
	return r.Path, func() { _ = os.Truncate(r.Path, 0) }, nil
}
