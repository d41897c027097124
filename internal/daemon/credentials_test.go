package daemon

import (
	"context"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/guest"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/store"
)

// The CLI asks the daemon for the guest key and a VM's pinned host keys
// instead of reading the daemon's files; the store status likewise.
func TestSSHCredentialsAndStoreStatusByRPC(t *testing.T) {
	d, c := startDaemon(t)
	ctx := context.Background()
	var vm model.VM
	if err := c.Call(ctx, api.MethodVMCreate, api.VMCreateParams{Name: "k1", NoStart: true}, &vm); err != nil {
		t.Fatal(err)
	}
	vm.IP = "172.30.0.9"
	if err := d.store.UpdateVM(ctx, &vm); err != nil {
		t.Fatal(err)
	}
	signer, _, err := guest.EnsureKey(d.layout.SSHDir())
	if err != nil {
		t.Fatal(err)
	}
	kh, err := guest.OpenKnownHosts(d.layout.KnownHostsPath())
	if err != nil {
		t.Fatal(err)
	}
	hostKey := signer.PublicKey() // any key will do as the VM's pinned host key
	if err := kh.Pin([]string{"k1.vm"}, hostKey); err != nil {
		t.Fatal(err)
	}
	var cred api.SSHCredentials
	if err := c.Call(ctx, api.MethodSSHCredentials, api.Ref{Ref: "k1"}, &cred); err != nil {
		t.Fatal(err)
	}
	got, err := ssh.ParsePrivateKey([]byte(cred.PrivateKey))
	if err != nil || string(got.PublicKey().Marshal()) != string(signer.PublicKey().Marshal()) {
		t.Fatalf("private key: %v", err)
	}
	if len(cred.HostKeys) != 1 || cred.HostKeys[0] != strings.TrimSpace(string(ssh.MarshalAuthorizedKey(hostKey))) {
		t.Errorf("host keys %q", cred.HostKeys)
	}
	if err := c.Call(ctx, api.MethodSSHCredentials, api.Ref{Ref: "nope"}, &cred); err == nil {
		t.Error("unknown VM answered")
	}
	var st api.StoreStatus
	if err := c.Call(ctx, api.MethodStoreStatus, nil, &st); err != nil {
		t.Fatal(err)
	}
	if store.MigrationStatus(st.Status) != store.MigrationsOK || st.Path != d.layout.DBPath() {
		t.Errorf("store status %+v", st)
	}
}
