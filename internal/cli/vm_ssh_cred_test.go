package cli

import (
	"crypto/ed25519"
	"crypto/rand"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

func TestPinnedHostKeysAcceptsOnlyThePinnedKey(t *testing.T) {
	newKey := func() ssh.PublicKey {
		pub, _, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		k, err := ssh.NewPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	pinned, other := newKey(), newKey()
	cb, algos, err := pinnedHostKeys("dev", []string{string(ssh.MarshalAuthorizedKey(pinned))})
	if err != nil {
		t.Fatal(err)
	}
	if len(algos) != 1 || algos[0] != ssh.KeyAlgoED25519 {
		t.Errorf("algorithms %q", algos)
	}
	if err := cb("172.30.0.2:22", nil, pinned); err != nil {
		t.Errorf("pinned key refused: %v", err)
	}
	if err := cb("172.30.0.2:22", nil, other); err == nil || !strings.Contains(err.Error(), "possible MITM") {
		t.Errorf("other key: %v", err)
	}
	if _, _, err := pinnedHostKeys("dev", nil); err == nil || !strings.Contains(err.Error(), "no host key is pinned") {
		t.Errorf("no keys: %v", err)
	}
	if _, _, err := pinnedHostKeys("dev", []string{"garbage"}); err == nil {
		t.Error("garbage accepted")
	}
}
