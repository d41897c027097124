package system

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/BurntSushi/toml"

	"github.com/bangerdev/banger/internal/atomicfile"
)

// at joins an install root and an absolute install path.
func at(root, p string) string {
	if root == "" {
		root = "/"
	}
	return filepath.Join(root, p)
}

// ReadRecord reads <root>/etc/banger/install.toml. A missing record is an
// error wrapping ErrNotInstalled.
func ReadRecord(root string) (*Record, error) {
	path := at(root, RecordPath)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w (no %s): install it with `sudo banger system install`", ErrNotInstalled, path)
	}
	if err != nil {
		return nil, fmt.Errorf("read install record: %w", err)
	}
	rec, err := ParseRecord(data)
	if err != nil {
		return nil, fmt.Errorf("install record %s: %w (re-run `sudo banger system install --owner USER`)", path, err)
	}
	return rec, nil
}

// ParseRecord decodes an install record.
func ParseRecord(data []byte) (*Record, error) {
	var rec Record
	md, err := toml.Decode(string(data), &rec)
	if err != nil {
		return nil, fmt.Errorf("not valid TOML: %w", err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		return nil, fmt.Errorf("unknown key %q (written by a newer banger?)", und[0].String())
	}
	if rec.Owner.User == "" || rec.Owner.UID <= 0 {
		return nil, errors.New("it names no non-root owner")
	}
	return &rec, nil
}

// Installed reports whether <root> has an install record. The CLI uses it
// to talk to the system daemon instead of starting a user-mode one.
func Installed(root string) bool {
	_, err := os.Stat(at(root, RecordPath))
	return err == nil
}

func writeRecord(root string, rec *Record) error {
	var buf bytes.Buffer
	buf.WriteString("# banger's system install record, written by `banger system install`.\n")
	if err := toml.NewEncoder(&buf).Encode(rec); err != nil {
		return fmt.Errorf("encode install record: %w", err)
	}
	if err := os.MkdirAll(at(root, ConfigDir), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", at(root, ConfigDir), err)
	}
	if err := atomicfile.Write(at(root, RecordPath), buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("write install record: %w", err)
	}
	return nil
}
