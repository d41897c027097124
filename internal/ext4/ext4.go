// Package ext4 builds, inspects and edits ext4 filesystem images without
// mounting them. Every operation runs e2fsprogs (mkfs.ext4, debugfs, e2fsck,
// resize2fs) through a hostexec.Runner, so tests can assert exact command
// lines and production code never needs mount privileges.
//
// Images are plain files. Build and Create write to a temporary sibling file
// and rename it into place, so a reader never sees a half-made image.
//
// Paths inside an image are absolute, slash-separated and clean ("/etc/x").
// debugfs reads one command per line and has its own quoting, so paths
// containing a newline, a carriage return or a NUL byte cannot be expressed
// and are refused with ErrUnrepresentable; every other byte (spaces, quotes,
// unicode, leading dashes, "<12>") is quoted correctly.
package ext4

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/bangerdev/banger/internal/hostexec"
)

// ErrUnrepresentable is wrapped by errors for paths or arguments that
// debugfs cannot express (newline, carriage return, NUL, over-long names).
var ErrUnrepresentable = errors.New("path cannot be represented in a debugfs command")

// ErrNoSpace is wrapped when the content does not fit in the requested size.
var ErrNoSpace = errors.New("filesystem image too small")

// BuildOptions describes an image made from a host directory tree.
type BuildOptions struct {
	SourceDir string // tree copied into the image (ownership, modes, hard links, symlinks, xattrs kept)
	Out       string // image file to create (replaced atomically)
	SizeBytes int64  // apparent size of the sparse file
	Label     string // filesystem label, at most 16 bytes; "" = none
	RootOwner string // "uid:gid" of the root directory; "" = "0:0"
	Inodes    int64  // inode count (mkfs -N); 0 = mkfs default for the size
}

// Build creates a sparse ext4 image at o.Out populated from o.SourceDir with
// `mkfs.ext4 -d` (lazy inode table and journal init). The image is written
// to o.Out+".tmp", synced, then renamed; on failure the temporary file is
// removed and o.Out is untouched.
func Build(ctx context.Context, r hostexec.Runner, o BuildOptions) error {
	if o.SourceDir == "" {
		return errors.New("ext4 build: no source directory")
	}
	st, err := os.Stat(o.SourceDir)
	if err != nil {
		return fmt.Errorf("ext4 build: source: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("ext4 build: source %s is not a directory", o.SourceDir)
	}
	return mkfs(ctx, r, o)
}

// Create makes an empty ext4 image of sizeBytes at path (root directory
// owned by 0:0, lazy init), atomically like Build.
func Create(ctx context.Context, r hostexec.Runner, path string, sizeBytes int64, label string) error {
	return mkfs(ctx, r, BuildOptions{Out: path, SizeBytes: sizeBytes, Label: label})
}

// MinSizeBytes is the smallest image Build and Create accept.
const MinSizeBytes = 4 << 20

func mkfs(ctx context.Context, r hostexec.Runner, o BuildOptions) error {
	if o.Out == "" {
		return errors.New("ext4: no output path")
	}
	if o.SizeBytes < MinSizeBytes {
		return fmt.Errorf("ext4: size %d bytes is below the minimum of %d", o.SizeBytes, MinSizeBytes)
	}
	if len(o.Label) > 16 {
		return fmt.Errorf("ext4: label %q is longer than 16 bytes", o.Label)
	}
	owner := o.RootOwner
	if owner == "" {
		owner = "0:0"
	}
	var uid, gid uint32
	if n, err := fmt.Sscanf(owner, "%d:%d", &uid, &gid); err != nil || n != 2 || fmt.Sprintf("%d:%d", uid, gid) != owner {
		return fmt.Errorf("ext4: root owner %q is not uid:gid", owner)
	}
	tmp := o.Out + ".tmp"
	_ = os.Remove(tmp)
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("ext4: create %s: %w", tmp, err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	if err := f.Truncate(o.SizeBytes); err != nil {
		return fmt.Errorf("ext4: size %s: %w", tmp, err)
	}
	args := []string{"-F", "-q", "-t", "ext4", "-b", "4096"}
	if o.SourceDir != "" {
		args = append(args, "-d", o.SourceDir)
	}
	if o.Label != "" {
		args = append(args, "-L", o.Label)
	}
	if o.Inodes > 0 {
		args = append(args, "-N", fmt.Sprint(o.Inodes))
	}
	args = append(args, "-E", "lazy_itable_init=1,lazy_journal_init=1,root_owner="+owner, tmp)
	if _, err := r.Run(ctx, hostexec.Cmd{Name: "mkfs.ext4", Args: args}); err != nil {
		var ee *hostexec.ExitError
		if errors.As(err, &ee) && (strings.Contains(ee.Stderr, "Could not allocate block") ||
			strings.Contains(ee.Stderr, "No space left") || strings.Contains(ee.Stderr, "Could not allocate inode")) {
			return fmt.Errorf("ext4: %w: %d bytes do not hold %s (use a larger size): %v", ErrNoSpace, o.SizeBytes, o.SourceDir, err)
		}
		return fmt.Errorf("ext4: mkfs: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("ext4: sync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("ext4: close %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, o.Out); err != nil {
		return fmt.Errorf("ext4: publish %s: %w", o.Out, err)
	}
	ok = true
	syncDir(filepath.Dir(o.Out))
	return nil
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
}

// Check runs a forced read-only filesystem check (`e2fsck -fn`) and returns
// an error carrying e2fsck's report when the image is not clean.
func Check(ctx context.Context, r hostexec.Runner, image string) error {
	res, err := r.Run(ctx, hostexec.Cmd{Name: "e2fsck", Args: []string{"-fn", image}})
	if err != nil {
		var ee *hostexec.ExitError
		if errors.As(err, &ee) {
			return fmt.Errorf("ext4: %s is not clean (e2fsck exit %d): %s%s", image, ee.ExitCode,
				strings.TrimSpace(string(res.Stdout)), tailIf(ee.Stderr))
		}
		return fmt.Errorf("ext4: check %s: %w", image, err)
	}
	return nil
}

func tailIf(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return ""
	}
	return "; " + s
}

// Grow enlarges the image file to newSizeBytes and the filesystem with it
// (truncate, `e2fsck -fy`, `resize2fs`). Shrinking is refused. The image must
// not be in use by a running VM.
func Grow(ctx context.Context, r hostexec.Runner, image string, newSizeBytes int64) error {
	st, err := os.Stat(image)
	if err != nil {
		return fmt.Errorf("ext4: grow: %w", err)
	}
	if newSizeBytes < st.Size() {
		return fmt.Errorf("ext4: grow %s: new size %d is smaller than the current %d (shrinking is not supported)", image, newSizeBytes, st.Size())
	}
	if newSizeBytes == st.Size() {
		return nil
	}
	if err := os.Truncate(image, newSizeBytes); err != nil {
		return fmt.Errorf("ext4: grow %s: %w", image, err)
	}
	if _, err := r.Run(ctx, hostexec.Cmd{Name: "e2fsck", Args: []string{"-fy", image}}); err != nil {
		// exit 1 and 2 mean "errors corrected": acceptable before a resize.
		var ee *hostexec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode >= 4 {
			return fmt.Errorf("ext4: grow %s: check before resize: %w", image, err)
		}
	}
	if _, err := r.Run(ctx, hostexec.Cmd{Name: "resize2fs", Args: []string{image}}); err != nil {
		return fmt.Errorf("ext4: grow %s: %w", image, err)
	}
	return nil
}
