package paths

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestBeneath(t *testing.T) {
	for _, tc := range []struct {
		root, path, rel string
		ok              bool
	}{
		{"/var/lib/banger", "/var/lib/banger", ".", true},
		{"/var/lib/banger", "/var/lib/banger/vms/x/root.ext4", "vms/x/root.ext4", true},
		{"/var/lib/banger/", "/var/lib/banger//vms/./x", "vms/x", true},
		{"/", "/etc/shadow", "etc/shadow", true},
		{"/var/lib/banger", "/var/lib/banger/../../../etc/shadow", "", false},
		{"/var/lib/banger", "/var/lib/banger/vms/../vms/x", "", false},
		{"/var/lib/banger", "/var/lib/bangerX/x", "", false},
		{"/var/lib/banger", "/var/lib", "", false},
		{"/var/lib/banger", "/etc/shadow", "", false},
		{"/var/lib/banger", "vms/x", "", false},
		{"relative", "/relative/x", "", false},
		{"/var/lib/banger", "", "", false},
		{"/var/lib/banger", "/var/lib/banger/a\x00b", "", false},
		{"/var/lib/banger/..", "/var/lib/x", "", false},
		{"/var/lib/banger", "/var/lib/banger/..", "", false},
		{"/var/lib/banger", "/var/lib/banger/...", "...", true},
		{"/var/lib/banger", "/var/lib/banger/a b\nc/é", "a b\nc/é", true},
	} {
		rel, err := Beneath(tc.root, tc.path)
		if tc.ok {
			if err != nil || rel != tc.rel {
				t.Errorf("Beneath(%q, %q) = %q, %v; want %q", tc.root, tc.path, rel, err, tc.rel)
			}
		} else if !errors.Is(err, ErrUnsafePath) {
			t.Errorf("Beneath(%q, %q) = %q, %v; want ErrUnsafePath", tc.root, tc.path, rel, err)
		}
	}
}

// tree makes root/{dir/sub/, file, link->outside, dir/sublink->dir}.
func tree(t *testing.T) (root, outside string) {
	t.Helper()
	base := t.TempDir()
	root = filepath.Join(base, "root")
	outside = filepath.Join(base, "outside")
	for _, d := range []string{filepath.Join(root, "dir", "sub"), outside} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{filepath.Join(root, "file"), filepath.Join(outside, "secret")} {
		if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(outside, filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(root, "dir"), filepath.Join(root, "dir", "sublink")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "secret"), filepath.Join(root, "dir", "filelink")); err != nil {
		t.Fatal(err)
	}
	return root, outside
}

func TestCheckNoSymlinks(t *testing.T) {
	root, outside := tree(t)
	for _, tc := range []struct {
		path    string
		wantErr error // nil = accepted
	}{
		{root, nil},
		{filepath.Join(root, "dir"), nil},
		{filepath.Join(root, "dir", "sub", "new.img"), nil},
		{filepath.Join(root, "file"), nil},
		{filepath.Join(root, "link"), ErrUnsafePath},
		{filepath.Join(root, "link", "secret"), ErrUnsafePath},
		{filepath.Join(root, "link", "new"), ErrUnsafePath},
		{filepath.Join(root, "dir", "sublink", "sub"), ErrUnsafePath},
		{filepath.Join(root, "dir", "filelink"), ErrUnsafePath},
		{filepath.Join(root, "..", "outside", "secret"), ErrUnsafePath},
		{filepath.Join(outside, "secret"), ErrUnsafePath},
		{"/etc/shadow", ErrUnsafePath},
		{filepath.Join(root, "missing", "x"), os.ErrNotExist},
	} {
		err := CheckNoSymlinks(root, tc.path)
		if tc.wantErr == nil && err != nil {
			t.Errorf("CheckNoSymlinks(%s) = %v, want ok", tc.path, err)
		}
		if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
			t.Errorf("CheckNoSymlinks(%s) = %v, want %v", tc.path, err, tc.wantErr)
		}
	}
	if err := CheckNoSymlinks(filepath.Join(root, "file"), filepath.Join(root, "file", "x")); err == nil {
		t.Error("a file accepted as root")
	}
	if err := CheckNoSymlinks(filepath.Join(root, "link"), filepath.Join(root, "link", "secret")); !errors.Is(err, ErrUnsafePath) {
		t.Errorf("symlinked root accepted: %v", err)
	}
	if err := CheckNoSymlinks(root, filepath.Join(root, "file", "x")); err == nil || errors.Is(err, ErrUnsafePath) {
		t.Errorf("file as directory: %v", err)
	}
}

func TestOpenNoSymlinks(t *testing.T) {
	root, _ := tree(t)
	f, err := OpenNoSymlinks(root, filepath.Join(root, "dir", "sub", "log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("hello"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	st, err := os.Stat(filepath.Join(root, "dir", "sub", "log"))
	if err != nil || st.Size() != 5 || st.Mode().Perm()&^0o640 != 0 {
		t.Fatalf("created file: %v %v", st, err)
	}
	f, err = OpenNoSymlinks(root, filepath.Join(root, "file"), os.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()

	for _, p := range []string{
		filepath.Join(root, "link", "secret"),
		filepath.Join(root, "dir", "filelink"),
		filepath.Join(root, "dir", "sublink", "sub", "log"),
		filepath.Join(root, "..", "outside", "secret"),
		"/etc/passwd",
	} {
		f, err := OpenNoSymlinks(root, p, os.O_RDONLY, 0)
		if err == nil {
			f.Close()
			t.Errorf("OpenNoSymlinks(%s) succeeded", p)
		} else if !errors.Is(err, ErrUnsafePath) {
			t.Errorf("OpenNoSymlinks(%s) = %v, want ErrUnsafePath", p, err)
		}
	}
	// O_CREAT through a final symlink must not create the target.
	_, err = OpenNoSymlinks(root, filepath.Join(root, "dir", "filelink"), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if !errors.Is(err, ErrUnsafePath) {
		t.Fatalf("create through symlink: %v", err)
	}
	if _, err := OpenNoSymlinks(root, filepath.Join(root, "missing"), os.O_RDONLY, 0); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

func FuzzCheckNoSymlinks(f *testing.F) {
	for _, s := range [][2]string{
		{"/var/lib/banger", "/var/lib/banger/vms/x"},
		{"/var/lib/banger", "/var/lib/banger/../etc"},
		{"/", "/etc/shadow"},
		{"/a", "/ab"},
		{"/a/", "/a//b/./c"},
		{"/a", "a"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, root, path string) {
		rel, err := Beneath(root, path)
		if err != nil {
			if !errors.Is(err, ErrUnsafePath) {
				t.Fatalf("error does not wrap ErrUnsafePath: %v", err)
			}
			return
		}
		if filepath.IsAbs(rel) || rel == ".." || strings.HasPrefix(rel, "../") {
			t.Fatalf("Beneath(%q, %q) = %q escapes", root, path, rel)
		}
		for _, el := range strings.Split(rel, "/") {
			if el == ".." {
				t.Fatalf("rel %q has ..", rel)
			}
		}
		if got := filepath.Join(filepath.Clean(root), rel); got != filepath.Clean(path) {
			t.Fatalf("Join(root, rel) = %q, want %q", got, filepath.Clean(path))
		}
		if strings.Contains(path, "..") && strings.Contains("/"+path+"/", "/../") {
			t.Fatalf("path with .. element accepted: %q", path)
		}
	})
}
