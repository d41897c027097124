// Package guest is the daemon's ssh channel to its VMs: the managed client
// key, banger's own known_hosts (trust on first use, pinning, forgetting),
// and a client (golang.org/x/crypto/ssh) with keep-alives, timeouts and a
// wait-for-ssh loop. One Client carries many commands: under TCG every new
// connection costs about a second of guest crypto, so callers keep it.
package guest

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/bangerdev/banger/internal/atomicfile"
	"golang.org/x/crypto/ssh"
)

// KeyFile is the managed private key's file name inside the key directory;
// the public key is KeyFile + ".pub".
const KeyFile = "id_ed25519"

// KeyComment is the comment on the managed public key.
const KeyComment = "banger"

// KeyPath returns the private key path inside dir.
func KeyPath(dir string) string { return filepath.Join(dir, KeyFile) }

// EnsureKey returns banger's managed ed25519 key in dir, generating it on
// first use (private key 0600 in OpenSSH format, public key next to it; the
// directory is created 0700). pubLine is the authorized_keys line
// ("ssh-ed25519 AAAA... banger"). A key file with permissions wider than
// 0600 is tightened, since OpenSSH refuses such keys. Concurrent callers,
// even in different processes, end up with the same key.
func EnsureKey(dir string) (signer ssh.Signer, pubLine string, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, "", fmt.Errorf("create key directory: %w", err)
	}
	path := KeyPath(dir)
	signer, err = loadKey(path)
	if errors.Is(err, os.ErrNotExist) {
		if err := generateKey(path); err != nil {
			return nil, "", err
		}
		signer, err = loadKey(path)
	}
	if err != nil {
		return nil, "", err
	}
	pubLine = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey()))) + " " + KeyComment
	pubPath := path + ".pub"
	if cur, err := os.ReadFile(pubPath); err != nil || strings.TrimSpace(string(cur)) != pubLine {
		if err := atomicfile.Write(pubPath, []byte(pubLine+"\n"), 0o644); err != nil {
			return nil, "", fmt.Errorf("write public key: %w", err)
		}
	}
	return signer, pubLine, nil
}

func loadKey(path string) (ssh.Signer, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(path, 0o600); err != nil {
			return nil, fmt.Errorf("tighten permissions of %s: %w", path, err)
		}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	signer, err := ssh.ParsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("parse ssh key %s: %w (move it away to let banger generate a new one; VMs created with the old key then need `banger vm set` or recreation)", path, err)
	}
	return signer, nil
}

// generateKey writes a new key to path unless one appears concurrently: the
// key is written to a temporary file and hard-linked into place, which fails
// if path exists.
func generateKey(path string) error {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return fmt.Errorf("generate ed25519 key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, KeyComment)
	if err != nil {
		return fmt.Errorf("encode ssh key: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".id_ed25519-*")
	if err != nil {
		return fmt.Errorf("write ssh key: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("write ssh key: %w", err)
	}
	if _, err := tmp.Write(pem.EncodeToMemory(block)); err != nil {
		tmp.Close()
		return fmt.Errorf("write ssh key: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write ssh key: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write ssh key: %w", err)
	}
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("install ssh key %s: %w", path, err)
	}
	return nil
}
