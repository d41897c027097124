package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/template"
	"github.com/bangerdev/banger/internal/vm"
)

// guestIdentity is what one VM reports about itself over ssh.
type guestIdentity struct {
	hostname, machineID, mac, addr, hostKey, random, bootID string
}

// identityScript prints one value per line (see guestIdentity).
const identityScript = `hostname
cat /etc/machine-id
for d in /sys/class/net/*; do [ "${d##*/}" = lo ] || cat $d/address; done
ip -4 -o addr show scope global | awk '{print $4}'
cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; echo
cat /proc/sys/kernel/random/boot_id`

func (e *env) identity(ip string) guestIdentity {
	e.t.Helper()
	lines := strings.Split(e.mustSSH(ip, identityScript), "\n")
	if len(lines) != 7 {
		e.t.Fatalf("identity of %s: %q", ip, lines)
	}
	return guestIdentity{lines[0], lines[1], lines[2], lines[3], lines[4], lines[5], lines[6]}
}

func (e *env) templates() []template.Template {
	e.t.Helper()
	var ts []template.Template
	if err := json.Unmarshal([]byte(e.must("image", "templates", "--json")), &ts); err != nil {
		e.t.Fatal(err)
	}
	return ts
}

// TestE2ETemplate restores VMs from a template on a real guest: each gets
// its own identity, both answer over their own addresses, their /root
// disks are separate, a restored VM survives stop/start (cold boot), a
// corrupted template falls back to a cold boot with a warning, and a
// changed image gets a new template.
func TestE2ETemplate(t *testing.T) {
	e := newEnv(t, envOptions{TapPool: 2, Templates: true})

	t0 := time.Now()
	out := e.must("image", "warm")
	t.Logf("image warm: %s: %s", time.Since(t0).Round(time.Millisecond), strings.TrimSpace(out))
	ts := e.templates()
	if len(ts) != 1 || ts[0].Key.Image != imageName || ts[0].Key.Driver != "qemu" || ts[0].SizeBytes <= 0 ||
		!strings.Contains(ts[0].Key.VMMVersion, "accel tcg") || ts[0].Key.DiskMiB != 1024 {
		t.Fatalf("templates after warm: %+v", ts)
	}
	tmpl := ts[0]
	t.Logf("template %s: %d MiB on disk, made in %s", tmpl.ID, tmpl.SizeBytes>>20, tmpl.MakeTime.Round(time.Millisecond))
	if out := e.must("image", "warm"); !strings.Contains(out, "template ready") {
		t.Errorf("second warm made another template: %q", out)
	}

	var ids [2]guestIdentity
	var vms [2]*model.VM
	for i, name := range []string{"r1", "r2"} {
		t0 := time.Now()
		e.must("vm", "create", "--name", name)
		took := time.Since(t0)
		v := e.show(name)
		if v.State != model.StateRunning || v.Runtime.Template != tmpl.ID {
			t.Fatalf("%s after create: %+v", name, v)
		}
		// Right after restore: the RNG must already differ.
		ids[i] = e.identity(v.IP)
		vms[i] = v
		t.Logf("%s restored -> ssh ready in %s: %+v", name, took.Round(time.Millisecond), ids[i])
	}
	e.checkRestoredIdentities(t, vms, ids)
	if a, b := ids[0], ids[1]; a.bootID != b.bootID {
		t.Logf("boot ids differ (%s, %s); they are the template's by nature", a.bootID, b.bootID)
	}

	// Separate disks, each VM on its own address.
	e.mustSSH(vms[0].IP, "echo only-r1 > /root/only-r1 && sync")
	if got := e.mustSSH(vms[1].IP, "test -e /root/only-r1 && echo present || echo absent"); got != "absent" {
		t.Fatalf("a file written in r1 is visible in r2: %q", got)
	}
	if got := e.mustSSH(vms[1].IP, "hostname"); got != "r2" {
		t.Fatalf("r2's address answers as %q", got)
	}

	// stop/start of a restored VM: a cold boot of its own disks keeps
	// /root and the identity (boot_id is not compared: it stays the
	// template's until a cold boot, see docs/templates.md).
	e.must("vm", "stop", "r1")
	e.must("vm", "start", "r1")
	if got := e.mustSSH(vms[0].IP, "cat /root/only-r1; hostname; cat /etc/machine-id"); got != "only-r1\nr1\n"+vm.MachineID(vms[0].ID) {
		t.Fatalf("r1 after stop/start: %q", got)
	}

	// A corrupted template: the create warns, discards it and cold-boots.
	state := filepath.Join(e.layout.TemplatesDir(), tmpl.ID, tmpl.Files.State)
	if err := os.WriteFile(state, []byte("not a migration stream"), 0o600); err != nil {
		t.Fatal(err)
	}
	res := e.bangerT(t, "", nil, "vm", "create", "--name", "r3")
	if res.code != 0 || !strings.Contains(res.stderr, "failed to restore") || !strings.Contains(res.stderr, "booting from scratch") {
		t.Fatalf("create with a corrupted template: %s", res)
	}
	r3 := e.show("r3")
	if r3.State != model.StateRunning || r3.Runtime.Template != "" {
		t.Fatalf("r3 after fallback: %+v", r3)
	}
	if got := e.mustSSH(r3.IP, "hostname"); got != "r3" {
		t.Fatalf("r3 hostname %q", got)
	}
	if _, err := os.Stat(filepath.Dir(state)); !os.IsNotExist(err) {
		t.Errorf("the corrupted template was not discarded: %v", err)
	}
	for _, n := range []string{"r1", "r2", "r3"} {
		e.must("vm", "delete", n)
	}

	// The image changes (its digest): the next warm makes a new template
	// and removes the old one.
	e.must("image", "warm")
	old := e.templates()
	ctx := context.Background()
	st, err := store.Open(ctx, e.layout.DBPath())
	if err != nil {
		t.Fatal(err)
	}
	img, err := st.GetImage(ctx, imageName)
	if err == nil {
		img.SHA256 = strings.Repeat("e", 64)
		err = st.PutImage(ctx, img)
	}
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	e.must("image", "warm")
	now := e.templates()
	if len(old) != 1 || len(now) != 1 || now[0].ID == old[0].ID || now[0].Key.ImageDigest != strings.Repeat("e", 64) {
		t.Fatalf("templates after the image changed: before %+v, after %+v", old, now)
	}
	if out := e.must("image", "warm", "--rm"); !strings.Contains(out, "removed 1") {
		t.Errorf("warm --rm: %q", out)
	}
	if len(e.templates()) != 0 {
		t.Error("templates left after warm --rm")
	}
	e.assertNoLeaks("after delete")
}

