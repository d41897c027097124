package privops

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// walkBeneath (used where openat2 answers ENOSYS, e.g. under systemd's
// RestrictSUIDSGID=yes) refuses exactly what openat2 with
// RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS refuses.
func TestWalkBeneathMatchesOpenat2(t *testing.T) {
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "a/b"), 0o755))
	must(os.WriteFile(filepath.Join(root, "a/b/file"), []byte("x"), 0o644))
	must(os.Symlink("/etc", filepath.Join(root, "a/link")))
	must(os.Symlink("b/file", filepath.Join(root, "a/flink")))
	must(os.Symlink("b", filepath.Join(root, "a/dlink")))
	rfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	must(err)
	defer unix.Close(rfd)

	for _, c := range []struct {
		rel   string
		flags int
		ok    bool
	}{
		{"a/b/file", unix.O_RDONLY, true},
		{"a/b/file", unix.O_PATH | unix.O_NOFOLLOW, true},
		{"a/b", unix.O_PATH | unix.O_DIRECTORY, true},
		{".", unix.O_PATH | unix.O_DIRECTORY, true},
		{"a/link/passwd", unix.O_RDONLY, false},
		{"a/dlink/file", unix.O_RDONLY, false},
		{"a/flink", unix.O_RDONLY, false},
		{"a/flink", unix.O_PATH | unix.O_NOFOLLOW, true}, // the link itself, as openat2
		{"a/dlink", unix.O_PATH | unix.O_DIRECTORY, false},
		{"../x", unix.O_RDONLY, false},
		{"a/../../x", unix.O_RDONLY, false},
		{"a/b/missing", unix.O_RDONLY, false},
	} {
		fd, werr := walkBeneath(rfd, c.rel, c.flags|unix.O_CLOEXEC, 0)
		if werr == nil {
			unix.Close(fd)
		}
		if (werr == nil) != c.ok {
			t.Errorf("walk %s: %v, want ok=%v", c.rel, werr, c.ok)
		}
		ofd, oerr := unix.Openat2(rfd, c.rel, &unix.OpenHow{Flags: uint64(c.flags | unix.O_CLOEXEC),
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS})
		if errors.Is(oerr, unix.ENOSYS) {
			continue
		}
		if oerr == nil {
			unix.Close(ofd)
		}
		if (oerr == nil) != (werr == nil) {
			t.Errorf("%s: openat2 %v, walk %v", c.rel, oerr, werr)
		}
		// a symlink is reported as one (callers map ELOOP/EXDEV to "unsafe")
		if !c.ok && oerr != nil && (errors.Is(oerr, unix.ELOOP) || errors.Is(oerr, unix.EXDEV)) &&
			!errors.Is(werr, unix.ELOOP) && !errors.Is(werr, unix.EXDEV) {
			t.Errorf("%s: openat2 says %v, walk says %v", c.rel, oerr, werr)
		}
	}
	// Creating through the walk.
	fd, err := walkBeneath(rfd, "a/b/new", unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o600)
	must(err)
	unix.Close(fd)
	if _, err := os.Stat(filepath.Join(root, "a/b/new")); err != nil {
		t.Error(err)
	}
}
