package guest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bangerdev/banger/internal/testreq"
)

type fixture struct {
	dir    string
	signer ssh.Signer
	kh     *KnownHosts
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	signer, _, err := EnsureKey(filepath.Join(dir, "ssh"))
	if err != nil {
		t.Fatal(err)
	}
	kh, err := OpenKnownHosts(filepath.Join(dir, "known_hosts"))
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{dir: dir, signer: signer, kh: kh}
}

func (f *fixture) opts() Options {
	return Options{Signer: f.signer, KnownHosts: f.kh, Aliases: []string{"web.vm"}, ConnectTimeout: 2 * time.Second}
}

func TestRunExitStatusesAndStreams(t *testing.T) {
	f := newFixture(t)
	srv := startServer(t, "127.0.0.1:0", newSigner(t), f.signer.PublicKey())
	c, err := Dial(context.Background(), srv.Addr(), f.opts())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	cases := []struct {
		cmd, stdin     string
		status         int
		stdout, stderr string
	}{
		{cmd: "echo hello world", stdout: "hello world\n"},
		{cmd: "stderr oops", stderr: "oops\n"},
		{cmd: "exit 3", status: 3},
		{cmd: "exit 255", status: 255},
		{cmd: "exit 1", status: 1},
		{cmd: "signal KILL", status: 128 + 9},
		{cmd: "signal TERM", status: 128 + 15},
		{cmd: "signal SEGV", status: 128 + 11},
		{cmd: "cat", stdin: strings.Repeat("binary\x00data\n", 10000), stdout: strings.Repeat("binary\x00data\n", 10000)},
		{cmd: "nosuch", status: 127, stderr: "nosuch: command not found\n"},
	}
	for _, tc := range cases {
		var out, errb bytes.Buffer
		var stdin *strings.Reader
		if tc.stdin != "" {
			stdin = strings.NewReader(tc.stdin)
		}
		var status int
		if stdin != nil {
			status, err = c.Run(ctx, tc.cmd, stdin, &out, &errb)
		} else {
			status, err = c.Run(ctx, tc.cmd, nil, &out, &errb)
		}
		if err != nil || status != tc.status || out.String() != tc.stdout || errb.String() != tc.stderr {
			t.Errorf("%s: status %d err %v stdout %.40q stderr %q; want %d %.40q %q", tc.cmd, status, err, out.String(), errb.String(), tc.status, tc.stdout, tc.stderr)
		}
	}
	if n := srv.accepted.Load(); n != 1 {
		t.Fatalf("%d connections for %d commands, want 1", n, len(cases))
	}
}

func TestConcurrentRunsShareOneConnection(t *testing.T) {
	f := newFixture(t)
	srv := startServer(t, "127.0.0.1:0", newSigner(t), f.signer.PublicKey())
	c, err := Dial(context.Background(), srv.Addr(), f.opts())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out bytes.Buffer
			status, err := c.Run(context.Background(), fmt.Sprintf("echo %d", i), nil, &out, nil)
			if err != nil || status != 0 || out.String() != fmt.Sprintf("%d\n", i) {
				t.Errorf("run %d: %d %v %q", i, status, err, out.String())
			}
		}()
	}
	wg.Wait()
	if n := srv.accepted.Load(); n != 1 {
		t.Fatalf("%d connections", n)
	}
}