// checkRestoredIdentities checks that each restored VM shows its own
// identity (hostname, machine id, MAC, address, the host key banger
// pinned, 64 random bytes) and that no part of it is shared by the two.
func (e *env) checkRestoredIdentities(t *testing.T, vms [2]*model.VM, ids [2]guestIdentity) {
	t.Helper()
	for i, v := range vms {
		id := ids[i]
		pem, err := os.ReadFile(filepath.Join(e.layout.VMDir(v.ID), "ssh_host_ed25519_key"))
		if err != nil {
			t.Fatal(err)
		}
		signer, err := ssh.ParsePrivateKey(pem)
		if err != nil {
			t.Fatal(err)
		}
		wantKey := strings.Fields(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))[1]
		if id.hostname != v.Name || id.machineID != vm.MachineID(v.ID) || id.mac != v.MAC ||
			id.addr != v.IP+"/24" || id.hostKey != wantKey || len(id.random) != 64 {
			t.Errorf("%s identity %+v; want hostname %s machine-id %s mac %s addr %s/24 host key %s",
				v.Name, id, v.Name, vm.MachineID(v.ID), v.MAC, v.IP, wantKey)
		}
	}
	a, b := ids[0], ids[1]
	for what, pair := range map[string][2]string{"hostname": {a.hostname, b.hostname}, "machine-id": {a.machineID, b.machineID},
		"mac": {a.mac, b.mac}, "address": {a.addr, b.addr}, "host key": {a.hostKey, b.hostKey}, "urandom": {a.random, b.random}} {
		if pair[0] == pair[1] {
			t.Errorf("both restored VMs have the same %s: %q", what, pair[0])
		}
	}
}
