package update

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// ReleaseEntries are the files a release archive may carry: the CLI, the
// daemon (and root helper) and the static guest agent the daemon installs
// into VMs. An installation replaces the ones it has (Installation.Targets).
var ReleaseEntries = []string{"banger", "bangerd", "banger-agent"}

// PreviousSuffix names the copy of each binary the last swap replaced.
const PreviousSuffix = ".previous"

// Target is one installed binary: the archive entry that provides it and
// where it lives.
type Target struct {
	Name string // archive entry, e.g. "bangerd"
	Path string // absolute install path, e.g. /usr/local/lib/banger/bangerd
}

// Installation is the set of installed binaries an update replaces. Each
// keeps the version it replaced beside it as <path>.previous.
//
// Swaps are per file atomic (rename(2) of a file written and fsynced in
// the same directory, then an fsync of the directory); the set is
// replaced file by file, so a crash in between leaves a mixed install
// that `banger update --rollback` (or re-running the update) repairs.
type Installation struct {
	Targets []Target
}

// Names returns the archive entries the installation needs.
func (in Installation) Names() []string {
	n := make([]string, len(in.Targets))
	for i, t := range in.Targets {
		n[i] = t.Name
	}
	return n
}

// Path returns the install path of an entry ("" if none).
func (in Installation) Path(name string) string {
	for _, t := range in.Targets {
		if t.Name == name {
			return t.Path
		}
	}
	return ""
}

// CheckWritable fails with an error wrapping ErrNeedsRoot when a target
// directory cannot be written by this process.
func (in Installation) CheckWritable() error {
	for _, t := range in.Targets {
		dir := filepath.Dir(t.Path)
		f, err := os.CreateTemp(dir, ".banger-update-probe-*")
		if err != nil {
			if errors.Is(err, fs.ErrPermission) && os.Geteuid() != 0 {
				return fmt.Errorf("%w: cannot write %s as uid %d: update as the user who installed banger there (`sudo banger update` if root did), or install banger somewhere you own", ErrNeedsRoot, dir, os.Geteuid())
			}
			return fmt.Errorf("cannot write %s: %w", dir, err)
		}
		f.Close()
		os.Remove(f.Name())
	}
	return nil
}

// HasPrevious reports whether every target has a .previous copy.
func (in Installation) HasPrevious() error {
	for _, t := range in.Targets {
		st, err := os.Lstat(t.Path + PreviousSuffix)
		if err != nil || !st.Mode().IsRegular() {
			return fmt.Errorf("%w: %s%s does not exist (nothing to roll back to)", ErrNoPrevious, t.Path, PreviousSuffix)
		}
	}
	return nil
}

// Swapped is an installed update that can still be undone.
type Swapped struct {
	steps []swapStep
}

// swapStep is how far the swap got for one target.
type swapStep struct {
	t Target
	// saved is a temporary link to the .previous copy the swap replaced
	// ("" when there was none).
	saved string
	// kept: <path>.previous now holds the file that was installed.
	kept bool
	// placed: the new file is at <path>.
	placed bool
}

// Swap installs the staged files: each target's current file becomes
// <path>.previous and the staged file takes its place. The .previous
// copies it replaces are kept aside until Commit, so Undo restores the
// install exactly. On error the install is as it was.
func (in Installation) Swap(st *Staged) (_ *Swapped, err error) {
	// 1. Copy every staged file next to its target and check its hash.
	tmps := map[string]string{}
	defer func() {
		for _, p := range tmps {
			os.Remove(p)
		}
	}()
	for _, t := range in.Targets {
		src := st.Files[t.Name]
		if src == "" {
			return nil, fmt.Errorf("%w: staged release lacks %s", ErrBadArchive, t.Name)
		}
		if fi, err := os.Lstat(t.Path); err != nil || !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("install %s: not an installed binary (%v); install banger first", t.Path, err)
		}
		tmp, err := copyInto(src, filepath.Dir(t.Path), "."+filepath.Base(t.Path)+".new-*")
		if err != nil {
			return nil, fmt.Errorf("install %s: %w", t.Path, err)
		}
		tmps[t.Name] = tmp
		if got, err := hashFile(tmp); err != nil || got != st.Sums[t.Name] {
			return nil, fmt.Errorf("%w: %s changed while being installed", ErrHashMismatch, t.Name)
		}
	}
	sw := &Swapped{}
	defer func() {
		if err != nil {
			err = errors.Join(err, sw.Undo())
		}
	}()
	// 2. Set the old .previous aside and keep the current file as the new
	// .previous; 3. rename the new file into place.
	for _, t := range in.Targets {
		sw.steps = append(sw.steps, swapStep{t: t})
		step := &sw.steps[len(sw.steps)-1]
		prev := t.Path + PreviousSuffix
		if _, err := os.Lstat(prev); err == nil {
			saved, err := cloneInto(prev, filepath.Dir(t.Path), "."+filepath.Base(t.Path)+".saved-*")
			if err != nil {
				return sw, fmt.Errorf("keep %s: %w", prev, err)
			}
			step.saved = saved
		}
		if err := keepPrevious(t.Path); err != nil {
			return sw, err
		}
		step.kept = true
		if err := os.Rename(tmps[t.Name], t.Path); err != nil {
			return sw, fmt.Errorf("install %s: %w", t.Path, err)
		}
		delete(tmps, t.Name)
		step.placed = true
		if err := syncDir(filepath.Dir(t.Path)); err != nil {
			return sw, err
		}
	}
	return sw, nil
}

