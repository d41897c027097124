package e2e

import (
	"bytes"
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
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/vm"
)

// TestE2EAgent talks to a real guest's banger-agent over its virtio-serial
// port (the unix socket QEMU listens on in the VM's runtime dir), with the
// token the daemon wrote: ping, a wrong token, exec with separate streams
// and stdin, the listening ports (sshd on 22), and an identity applied in
// place (clock, RNG, machine-id, network, a new ssh host key that sshd must
// serve, then the VM's own key again).
func TestE2EAgent(t *testing.T) {
	e := newEnv(t, envOptions{TapPool: 1})
	e.must("vm", "create", "--name", "a1")
	v := e.show("a1")
	if v.State != model.StateRunning || v.Driver != "qemu" {
		t.Fatalf("after create: %+v", v)
	}
	tokenData, err := os.ReadFile(filepath.Join(e.layout.VMDir(v.ID), "agent.token"))
	if err != nil {
		t.Fatal(err)
	}
	token, err := agent.ParseToken(tokenData)
	if err != nil {
		t.Fatal(err)
	}
	rdir := v.Runtime.RuntimeDir
	if rdir == "" {
		rdir = e.layout.VMRuntimeDir(v.ID)
	}
	sock := filepath.Join(rdir, vm.AgentSocketName)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// QEMU's chardev serves one host connection at a time: one client at a
	// time here too.
	c := agent.NewConn(agent.DialUnix(sock), token, "virtio-serial")
	var h agent.Health
	t0 := time.Now()
	for {
		pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
		h, err = c.Ping(pctx)
		pcancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("agent never answered: %v\nconsole:\n%s", err, tail(readFile(v.Runtime.LogPath), 3000))
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("agent ping after ssh-ready: %s; health %+v", time.Since(t0).Round(time.Millisecond), h)
	if h.Protocol != agent.Protocol || h.Transport != "virtio-serial" || h.Hostname != "a1" || h.BootID == "" {
		t.Errorf("health = %+v", h)
	}
	t0 = time.Now()
	const pings = 20
	for range pings {
		if _, err := c.Ping(ctx); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("ping round trip over virtio-serial: %s", (time.Since(t0) / pings).Round(time.Microsecond))

	// Reconnects: a session closed idle (as the daemon's are) and a new
	// one a moment later must be served at once, again and again.
	for i, pause := range []time.Duration{3 * time.Second, 100 * time.Millisecond, 1500 * time.Millisecond} {
		c.Close()
		time.Sleep(pause)
		c = agent.NewConn(agent.DialUnix(sock), token, "virtio-serial")
		t0 = time.Now()
		pctx, pcancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := c.Ping(pctx)
		pcancel()
		if err != nil {
			t.Fatalf("reconnect %d (after %s): %v", i, pause, err)
		}
		t.Logf("reconnect %d after %s: ping in %s", i, pause, time.Since(t0).Round(time.Millisecond))
	}
	// A burst of short sessions: each new connection's request must be
	// answered even when it reaches the guest before the port's "host
	// connected" message does (the agent then reads EOF right after the
	// request; see internal/agent/serialport.go).
	t0 = time.Now()
	for i := range 40 {
		c.Close()
		c = agent.NewConn(agent.DialUnix(sock), token, "virtio-serial")
		pctx, pcancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := c.Ping(pctx)
		pcancel()
		if err != nil {
			t.Fatalf("burst reconnect %d: %v", i, err)
		}
	}
	t.Logf("40 reconnects in a row: %s each", (time.Since(t0) / 40).Round(time.Millisecond))
	defer c.Close()

	var out, errb bytes.Buffer
	res, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"sh", "-c", "echo to-out; echo to-err >&2; cat; exit 7"},
		Stdin: strings.NewReader("from-stdin\n"), Stdout: &out, Stderr: &errb})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 7 || out.String() != "to-out\nfrom-stdin\n" || errb.String() != "to-err\n" {
		t.Fatalf("exec: exit %d stdout %q stderr %q", res.ExitCode, out.String(), errb.String())
	}

	ports, err := c.Ports(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sshd := false
	for _, p := range ports {
		if p.Port == 22 && strings.HasPrefix(p.Proto, "tcp") && p.Process == "sshd" && p.PID > 0 {
			sshd = true
		}
	}
	if !sshd {
		t.Fatalf("ports lack sshd on 22: %+v", ports)
	}

	// Identity, applied in place with the VM's own network settings.
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	block, _ := ssh.MarshalPrivateKey(priv, "")
	newKey := pem.EncodeToMemory(block)
	signer, _ := ssh.NewSignerFromKey(priv)
	ownKey, err := os.ReadFile(filepath.Join(e.layout.VMDir(v.ID), "ssh_host_ed25519_key"))
	if err != nil {
		t.Fatal(err)
	}
	entropy := make([]byte, 64)
	_, _ = rand.Read(entropy)
	mid := strings.Repeat("5a", 16)
	id := agent.Identity{
		Time: time.Now(), Entropy: entropy, MachineID: mid, Hostname: "a1", Domain: "vm",
		MAC: v.MAC, Address: v.IP + "/24", Gateway: gatewayOf(v.IP), DNS: []string{gatewayOf(v.IP)},
		HostKey: newKey,
	}
	t0 = time.Now()
	ir, err := c.ApplyIdentity(ctx, id)
	if err != nil {
		t.Fatalf("apply identity: %v", err)
	}
	t.Logf("apply identity (with sshd reload): %s; %+v", time.Since(t0).Round(time.Millisecond), ir)
	if ir.MachineID != mid || ir.Hostname != "a1" || ir.EntropyBits != 512 || ir.Interface == "" ||
		ir.HostKeyFingerprint != ssh.FingerprintSHA256(signer.PublicKey()) {
		t.Fatalf("identity result %+v", ir)
	}
	out.Reset()
	if _, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"sh", "-c", "cat /etc/machine-id; ip -4 -o addr show dev " + ir.Interface}, Stdout: &out}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), mid) || !strings.Contains(out.String(), v.IP+"/24") {
		t.Fatalf("guest after identity: %q", out.String())
	}
	if _, err := c.ApplyIdentity(ctx, agent.Identity{Hostname: "a1", HostKey: ownKey}); err != nil {
		t.Fatalf("restore the VM's own host key: %v", err)
	}
	// banger's pinned key works again, and the network still does.
	if got := e.mustSSH(v.IP, "hostname"); got != "a1" {
		t.Fatalf("ssh after identity: %q", got)
	}
	c.Close()

	// A wrong token is refused, with the channel free again.
	bad := agent.NewConn(agent.DialUnix(sock), strings.Repeat("0", 64), "virtio-serial")
	if _, err := bad.Ping(ctx); !agent.IsCode(err, agent.CodeUnauthorized) {
		t.Fatalf("ping with a wrong token: %v", err)
	}
	if _, err := bad.Exec(ctx, agent.ExecRequest{Argv: []string{"touch", "/root/pwned"}}); !agent.IsCode(err, agent.CodeUnauthorized) {
		t.Fatalf("exec with a wrong token: %v", err)
	}
	bad.Close()
	if out, err := e.ssh(v.IP, "test -e /root/pwned && echo present || echo absent"); err != nil || strings.TrimSpace(out) != "absent" {
		t.Fatalf("an unauthenticated exec ran: %q %v", out, err)
	}

	e.must("vm", "delete", "a1")
	e.assertNoLeaks("after delete")
}

func gatewayOf(ip string) string {
	i := strings.LastIndexByte(ip, '.')
	return ip[:i] + ".1"
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}
