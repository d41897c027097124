package workspace

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/bangerdev/banger/internal/hostexec"
)

// ErrApplyConflict is returned (wrapped in an *ApplyError) when a guest
// patch does not apply to the host tree: the host changed since the
// workspace was prepared in a way that touches the same lines or files.
var ErrApplyConflict = errors.New("the guest's changes do not apply to the host tree")

// ApplyError is a patch that Apply refused. The host tree is unchanged and
// the patch is kept at Kept.
type ApplyError struct {
	Root   string // the host work tree
	Kept   string // where the patch was saved
	Detail string // what git apply said
}

func (e *ApplyError) Error() string {
	return fmt.Sprintf("%v (%s): nothing was changed in %s; the patch is kept in %s: resolve by hand with `git -C %s apply --3way %s`",
		ErrApplyConflict, strings.TrimSpace(e.Detail), e.Root, e.Kept, hostexec.Quote(e.Root), hostexec.Quote(e.Kept))
}

// Unwrap makes errors.Is(err, ErrApplyConflict) true.
func (e *ApplyError) Unwrap() error { return ErrApplyConflict }

// ApplyResult says what Apply did.
type ApplyResult struct {
	Empty bool     // the patch held no changes
	Files []string // the paths the patch touched, as git lists them
}

// Apply applies the patch file (as Export writes it) to the git work tree
// that contains dir. It is all or nothing: `git apply --check` first, then
// `git apply`, which itself changes nothing unless every hunk applies, so
// host changes are never lost. On a conflict the patch is copied to
// <git dir>/banger/patches/<name>-<time>.patch and an *ApplyError says
// where. name labels the kept file (the VM's name).
func Apply(ctx context.Context, r hostexec.Runner, dir, patch, name string, now time.Time) (ApplyResult, error) {
	g := gitCmd{r: r}
	root, err := g.out(ctx, dir, "rev-parse", "--show-toplevel")
	if err != nil {
		return ApplyResult{}, fmt.Errorf("%s is not inside a git work tree: %w", dir, ErrNotGitRepo)
	}
	root = strings.TrimSpace(root)
	st, err := os.Stat(patch)
	if err != nil {
		return ApplyResult{}, fmt.Errorf("read the patch: %w", err)
	}
	if st.Size() == 0 {
		return ApplyResult{Empty: true}, nil
	}
	list, err := g.out(ctx, root, "apply", "--numstat", "-z", patch)
	if err != nil {
		return ApplyResult{}, fmt.Errorf("read the patch: %w", err)
	}
	var res ApplyResult
	for _, f := range splitZ(list) {
		if i := strings.LastIndexByte(f, '\t'); i >= 0 {
			f = f[i+1:]
		}
		if f != "" {
			res.Files = append(res.Files, f)
		}
	}
	applyErr := func() error {
		if _, err := g.out(ctx, root, "apply", "--check", patch); err != nil {
			return err
		}
		_, err := g.out(ctx, root, "apply", patch)
		return err
	}()
	if applyErr == nil {
		return res, nil
	}
	detail := applyErr.Error()
	var ee *hostexec.ExitError
	if errors.As(applyErr, &ee) && strings.TrimSpace(ee.Stderr) != "" {
		detail = ee.Stderr
	}
	kept, kerr := keepPatch(ctx, g, root, patch, name, now)
	if kerr != nil {
		return res, fmt.Errorf("%w (%s); and the patch could not be kept: %w", ErrApplyConflict, strings.TrimSpace(detail), kerr)
	}
	return res, &ApplyError{Root: root, Kept: kept, Detail: detail}
}

// keepPatch copies patch into <git dir>/banger/patches.
func keepPatch(ctx context.Context, g gitCmd, root, patch, name string, now time.Time) (string, error) {
	gitDir, err := g.out(ctx, root, "rev-parse", "--absolute-git-dir")
	if err != nil {
		return "", err
	}
	dir := filepath.Join(strings.TrimSpace(gitDir), "banger", "patches")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	data, err := os.ReadFile(patch)
	if err != nil {
		return "", err
	}
	dst := filepath.Join(dir, fmt.Sprintf("%s-%s.patch", name, now.UTC().Format("20060102T150405Z")))
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return "", err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return "", err
	}
	return dst, f.Close()
}