func TestRunContextCancelKills(t *testing.T) {
	f := newFixture(t)
	srv := startServer(t, "127.0.0.1:0", newSigner(t), f.signer.PublicKey())
	c, err := Dial(context.Background(), srv.Addr(), f.opts())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	status, err := c.Run(ctx, "sleep", nil, nil, nil)
	if !errors.Is(err, context.DeadlineExceeded) || status != -1 {
		t.Fatalf("Run = %d, %v", status, err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("cancel took %v", d)
	}
	// The connection is still usable.
	if status, err := c.Run(context.Background(), "exit 4", nil, nil, nil); status != 4 || err != nil {
		t.Fatalf("after cancel: %d %v", status, err)
	}
	c.Close()
	if _, err := c.Run(context.Background(), "echo x", nil, nil, nil); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Run after Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestKeepAliveDetectsDeadPeer(t *testing.T) {
	f := newFixture(t)
	srv := startServer(t, "127.0.0.1:0", newSigner(t), f.signer.PublicKey())
	proxy := newFreezingProxy(t, srv.Addr())
	opts := f.opts()
	opts.KeepAliveInterval = 100 * time.Millisecond
	opts.KeepAliveMax = 3
	c, err := Dial(context.Background(), proxy.Addr(), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Several intervals pass with a live peer: keep-alives are answered.
	time.Sleep(500 * time.Millisecond)
	select {
	case <-c.Done():
		t.Fatalf("live connection closed: %v", c.Err())
	default:
	}
	type result struct {
		status int
		err    error
	}
	res := make(chan result, 1)
	go func() {
		status, err := c.Run(context.Background(), "sleep", nil, nil, nil)
		res <- result{status, err}
	}()
	time.Sleep(100 * time.Millisecond)
	proxy.Freeze() // the guest "powers off" without closing TCP
	start := time.Now()
	var r result
	select {
	case r = <-res:
	case <-time.After(5 * time.Second):
		t.Fatal("Run still hangs 5s after the peer died")
	}
	took := time.Since(start)
	bound := time.Duration(opts.KeepAliveMax+1) * opts.KeepAliveInterval
	t.Logf("dead peer detected after %v (bound %v)", took, bound)
	if !errors.Is(r.err, ErrConnectionLost) || r.status != -1 {
		t.Fatalf("Run = %d, %v; want ErrConnectionLost", r.status, r.err)
	}
	if took > bound+300*time.Millisecond {
		t.Fatalf("detection took %v, bound %v", took, bound)
	}
	if !errors.Is(c.Err(), ErrConnectionLost) {
		t.Fatalf("Err = %v", c.Err())
	}
}

func TestTrustOnFirstUse(t *testing.T) {
	f := newFixture(t)
	hostKey := newSigner(t)
	srv := startServer(t, "127.0.0.1:0", hostKey, f.signer.PublicKey())
	addr := srv.Addr()
	entry := HostEntry(addr)

	c, err := Dial(context.Background(), addr, f.opts())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	for _, h := range []string{addr, "web.vm", "WEB.vm"} {
		keys, err := f.kh.Keys(h)
		if err != nil || len(keys) != 1 || !bytes.Equal(keys[0].Marshal(), hostKey.PublicKey().Marshal()) {
			t.Fatalf("pinned for %s: %v %v", h, keys, err)
		}
	}
	pinned, _ := os.ReadFile(f.kh.Path())
	if lines := strings.Split(strings.TrimSpace(string(pinned)), "\n"); len(lines) != 2 ||
		!strings.HasPrefix(lines[0], entry+" ssh-ed25519 ") || !strings.HasPrefix(lines[1], "web.vm ssh-ed25519 ") {
		t.Fatalf("known_hosts after first use:\n%s", pinned)
	}
	if fi, _ := os.Stat(f.kh.Path()); fi.Mode().Perm() != 0o600 {
		t.Fatalf("known_hosts mode %v", fi.Mode().Perm())
	}
	// Second connection with the same key: accepted, nothing added.
	c, err = Dial(context.Background(), addr, f.opts())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if again, _ := os.ReadFile(f.kh.Path()); !bytes.Equal(again, pinned) {
		t.Fatalf("known_hosts changed on a known host:\n%s", again)
	}

	// Same address, new host key: refused loudly, file untouched.
	srv.Close()
	imposter := startServer(t, addr, newSigner(t), f.signer.PublicKey())
	_, err = Dial(context.Background(), imposter.Addr(), f.opts())
	var mm *HostKeyMismatchError
	if !errors.Is(err, ErrHostKeyMismatch) || !errors.As(err, &mm) {
		t.Fatalf("Dial to a changed key = %v, want ErrHostKeyMismatch", err)
	}
	for _, want := range []string{"possible MITM", "ssh-keygen -R '" + entry + "' -f " + f.kh.Path(), "web.vm"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("mismatch error lacks %q: %v", want, err)
		}
	}
	if again, _ := os.ReadFile(f.kh.Path()); !bytes.Equal(again, pinned) {
		t.Fatal("known_hosts changed after a refused key")
	}
	// WaitForSSH does not retry a mismatch until its timeout.
	start := time.Now()
	opts := f.opts()
	opts.WaitTimeout = 30 * time.Second
	if _, err := WaitForSSH(context.Background(), imposter.Addr(), opts, ""); !errors.Is(err, ErrHostKeyMismatch) {
		t.Fatalf("WaitForSSH = %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("WaitForSSH retried a mismatch for %v", d)
	}

	// Deleting the VM forgets its address and name; the next key is trusted.
	if err := f.kh.Forget(addr, "web.vm"); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(f.kh.Path()); len(data) != 0 {
		t.Fatalf("known_hosts after Forget:\n%s", data)
	}
	c, err = Dial(context.Background(), imposter.Addr(), f.opts())
	if err != nil {
		t.Fatalf("Dial after Forget: %v", err)
	}
	c.Close()
}

func TestOpenSSHReadsKnownHosts(t *testing.T) {
	testreq.Tools(t, "ssh-keygen")
	f := newFixture(t)
	key := newSigner(t).PublicKey()
	if err := f.kh.Pin([]string{"172.30.0.5:22", "web.vm"}, key); err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"172.30.0.5", "web.vm"} {
		out, err := exec.Command("ssh-keygen", "-F", host, "-f", f.kh.Path()).CombinedOutput()
		if err != nil || !strings.Contains(string(out), strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key)))) {
			t.Fatalf("ssh-keygen -F %s: %v\n%s", host, err, out)
		}
	}
	// And banger reads what ssh-keygen -R leaves behind.
	if out, err := exec.Command("ssh-keygen", "-R", "web.vm", "-f", f.kh.Path()).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen -R: %v\n%s", err, out)
	}
	if keys, _ := f.kh.Keys("web.vm"); len(keys) != 0 {
		t.Fatal("web.vm still pinned after ssh-keygen -R")
	}
	if keys, _ := f.kh.Keys("172.30.0.5"); len(keys) != 1 {
		t.Fatal("172.30.0.5 lost by ssh-keygen -R web.vm")
	}
}

