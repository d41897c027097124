package workspace

import (
	"fmt"
	"path/filepath"
	"strings"
)

// Subdir returns dir relative to the repository root (slash-separated, ""
// for the root itself). Both are compared with symlinks resolved, as git
// reports the root.
func Subdir(root, dir string) (string, error) {
	realDir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", fmt.Errorf("workspace path %s: %w", dir, err)
	}
	realRoot, err := filepath.EvalSymlinks(root)
	if err != nil {
		realRoot = root
	}
	rel, err := filepath.Rel(realRoot, realDir)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", fmt.Errorf("workspace path %s is not inside its repository %s", dir, root)
	}
	if rel == "." {
		return "", nil
	}
	return filepath.ToSlash(rel), nil
}
