package atomicfile

import (
	"os"
	"path/filepath"
	"testing"
)

// writers are the two ways to replace a file; every test runs both.
var writers = map[string]func(string, []byte, os.FileMode) error{"Write": Write, "WriteUnsynced": WriteUnsynced}

func TestWriteReplacesContentAndMode(t *testing.T) {
	for name, Write := range writers {
		t.Run(name, func(t *testing.T) { testReplaces(t, Write) })
	}
}

func testReplaces(t *testing.T, Write func(string, []byte, os.FileMode) error) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, []byte("old content that is longer"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Write(p, []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(p)
	if err != nil || string(got) != "new" {
		t.Fatalf("content = %q, %v; want \"new\"", got, err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode = %v, want 0600", fi.Mode().Perm())
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("directory holds %d entries, want only f (temporary file left behind?)", len(ents))
	}
}

func TestWriteFailureLeavesTargetAndNoTemp(t *testing.T) {
	for name, Write := range writers {
		t.Run(name, func(t *testing.T) { testFailure(t, Write) })
	}
}

func testFailure(t *testing.T, Write func(string, []byte, os.FileMode) error) {
	dir := t.TempDir()
	p := filepath.Join(dir, "d")
	if err := os.Mkdir(p, 0o755); err != nil { // renaming a file over a directory fails
		t.Fatal(err)
	}
	if err := Write(p, []byte("x"), 0o644); err == nil {
		t.Fatal("Write over a directory succeeded")
	}
	if fi, err := os.Stat(p); err != nil || !fi.IsDir() {
		t.Fatalf("target changed: %v %v", fi, err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("directory holds %d entries, want only d (temporary file left behind)", len(ents))
	}
}

func TestWriteMissingDirectory(t *testing.T) {
	for name, Write := range writers {
		if err := Write(filepath.Join(t.TempDir(), "no", "f"), nil, 0o644); err == nil {
			t.Fatalf("%s into a missing directory succeeded", name)
		}
	}
}
