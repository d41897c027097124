// Package atomicfile replaces files so that readers see either the old or
// the new content, never a partial write.
package atomicfile

import (
	"os"
	"path/filepath"
)

// Write replaces path with data and permissions perm: it writes a
// temporary file in path's directory, fsyncs it and renames it over path.
// On error path is unchanged and the temporary file is removed. The
// directory itself is not fsynced.
func Write(path string, data []byte, perm os.FileMode) error {
	return write(path, data, perm, true)
}

// WriteUnsynced is Write without the fsync, for files derived from state
// kept elsewhere and rewritten from it (after a crash they may be stale,
// never partial: the rename is still atomic). An fsync there made every
// VM create and delete wait for the host's journal, which, busy with a
// just-copied disk, took up to 0.3 s.
func WriteUnsynced(path string, data []byte, perm os.FileMode) error {
	return write(path, data, perm, false)
}

func write(path string, data []byte, perm os.FileMode, sync bool) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if sync {
		if err := tmp.Sync(); err != nil {
			tmp.Close()
			return err
		}
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
