package guest

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/crypto/ssh"
)

// testServer is an in-process sshd with a few fake commands:
//
//	echo WORDS      print WORDS, exit 0
//	stderr WORDS    print WORDS on stderr, exit 0
//	exit N          exit with status N
//	signal NAME     die from signal NAME
//	cat             copy stdin to stdout, exit 0
//	sleep           run until the client signals or disconnects
type testServer struct {
	ln       net.Listener
	hostKey  ssh.Signer
	accepted atomic.Int64

	mu    sync.Mutex
	conns []net.Conn
}

func newSigner(t testing.TB) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// startServer listens on addr ("127.0.0.1:0" for any port) and accepts
// clientKey for user root.
func startServer(t testing.TB, addr string, hostKey ssh.Signer, clientKey ssh.PublicKey) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &testServer{ln: ln, hostKey: hostKey}
	cfg := &ssh.ServerConfig{
		PublicKeyCallback: func(meta ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			if meta.User() == "root" && bytes.Equal(key.Marshal(), clientKey.Marshal()) {
				return nil, nil
			}
			return nil, fmt.Errorf("unknown key for %s", meta.User())
		},
	}
	cfg.AddHostKey(hostKey)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.accepted.Add(1)
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			go s.serveConn(c, cfg)
		}
	}()
	t.Cleanup(s.Close)
	return s
}

func (s *testServer) Addr() string { return s.ln.Addr().String() }

// Close stops listening and drops every connection.
func (s *testServer) Close() {
	s.ln.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		c.Close()
	}
	s.conns = nil
}

func (s *testServer) serveConn(c net.Conn, cfg *ssh.ServerConfig) {
	sc, chans, reqs, err := ssh.NewServerConn(c, cfg)
	if err != nil {
		c.Close()
		return
	}
	defer sc.Close()
	go ssh.DiscardRequests(reqs) // answers keepalive@openssh.com with "failure", like OpenSSH
	for nc := range chans {
		if nc.ChannelType() != "session" {
			_ = nc.Reject(ssh.UnknownChannelType, "no")
			continue
		}
		ch, creqs, err := nc.Accept()
		if err != nil {
			continue
		}
		go serveSession(ch, creqs)
	}
}

func exitStatus(ch ssh.Channel, code int) {
	_, _ = ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{uint32(code)}))
	ch.Close()
}

func exitSignal(ch ssh.Channel, sig string) {
	_, _ = ch.SendRequest("exit-signal", false, ssh.Marshal(struct {
		Signal     string
		CoreDumped bool
		Error      string
		Lang       string
	}{Signal: sig}))
	ch.Close()
}

func serveSession(ch ssh.Channel, reqs <-chan *ssh.Request) {
	killed := make(chan string, 1)
	for req := range reqs {
		switch req.Type {
		case "exec":
			var p struct{ Command string }
			_ = ssh.Unmarshal(req.Payload, &p)
			_ = req.Reply(true, nil)
			go runFake(ch, p.Command, killed)
		case "signal":
			var p struct{ Signal string }
			_ = ssh.Unmarshal(req.Payload, &p)
			select {
			case killed <- p.Signal:
			default:
			}
		default:
			if req.WantReply {
				_ = req.Reply(false, nil)
			}
		}
	}
	close(killed) // the session is gone: end "sleep"
}

func runFake(ch ssh.Channel, cmd string, killed <-chan string) {
	verb, arg, _ := strings.Cut(cmd, " ")
	switch verb {
	case "echo":
		fmt.Fprintln(ch, arg)
		exitStatus(ch, 0)
	case "stderr":
		fmt.Fprintln(ch.Stderr(), arg)
		exitStatus(ch, 0)
	case "exit":
		n, _ := strconv.Atoi(arg)
		exitStatus(ch, n)
	case "signal":
		exitSignal(ch, arg)
	case "cat":
		_, _ = io.Copy(ch, ch)
		exitStatus(ch, 0)
	case "sleep":
		exitSignal(ch, <-killed)
	default:
		fmt.Fprintf(ch.Stderr(), "%s: command not found\n", verb)
		exitStatus(ch, 127)
	}
}

// freezingProxy forwards TCP to a target until frozen; then it stops
// passing bytes without closing anything, like a guest that lost power.
type freezingProxy struct {
	ln     net.Listener
	target string
	frozen chan struct{}
	once   sync.Once
}

func newFreezingProxy(t *testing.T, target string) *freezingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &freezingProxy{ln: ln, target: target, frozen: make(chan struct{})}
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, u)
			mu.Unlock()
			go p.pipe(c, u)
			go p.pipe(u, c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return p
}

func (p *freezingProxy) Addr() string { return p.ln.Addr().String() }
func (p *freezingProxy) Freeze()      { p.once.Do(func() { close(p.frozen) }) }

func (p *freezingProxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		select {
		case <-p.frozen:
			return // drop, and stop reading: the peer hears nothing more
		default:
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
