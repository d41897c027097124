package netw

import (
	"context"
	"fmt"
	"github.com/bangerdev/banger/internal/doctor"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/vmdns"
)

func TestCheckDNS(t *testing.T) {
	s := vmdns.New("127.0.0.1:0", "vm", nil)
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	addr := s.Addr()
	if r := CheckDNS(context.Background(), addr, "vm"); r.Status != doctor.Pass {
		t.Fatalf("CheckDNS = %+v", r)
	}
	if r := CheckDNS(context.Background(), addr, "other"); r.Status != doctor.Fail {
		t.Fatalf("CheckDNS for a zone it does not serve = %+v", r)
	}
	s.Close()
	r := CheckDNS(context.Background(), addr, "vm")
	if r.Status != doctor.Fail || !strings.Contains(r.Hint, "dig @127.0.0.1 -p") {
		t.Fatalf("CheckDNS with no server = %+v", r)
	}
}

func TestCheckIPForward(t *testing.T) {
	dir := t.TempDir()
	on, off := filepath.Join(dir, "on"), filepath.Join(dir, "off")
	os.WriteFile(on, []byte("1\n"), 0o644)
	os.WriteFile(off, []byte("0\n"), 0o644)
	for _, c := range []struct {
		path   string
		anyNAT bool
		want   doctor.Status
	}{{on, true, doctor.Pass}, {on, false, doctor.Pass}, {off, false, doctor.Pass}, {off, true, doctor.Fail}, {filepath.Join(dir, "missing"), true, doctor.Warn}} {
		if r := CheckIPForward(c.path, c.anyNAT); r.Status != c.want {
			t.Errorf("CheckIPForward(%s, %v) = %+v, want %s", filepath.Base(c.path), c.anyNAT, r, c.want)
		}
	}
	if r := CheckIPForward(off, true); !strings.Contains(r.Hint, "sysctl -w net.ipv4.ip_forward=1") {
		t.Errorf("fix hint %q", r.Hint)
	}
}

func TestCheckResolverRouting(t *testing.T) {
	cfg := Config{}
	resp := map[string]string{
		"dns":    "Link 7 (br-banger): 127.0.0.1:5353\n",
		"domain": "Link 7 (br-banger): ~vm\n",
	}
	rec := &hostexec.Recorder{Respond: func(c hostexec.Cmd) (hostexec.Result, error) {
		return hostexec.Result{Stdout: []byte(resp[c.Args[0]])}, nil
	}}
	ctx := context.Background()
	if r := CheckResolverRouting(ctx, rec, cfg, "127.0.0.1:5353", "vm"); r.Status != doctor.Pass {
		t.Fatalf("routed: %+v", r)
	}
	if got := rec.Lines(); got[0] != "resolvectl dns br-banger" || got[1] != "resolvectl domain br-banger" {
		t.Fatalf("commands %q", got)
	}
	resp["domain"] = "Link 7 (br-banger):\n"
	if r := CheckResolverRouting(ctx, rec, cfg, "127.0.0.1:5353", "vm"); r.Status != doctor.Fail || !strings.Contains(r.Hint, "resolvectl domain br-banger ~vm") {
		t.Fatalf("unrouted: %+v", r)
	}
	rec.Respond = func(c hostexec.Cmd) (hostexec.Result, error) {
		return hostexec.Result{ExitCode: -1}, fmt.Errorf("resolvectl: %w", hostexec.ErrNotFound)
	}
	if r := CheckResolverRouting(ctx, rec, cfg, "127.0.0.1:5353", "vm"); r.Status != doctor.Warn || !strings.Contains(r.Hint, "server=/vm/127.0.0.1#5353") {
		t.Fatalf("no resolved: %+v", r)
	}
}

func TestCheckNATTableWithoutPrivilegeOrTools(t *testing.T) {
	ctx := context.Background()
	denied := &hostexec.Recorder{Respond: func(c hostexec.Cmd) (hostexec.Result, error) {
		return hostexec.Result{ExitCode: 1}, &hostexec.ExitError{Cmd: c.String(), ExitCode: 1, Stderr: "Error: Operation not permitted"}
	}}
	if r := CheckNATTable(ctx, denied, Config{}, nil); r.Status != doctor.Warn || !strings.Contains(r.Hint, "sudo") {
		t.Fatalf("unprivileged: %+v", r)
	}
	none := &hostexec.Recorder{Respond: func(c hostexec.Cmd) (hostexec.Result, error) {
		return hostexec.Result{ExitCode: -1}, fmt.Errorf("%s: %w", c.Name, hostexec.ErrNotFound)
	}}
	// Without nftables banger refuses to run VMs: the doctor fails with
	// the fix, whether or not VMs use NAT.
	for _, ips := range [][]netip.Addr{nil, {netip.MustParseAddr("172.30.0.2")}} {
		if r := CheckNATTable(ctx, none, Config{}, ips); r.Status != doctor.Fail || !strings.Contains(r.Hint, "apt-get install nftables") {
			t.Fatalf("no nft (NAT VMs %v): %+v", ips, r)
		}
	}
	absent := &hostexec.Recorder{Respond: func(c hostexec.Cmd) (hostexec.Result, error) {
		return hostexec.Result{ExitCode: 1}, &hostexec.ExitError{Cmd: c.String(), ExitCode: 1, Stderr: "Error: No such file or directory"}
	}}
	if r := CheckNATTable(ctx, absent, Config{}, nil); r.Status != doctor.Fail || !strings.Contains(r.Message, "missing") {
		t.Fatalf("table missing: %+v", r)
	}
}

func TestCheckBridgeMissingInHostIsReported(t *testing.T) {
	// Read-only: looks up a name that cannot exist.
	name := "bgtnnone0"
	if _, err := net.InterfaceByName(name); err == nil {
		t.Skip(name + " exists")
	}
	if r := CheckBridge(Config{Bridge: name}); r.Status != doctor.Fail || r.Hint == "" {
		t.Fatalf("CheckBridge = %+v", r)
	}
}

func TestCheckTunDevice(t *testing.T) {
	dir := t.TempDir()
	regular := filepath.Join(dir, "tun")
	os.WriteFile(regular, nil, 0o666)
	if r := CheckTunDevice(regular); r.Status != doctor.Fail {
		t.Fatalf("regular file: %+v", r)
	}
	if r := CheckTunDevice(filepath.Join(dir, "missing")); r.Status != doctor.Fail || !strings.Contains(r.Hint, "modprobe tun") {
		t.Fatalf("missing: %+v", r)
	}
	// /dev/null is a character device with mode 0666.
	if r := CheckTunDevice("/dev/null"); r.Status != doctor.Pass {
		t.Fatalf("/dev/null: %+v", r)
	}
	if fi, err := os.Stat(TunDevicePath); err == nil && fi.Mode().Perm()&0o006 != 0o006 {
		if r := CheckTunDevice(TunDevicePath); r.Status != doctor.Warn || !strings.Contains(r.Hint, "chmod 0666") {
			t.Fatalf("restrictive %s: %+v", TunDevicePath, r)
		}
	}
}