// Commit forgets the .previous copies the swap replaced.
func (s *Swapped) Commit() {
	for _, st := range s.steps {
		if st.saved != "" {
			os.Remove(st.saved)
		}
	}
	s.steps = nil
}

// Undo puts back every binary the swap replaced, and the .previous copies
// as they were before it.
func (s *Swapped) Undo() error {
	var errs []error
	for i := len(s.steps) - 1; i >= 0; i-- {
		st := s.steps[i]
		prev := st.t.Path + PreviousSuffix
		switch {
		case st.placed:
			// .previous holds the replaced binary: move it back.
			if err := os.Rename(prev, st.t.Path); err != nil {
				errs = append(errs, fmt.Errorf("restore %s: %w", st.t.Path, err))
				continue
			}
		case st.kept:
			// The binary is untouched; .previous is a copy of it.
			if err := os.Remove(prev); err != nil {
				errs = append(errs, fmt.Errorf("restore %s: %w", prev, err))
				continue
			}
		}
		if st.saved != "" {
			if err := os.Rename(st.saved, prev); err != nil {
				errs = append(errs, fmt.Errorf("restore %s: %w", prev, err))
			}
		}
		if err := syncDir(filepath.Dir(st.t.Path)); err != nil {
			errs = append(errs, err)
		}
	}
	s.steps = nil
	return errors.Join(errs...)
}

// Restore swaps every target with its .previous copy, so running it twice
// returns to where it started. Nothing changes unless every .previous
// exists.
func (in Installation) Restore() error {
	if err := in.HasPrevious(); err != nil {
		return err
	}
	return in.restore(in.Targets)
}

func (in Installation) restore(targets []Target) error {
	var errs []error
	for _, t := range targets {
		prev := t.Path + PreviousSuffix
		dir := filepath.Dir(t.Path)
		back, err := cloneInto(prev, dir, "."+filepath.Base(t.Path)+".back-*")
		if err != nil {
			errs = append(errs, fmt.Errorf("restore %s: %w", t.Path, err))
			continue
		}
		var cur string
		if _, err := os.Lstat(t.Path); err == nil {
			if cur, err = cloneInto(t.Path, dir, "."+filepath.Base(t.Path)+".cur-*"); err != nil {
				os.Remove(back)
				errs = append(errs, fmt.Errorf("restore %s: %w", t.Path, err))
				continue
			}
		}
		if err := os.Rename(back, t.Path); err != nil {
			os.Remove(back)
			os.Remove(cur)
			errs = append(errs, fmt.Errorf("restore %s: %w", t.Path, err))
			continue
		}
		if cur != "" {
			if err := os.Rename(cur, prev); err != nil {
				os.Remove(cur)
			}
		}
		if err := syncDir(dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// keepPrevious makes <path>.previous a copy of path: a hard link (or a
// copy where links are not possible) renamed over the old .previous.
func keepPrevious(path string) error {
	tmp, err := cloneInto(path, filepath.Dir(path), "."+filepath.Base(path)+".prev-*")
	if err != nil {
		return fmt.Errorf("keep %s%s: %w", path, PreviousSuffix, err)
	}
	if err := os.Rename(tmp, path+PreviousSuffix); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("keep %s%s: %w", path, PreviousSuffix, err)
	}
	return nil
}

// cloneInto hard-links src to a new temporary name in dir, falling back
// to a copy.
func cloneInto(src, dir, pattern string) (string, error) {
	st, err := os.Lstat(src)
	if err != nil {
		return "", err
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("%s is not a regular file", src)
	}
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return "", err
	}
	name := f.Name()
	f.Close()
	os.Remove(name)
	if err := os.Link(src, name); err == nil {
		return name, nil
	}
	return copyInto(src, dir, pattern)
}

// copyInto copies src to a new fsynced 0755 file in dir.
func copyInto(src, dir, pattern string) (string, error) {
	in, err := os.OpenFile(src, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return "", err
	}
	defer in.Close()
	out, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return "", err
	}
	_, cerr := io.Copy(out, in)
	merr := out.Chmod(0o755)
	serr := out.Sync()
	if err := errors.Join(cerr, merr, serr, out.Close()); err != nil {
		os.Remove(out.Name())
		return "", err
	}
	return out.Name(), nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}