func TestWaitForSSHBacksOffUntilReady(t *testing.T) {
	f := newFixture(t)
	// Reserve a port, then bring the server up there after a delay.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	hostKey := newSigner(t)
	go func() {
		time.Sleep(600 * time.Millisecond)
		startServer(t, addr, hostKey, f.signer.PublicKey())
	}()
	opts := f.opts()
	opts.WaitTimeout = 10 * time.Second
	start := time.Now()
	c, err := WaitForSSH(context.Background(), addr, opts, "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	t.Logf("ssh ready after %v", time.Since(start))
	if status, err := c.Run(context.Background(), "exit 0", nil, nil, nil); status != 0 || err != nil {
		t.Fatal(status, err)
	}
}

func TestWaitForSSHTimeoutIncludesSerialTail(t *testing.T) {
	f := newFixture(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	serial := filepath.Join(f.dir, "console.log")
	var b strings.Builder
	for i := range 60 {
		fmt.Fprintf(&b, "\x1b[0;32mboot line %d\x1b[0m\r\n", i)
	}
	os.WriteFile(serial, []byte(b.String()), 0o644)
	opts := f.opts()
	opts.WaitTimeout = 700 * time.Millisecond
	start := time.Now()
	_, err = WaitForSSH(context.Background(), addr, opts, serial)
	took := time.Since(start)
	if !errors.Is(err, ErrNotReady) {
		t.Fatalf("err = %v, want ErrNotReady", err)
	}
	msg := err.Error()
	for _, want := range []string{"boot line 59", "boot line 30", "connection refused", serial} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "boot line 29\n") || strings.ContainsAny(msg, "\x1b\r") {
		t.Errorf("error has more than 30 lines or raw control characters:\n%q", msg)
	}
	if took > 3*time.Second {
		t.Fatalf("WaitForSSH overran its timeout: %v", took)
	}
	// A cancelled caller gets context.Canceled.
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	opts.WaitTimeout = time.Minute
	if _, err := WaitForSSH(ctx, addr, opts, ""); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled WaitForSSH = %v", err)
	}
}

func TestDialRequiresKeyAndHostCheck(t *testing.T) {
	f := newFixture(t)
	if _, err := Dial(context.Background(), "127.0.0.1:1", Options{KnownHosts: f.kh}); err == nil {
		t.Fatal("Dial without a key")
	}
	if _, err := Dial(context.Background(), "127.0.0.1:1", Options{Signer: f.signer}); err == nil || !strings.Contains(err.Error(), "host key") {
		t.Fatalf("Dial without a host key check: %v", err)
	}
}

func TestHandshakeTimeout(t *testing.T) {
	f := newFixture(t)
	// A server that accepts TCP and never speaks ssh.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	}()
	opts := f.opts()
	opts.ConnectTimeout = 300 * time.Millisecond
	start := time.Now()
	if _, err := Dial(context.Background(), ln.Addr().String(), opts); err == nil {
		t.Fatal("handshake with a silent server succeeded")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("handshake timeout took %v", d)
	}
}
