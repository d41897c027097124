package privops

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/rpc"
)

// recordedCall is one call that reached the fake implementation.
type recordedCall struct {
	Method string
	Args   []any
	OpID   string
}

// fakeOps records calls; fail, when set, is returned by every method.
type fakeOps struct {
	mu    sync.Mutex
	calls []recordedCall
	fail  error
}

func (f *fakeOps) rec(ctx context.Context, method string, args ...any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, recordedCall{Method: method, Args: args, OpID: rpc.OpIDFrom(ctx)})
	return f.fail
}

func (f *fakeOps) take() []recordedCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.calls
	f.calls = nil
	return c
}

func (f *fakeOps) EnsureBridge(ctx context.Context, s BridgeSpec) error {
	return f.rec(ctx, "EnsureBridge", s)
}
func (f *fakeOps) DeleteBridge(ctx context.Context, n string) error {
	return f.rec(ctx, "DeleteBridge", n)
}
func (f *fakeOps) CreateTap(ctx context.Context, s TapSpec) error { return f.rec(ctx, "CreateTap", s) }
func (f *fakeOps) DeleteTap(ctx context.Context, n string) error  { return f.rec(ctx, "DeleteTap", n) }
func (f *fakeOps) EnsureVMNet(ctx context.Context, s VMNetSpec) error {
	return f.rec(ctx, "EnsureVMNet", s)
}
func (f *fakeOps) ClearVMNet(ctx context.Context, s VMNetSpec) error {
	return f.rec(ctx, "ClearVMNet", s)
}
func (f *fakeOps) SetResolverRouting(ctx context.Context, s ResolverSpec) error {
	return f.rec(ctx, "SetResolverRouting", s)
}
func (f *fakeOps) AttachLoop(ctx context.Context, s LoopSpec) (string, error) {
	return "/dev/loop7", f.rec(ctx, "AttachLoop", s)
}
func (f *fakeOps) DetachLoop(ctx context.Context, d string) error {
	return f.rec(ctx, "DetachLoop", d)
}
func (f *fakeOps) CreateSnapshot(ctx context.Context, s SnapshotSpec) (string, error) {
	return "/dev/mapper/" + s.Name, f.rec(ctx, "CreateSnapshot", s)
}
func (f *fakeOps) RemoveSnapshot(ctx context.Context, n string) error {
	return f.rec(ctx, "RemoveSnapshot", n)
}
func (f *fakeOps) LaunchVMM(ctx context.Context, s LaunchSpec) (int, error) {
	return 4242, f.rec(ctx, "LaunchVMM", s)
}
func (f *fakeOps) SignalVMM(ctx context.Context, id ProcessIdentity, sig syscall.Signal) error {
	return f.rec(ctx, "SignalVMM", id, sig)
}
func (f *fakeOps) ChownPath(ctx context.Context, p string, uid, gid int) error {
	return f.rec(ctx, "ChownPath", p, uid, gid)
}

func (f *fakeOps) PrepareJail(ctx context.Context, s JailSpec) (string, error) {
	return "/jail/" + s.ExecName + "/" + s.ID + "/root", f.rec(ctx, "PrepareJail", s)
}
func (f *fakeOps) RemoveJail(ctx context.Context, s JailSpec) error {
	return f.rec(ctx, "RemoveJail", s)
}

// startHelper serves fake behind the policy of fx on a real socket.
func startHelper(t *testing.T, fx *polFixture, fake Ops) *Client {
	t.Helper()
	srv, err := NewServer(fake, ServerConfig{
		Policy:      *fx.p,
		AllowedUIDs: []uint32{uint32(os.Geteuid())},
		Version:     "test",
	})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(fx.run, "root-helper.sock")
	ln, err := Listen(sock, os.Geteuid(), os.Getegid())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("helper did not stop")
		}
	})
	return NewClient(sock)
}

