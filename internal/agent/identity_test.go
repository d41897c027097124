package agent_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bangerdev/banger/internal/agent"
)

func hostKeyPEM(t *testing.T) ([]byte, ssh.PublicKey) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	s, _ := ssh.NewSignerFromKey(priv)
	return pem.EncodeToMemory(block), s.PublicKey()
}

func TestIdentityValidate(t *testing.T) {
	key, _ := hostKeyPEM(t)
	good := agent.Identity{
		Token: strings.Repeat("ab", 32), Time: time.Now(), Entropy: make([]byte, 64), MachineID: strings.Repeat("0f", 16),
		Hostname: "vm-1", Domain: "vm", MAC: "02:fc:00:00:00:05", Address: "172.30.0.5/24", Gateway: "172.30.0.1",
		DNS: []string{"172.30.0.1"}, HostKey: key,
	}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := (agent.Identity{}).Validate(); err != nil {
		t.Fatalf("empty identity: %v", err)
	}
	for name, mut := range map[string]func(*agent.Identity){
		"token":      func(i *agent.Identity) { i.Token = "ABC" },
		"entropy":    func(i *agent.Identity) { i.Entropy = make([]byte, agent.MaxEntropy+1) },
		"machine id": func(i *agent.Identity) { i.MachineID = strings.Repeat("0F", 16) },
		"hostname":   func(i *agent.Identity) { i.Hostname = "a_b" },
		"hostname /": func(i *agent.Identity) { i.Hostname = "../etc" },
		"domain":     func(i *agent.Identity) { i.Domain = "a b" },
		"mac":        func(i *agent.Identity) { i.MAC = "02:fc" },
		"address":    func(i *agent.Identity) { i.Address = "172.30.0.5" },
		"address v6": func(i *agent.Identity) { i.Address = "fd00::1/64" },
		"gateway":    func(i *agent.Identity) { i.Gateway = "gw" },
		"dns":        func(i *agent.Identity) { i.DNS = []string{"1.1.1.1; rm -rf /"} },
		"host key":   func(i *agent.Identity) { i.HostKey = []byte("not a key") },
		"no address": func(i *agent.Identity) { i.Address = "" },
	} {
		id := good
		mut(&id)
		if err := id.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestGuestApplyIdentityFiles(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"etc/ssh", "etc/banger"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(root, "etc/machine-id"), []byte("old\n"), 0o444)
	key, pub := hostKeyPEM(t)
	g := &agent.Guest{Root: root, ProcRoot: "/proc"}
	id := agent.Identity{
		Token: strings.Repeat("cd", 32), MachineID: strings.Repeat("1a", 16), Hostname: "vm7", Domain: "vm",
		MAC: "02:fc:00:00:00:07", Address: "172.30.0.7/24", Gateway: "172.30.0.1", DNS: []string{"172.30.0.1", "9.9.9.9"},
		HostKey: key,
	}
	res, err := g.ApplyIdentity(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if res.MachineID != id.MachineID || res.Hostname != "vm7" || res.HostKeyFingerprint != ssh.FingerprintSHA256(pub) {
		t.Fatalf("result %+v", res)
	}
	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join(root, p))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	checks := map[string]string{
		"etc/machine-id":                   id.MachineID + "\n",
		"etc/hostname":                     "vm7\n",
		"etc/banger/network.env":           "ADDRESS=172.30.0.7/24\nGATEWAY=172.30.0.1\nDNS=172.30.0.1,9.9.9.9\nMAC=02:fc:00:00:00:07\n",
		"etc/ssh/ssh_host_ed25519_key":     string(key),
		"etc/ssh/ssh_host_ed25519_key.pub": strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub))) + " root@vm7\n",
		"etc/banger/agent.token":           id.Token + "\n",
	}
	for p, want := range checks {
		if got := read(p); got != want {
			t.Errorf("%s = %q, want %q", p, got, want)
		}
	}
	if !strings.Contains(read("etc/hosts"), "127.0.1.1\tvm7.vm vm7\n") {
		t.Errorf("hosts = %q", read("etc/hosts"))
	}
	for p, mode := range map[string]os.FileMode{"etc/ssh/ssh_host_ed25519_key": 0o600, "etc/banger/agent.token": 0o600, "etc/machine-id": 0o444} {
		st, err := os.Stat(filepath.Join(root, p))
		if err != nil || st.Mode().Perm() != mode {
			t.Errorf("%s mode = %v (%v), want %v", p, st.Mode().Perm(), err, mode)
		}
	}
}

func TestTokens(t *testing.T) {
	a, err := agent.NewToken()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := agent.NewToken()
	if a == b || len(a) != 2*agent.TokenBytes {
		t.Fatalf("tokens %q %q", a, b)
	}
	if got, err := agent.ParseToken([]byte(a + "\n")); err != nil || got != a {
		t.Fatalf("ParseToken = %q, %v", got, err)
	}
	for _, bad := range []string{"", "xyz", strings.ToUpper(a), a + a} {
		if _, err := agent.ParseToken([]byte(bad)); err == nil {
			t.Errorf("ParseToken(%q) accepted", bad)
		}
	}
}
