package workspace

import (
	"os"
	"path/filepath"
	"testing"
)

func TestSubdir(t *testing.T) {
	root := t.TempDir()
	sub := filepath.Join(root, "a", "b")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(sub, link); err != nil {
		t.Fatal(err)
	}
	for dir, want := range map[string]string{root: "", sub: "a/b", link: "a/b"} {
		got, err := Subdir(root, dir)
		if err != nil || got != want {
			t.Errorf("Subdir(%s) = %q, %v; want %q", dir, got, err, want)
		}
	}
	if _, err := Subdir(sub, root); err == nil {
		t.Error("a directory above the root was accepted")
	}
}