func TestHelperRoundTrip(t *testing.T) {
	fx := newPolFixture(t)
	fake := &fakeOps{}
	c := startHelper(t, fx, fake)
	ctx := rpc.WithOpID(context.Background(), "op-daemon-1")

	info, err := c.Ping(ctx)
	if err != nil || info.Version != "test" || info.PID != os.Getpid() {
		t.Fatalf("ping: %+v %v", info, err)
	}

	bridge := BridgeSpec{Name: "br-banger", CIDR: "172.30.0.1/24", MTU: 1500}
	tap := TapSpec{Name: "bgtap1", Bridge: "br-banger", Owner: 1000, Group: 1001}
	nat := VMNetSpec{VMIP: "172.30.0.9", MAC: "02:ba:ac:1e:00:09", Tap: "bgtap1", Bridge: "br-banger", NAT: true}
	res := ResolverSpec{Bridge: "br-banger", Server: "127.0.0.1:5353", Domain: "vm", Enable: true}
	loop := LoopSpec{File: fx.disk, ReadOnly: true}
	snap := SnapshotSpec{Name: "banger-a", Origin: "/dev/loop7", COW: "/dev/loop8", SizeBytes: 1 << 30}
	launch := LaunchSpec{Argv: []string{"firecracker", "--api-sock", fx.vmRun + "/fc.sock"}, Dir: fx.vmRun,
		LogPath: fx.vmRun + "/vmm.log", PIDFile: fx.vmRun + "/vmm.pid", UID: 1000, GID: 1001, Env: []string{"PATH=/usr/bin"}}
	resolved := launch
	resolved.Argv = []string{"/usr/local/bin/firecracker", "--api-sock", fx.vmRun + "/fc.sock"}
	ident := ProcessIdentity{PID: 4242, Comm: "firecracker", Marker: fx.vmRun + "/fc.sock"}
	sock := fx.vmRun + "/fc.sock"
	if err := os.WriteFile(sock, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(c.EnsureBridge(ctx, bridge))
	must(c.DeleteBridge(ctx, "br-banger"))
	must(c.CreateTap(ctx, tap))
	must(c.DeleteTap(ctx, "bgtap1"))
	must(c.EnsureVMNet(ctx, nat))
	must(c.ClearVMNet(ctx, nat))
	must(c.SetResolverRouting(ctx, res))
	dev, err := c.AttachLoop(ctx, loop)
	must(err)
	if dev != "/dev/loop7" {
		t.Fatalf("AttachLoop device %q", dev)
	}
	must(c.DetachLoop(ctx, "/dev/loop7"))
	dm, err := c.CreateSnapshot(ctx, snap)
	must(err)
	if dm != "/dev/mapper/banger-a" {
		t.Fatalf("CreateSnapshot device %q", dm)
	}
	must(c.RemoveSnapshot(ctx, "banger-a"))
	pid, err := c.LaunchVMM(ctx, launch)
	must(err)
	if pid != 4242 {
		t.Fatalf("LaunchVMM pid %d", pid)
	}
	must(c.SignalVMM(ctx, ident, syscall.SIGTERM))
	must(c.ChownPath(ctx, sock, 1000, 1001))
	jail := JailSpec{ExecName: "firecracker", ID: "vm-1", UID: 1000, GID: 1001,
		Files: []JailFile{{Name: "vmlinux", Source: fx.disk}, {Name: "drive-root", Source: "/dev/mapper/banger-a"}}, Create: []string{"serial.log"}}
	chroot, err := c.PrepareJail(ctx, jail)
	must(err)
	if chroot != "/jail/firecracker/vm-1/root" {
		t.Fatalf("PrepareJail chroot %q", chroot)
	}
	must(c.RemoveJail(ctx, JailSpec{ExecName: "firecracker", ID: "vm-1"}))

	want := []recordedCall{
		{"EnsureBridge", []any{bridge}, ""},
		{"DeleteBridge", []any{"br-banger"}, ""},
		{"CreateTap", []any{tap}, ""},
		{"DeleteTap", []any{"bgtap1"}, ""},
		{"EnsureVMNet", []any{nat}, ""},
		{"ClearVMNet", []any{nat}, ""},
		{"SetResolverRouting", []any{res}, ""},
		{"AttachLoop", []any{loop}, ""},
		{"DetachLoop", []any{"/dev/loop7"}, ""},
		{"CreateSnapshot", []any{snap}, ""},
		{"RemoveSnapshot", []any{"banger-a"}, ""},
		{"LaunchVMM", []any{resolved}, ""},
		{"SignalVMM", []any{ident, syscall.SIGTERM}, ""},
		{"ChownPath", []any{sock, 1000, 1001}, ""},
		{"PrepareJail", []any{jail}, ""},
		{"RemoveJail", []any{JailSpec{ExecName: "firecracker", ID: "vm-1"}}, ""},
	}
	got := fake.take()
	if len(got) != len(want) {
		t.Fatalf("fake saw %d calls, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		want[i].OpID = "op-daemon-1"
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Errorf("call %d:\n got %+v\nwant %+v", i, got[i], want[i])
		}
	}
}

func TestHelperRefusesHostileArguments(t *testing.T) {
	fx := newPolFixture(t)
	fake := &fakeOps{}
	c := startHelper(t, fx, fake)
	ctx := rpc.WithOpID(context.Background(), "op-hostile")
	_, shadowErr := c.AttachLoop(ctx, LoopSpec{File: "/etc/shadow"})
	_, symErr := c.AttachLoop(ctx, LoopSpec{File: filepath.Join(fx.evil, "secret.img")})
	_, dmErr := c.CreateSnapshot(ctx, SnapshotSpec{Name: "root", Origin: "/dev/sda", COW: "/dev/loop1", SizeBytes: 512})
	_, shErr := c.LaunchVMM(ctx, LaunchSpec{Argv: []string{"/bin/sh", "-c", "id"}, Dir: fx.vmRun, LogPath: fx.vmRun + "/x.log", UID: 1000, GID: 1001})
	_, rootErr := c.LaunchVMM(ctx, LaunchSpec{Argv: []string{"firecracker"}, Dir: fx.vmRun, LogPath: fx.vmRun + "/x.log", UID: -1, GID: -1})
	_, jailerStateErr := c.LaunchVMM(ctx, LaunchSpec{Argv: []string{"jailer", "--id", "a", "--exec-file", "firecracker", "--uid", "1000", "--gid", "1001",
		"--chroot-base-dir", filepath.Join(fx.state, "jail"), "--daemonize"}, Dir: fx.vmRun, LogPath: fx.vmRun + "/x.log", UID: -1, GID: -1})
	jailOf := func(mut func(*JailSpec)) error {
		s := JailSpec{ExecName: "firecracker", ID: "vm-1", UID: 1000, GID: 1001, Files: []JailFile{{Name: "vmlinux", Source: fx.disk}}}
		mut(&s)
		_, err := c.PrepareJail(ctx, s)
		return err
	}
	for name, err := range map[string]error{
		"bridge eth0":     c.DeleteBridge(ctx, "eth0"),
		"bridge spec":     c.EnsureBridge(ctx, BridgeSpec{Name: "docker0", CIDR: "172.17.0.1/16"}),
		"tap eth0":        c.DeleteTap(ctx, "eth0"),
		"tap newline":     c.CreateTap(ctx, TapSpec{Name: "bgtap1\nx", Bridge: "br-banger", Owner: -1, Group: -1}),
		"nat lan":         c.EnsureVMNet(ctx, VMNetSpec{VMIP: "192.168.1.1", MAC: "02:ba:c0:a8:01:01", Tap: "bgtap1", Bridge: "br-banger", NAT: true}),
		"nat clear lan":   c.ClearVMNet(ctx, VMNetSpec{VMIP: "0.0.0.0", MAC: "02:ba:00:00:00:00", Tap: "bgtap1", Bridge: "br-banger"}),
		"spoof mac":       c.EnsureVMNet(ctx, VMNetSpec{VMIP: "172.30.0.9", MAC: "ff:ff:ff:ff:ff:ff", Tap: "bgtap1", Bridge: "br-banger"}),
		"resolver root":   c.SetResolverRouting(ctx, ResolverSpec{Bridge: "br-banger", Server: "127.0.0.1:5353", Domain: "~.", Enable: true}),
		"resolver com":    c.SetResolverRouting(ctx, ResolverSpec{Bridge: "br-banger", Server: "127.0.0.1:5353", Domain: "com", Enable: true}),
		"resolver server": c.SetResolverRouting(ctx, ResolverSpec{Bridge: "br-banger", Server: "127.0.0.1:53", Domain: "vm", Enable: true}),
		"loop shadow":     shadowErr,
		"loop symlink":    symErr,
		"detach sda":      c.DetachLoop(ctx, "/dev/sda"),
		"snapshot":        dmErr,
		"remove dm":       c.RemoveSnapshot(ctx, "vg0-root"),
		"launch sh":       shErr,
		"launch as root":  rootErr,
		"signal init":     c.SignalVMM(ctx, ProcessIdentity{PID: 1, Comm: "firecracker", Marker: "abcd"}, syscall.SIGKILL),
		"signal sshd":     c.SignalVMM(ctx, ProcessIdentity{PID: 999, Comm: "sshd", Marker: "abcd"}, syscall.SIGKILL),
		"signal sigstop":  c.SignalVMM(ctx, ProcessIdentity{PID: 999, Comm: "firecracker", Marker: "abcd"}, syscall.SIGSTOP),
		"chown shadow":    c.ChownPath(ctx, "/etc/shadow", 1000, 1001),
		"chown via link":  c.ChownPath(ctx, fx.evilF, 1000, 1001),
		"chown to root":   c.ChownPath(ctx, fx.disk, 0, 0),
		"chown traversal": c.ChownPath(ctx, fx.run+"/../outside/secret.img", 1000, 1001),
		"bridge lo":       c.DeleteBridge(ctx, "lo"),
		"tap docker0":     c.DeleteTap(ctx, "docker0"),
		"bridge host net": c.EnsureBridge(ctx, BridgeSpec{Name: "br-banger", CIDR: "0.0.0.0/0"}),
		"signal caller":   c.SignalVMM(ctx, ProcessIdentity{PID: os.Getpid(), Comm: "banger.test", Marker: "abcd"}, syscall.SIGKILL),
		"signal marker":   c.SignalVMM(ctx, ProcessIdentity{PID: 999, Comm: "firecracker", Marker: "ab"}, syscall.SIGKILL),
		"jailer in state": jailerStateErr,
		"jail id dotdot":  jailOf(func(s *JailSpec) { s.ID = "../../etc" }),
		"jail exec qemu":  jailOf(func(s *JailSpec) { s.ExecName = "qemu-system-x86_64" }),
		"jail exec path":  jailOf(func(s *JailSpec) { s.ExecName = "../firecracker" }),
		"jail as root":    jailOf(func(s *JailSpec) { s.UID, s.GID = 0, 0 }),
		"jail shadow":     jailOf(func(s *JailSpec) { s.Files[0].Source = "/etc/shadow" }),
		"jail via link":   jailOf(func(s *JailSpec) { s.Files[0].Source = fx.evilF }),
		"jail link dir":   jailOf(func(s *JailSpec) { s.Files[0].Source = filepath.Join(fx.evil, "secret.img") }),
		"jail name slash": jailOf(func(s *JailSpec) { s.Files[0].Name = "../../etc/passwd" }),
		"jail name run":   jailOf(func(s *JailSpec) { s.Files[0].Name = "run" }),
		"jail exec over":  jailOf(func(s *JailSpec) { s.Files[0].Name = "firecracker" }),
		"jail host dm":    jailOf(func(s *JailSpec) { s.Files[0].Source = "/dev/mapper/vg0-root" }),
		"jail dm dotdot":  jailOf(func(s *JailSpec) { s.Files[0].Source = "/dev/mapper/banger-../../sda" }),
		"jail create dot": jailOf(func(s *JailSpec) { s.Create = []string{".."} }),
		"unjail dotdot":   c.RemoveJail(ctx, JailSpec{ExecName: "firecracker", ID: ".."}),
		"unjail exec":     c.RemoveJail(ctx, JailSpec{ExecName: "..", ID: "vm-1"}),
	} {
		var re *rpc.Error
		if !errors.As(err, &re) || re.Code != rpc.CodeBadRequest || re.OpID != "op-hostile" {
			t.Errorf("%s: got %#v, want bad_request with the op id", name, err)
			continue
		}
		if !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%s: client error does not match ErrInvalidArgument: %v", name, err)
		}
	}
	if calls := fake.take(); len(calls) != 0 {
		t.Fatalf("hostile arguments reached the implementation: %+v", calls)
	}
}

func TestHelperErrorMapping(t *testing.T) {
	fx := newPolFixture(t)
	fake := &fakeOps{}
	c := startHelper(t, fx, fake)
	ctx := context.Background()
	ident := ProcessIdentity{PID: 4242, Comm: "firecracker", Marker: "vm-abcdef"}
	for _, tc := range []struct {
		fail error
		code rpc.Code
		is   error
	}{
		{fmt.Errorf("dmsetup: %w", ErrNotSupported), rpc.CodeNotSupported, ErrNotSupported},
		{fmt.Errorf("pid 4242 has exited: %w", model.ErrNotRunning), rpc.CodeNotRunning, model.ErrNotRunning},
		{fmt.Errorf("losetup: %w", ErrInvalidArgument), rpc.CodeBadRequest, ErrInvalidArgument},
		{errors.New("netlink: permission denied"), rpc.CodeOperationFailed, nil},
	} {
		fake.fail = tc.fail
		err := c.SignalVMM(ctx, ident, syscall.SIGTERM)
		if rpc.CodeOf(err) != tc.code || err.Error() != tc.fail.Error() {
			t.Errorf("%v: got %v (%s)", tc.fail, err, rpc.CodeOf(err))
		}
		if tc.is != nil && !errors.Is(err, tc.is) {
			t.Errorf("%v: client error does not match %v", tc.fail, tc.is)
		}
	}
}

func TestHelperUnreachableAndConfig(t *testing.T) {
	c := NewClient(filepath.Join(t.TempDir(), "none.sock"))
	err := c.DeleteTap(context.Background(), "bgtap1")
	if !errors.Is(err, rpc.ErrUnreachable) || !strings.Contains(err.Error(), "root-helper") {
		t.Fatalf("unreachable helper: %v", err)
	}
	if _, err := NewServer(&fakeOps{}, ServerConfig{}); err == nil {
		t.Fatal("empty policy accepted")
	}
	if _, err := NewServer(nil, ServerConfig{Policy: *newPolFixture(t).p}); err == nil {
		t.Fatal("nil implementation accepted")
	}
	// ManagedRoots from a layout pass the policy check.
	l := paths.Layout{StateDir: "/var/lib/banger", CacheDir: "/var/cache/banger", RuntimeDir: "/run/banger"}
	p := *newPolFixture(t).p
	p.ManagedRoots = l.ManagedRoots()
	if err := p.Check(); err != nil {
		t.Fatal(err)
	}
}

// TestHelperRefusesHostileFrames is the protocol half of the catalogue:
// oversized frames, a wrong protocol version, unknown methods, garbage and
// slow clients get a clear refusal (or are cut off) and reach nothing.
func TestHelperRefusesHostileFrames(t *testing.T) {
	fx := newPolFixture(t)
	fake := &fakeOps{}
	startHelper(t, fx, fake)
	sock := filepath.Join(fx.run, "root-helper.sock")
	send := func(line string) string {
		conn, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_, _ = io.WriteString(conn, line)
		_ = conn.SetReadDeadline(time.Now().Add(15 * time.Second))
		b, _ := io.ReadAll(conn)
		return string(b)
	}
	for name, tc := range map[string]struct{ line, want string }{
		"oversized":      {`{"v":1,"method":"privops.DeleteTap","params":{"name":"` + strings.Repeat("a", HelperMaxRequest) + `"}}` + "\n", "bad_request"},
		"wrong version":  {`{"v":99,"method":"privops.DeleteTap","params":{"name":"bgtap1"}}` + "\n", "bad_version"},
		"unknown method": {`{"v":1,"method":"privops.Exec","params":{"argv":["sh"]}}` + "\n", "unknown_method"},
		"garbage":        {"\x00\xff{not json\n", "bad_request"},
		"slow client":    {`{"v":1,"method":"privops.DeleteTap"`, ""},
	} {
		got := send(tc.line)
		if tc.want != "" && !strings.Contains(got, tc.want) {
			t.Errorf("%s: got %q, want %s", name, clip(got), tc.want)
		}
		if tc.want == "" && got != "" {
			t.Errorf("%s: got %q, want the connection closed", name, clip(got))
		}
	}
	if calls := fake.take(); len(calls) != 0 {
		t.Fatalf("hostile frames reached the implementation: %+v", calls)
	}
}
