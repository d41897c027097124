package portfwd

import (
	"context"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/agent"
)

const ssSample = `udp   UNCONN 0      0          127.0.0.53%lo:53         0.0.0.0:*    users:(("systemd-resolve",pid=301,fd=13))
tcp   LISTEN 0      4096             0.0.0.0:22         0.0.0.0:*    users:(("sshd",pid=512,fd=3))
tcp   LISTEN 0      5                0.0.0.0:8080       0.0.0.0:*    users:(("python3",pid=900,fd=3),("python3",pid=901,fd=3))
tcp   LISTEN 0      4096                [::]:22            [::]:*    users:(("sshd",pid=512,fd=4))
tcp   LISTEN 0      511                    *:3000             *:*    users:(("node, the \"server\"",pid=77,fd=18))
tcp   LISTEN 0      128            127.0.0.1:631        0.0.0.0:*
udp   UNCONN 0      0      [fe80::ba:1%eth0]:546           [::]:*
`

func TestParseSS(t *testing.T) {
	got, err := ParseSS([]byte(ssSample))
	if err != nil {
		t.Fatal(err)
	}
	want := []agent.Port{
		{Proto: "tcp", Address: "0.0.0.0", Port: 22, PID: 512, Process: "sshd"},
		{Proto: "tcp", Address: "127.0.0.1", Port: 631},
		{Proto: "tcp", Address: "0.0.0.0", Port: 8080, PID: 900, Process: "python3"},
		{Proto: "tcp6", Address: "::", Port: 22, PID: 512, Process: "sshd"},
		{Proto: "tcp6", Address: "::", Port: 3000, PID: 77, Process: `node, the \"server\"`},
		{Proto: "udp", Address: "127.0.0.53", Port: 53, PID: 301, Process: "systemd-resolve"},
		{Proto: "udp6", Address: "fe80::ba:1", Port: 546},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ParseSS:\n got %+v\nwant %+v", got, want)
	}
	if ps, err := ParseSS(nil); err != nil || len(ps) != 0 {
		t.Fatalf("empty: %v %v", ps, err)
	}
	for _, bad := range []string{
		"tcp LISTEN 0 5 0.0.0.0:8080",
		"sctp LISTEN 0 5 0.0.0.0:8080 0.0.0.0:*",
		"tcp LISTEN 0 5 0.0.0.0 0.0.0.0:*",
		"tcp LISTEN 0 5 0.0.0.0:99999 0.0.0.0:*",
		"tcp LISTEN 0 5 0.0.0.0:-1 0.0.0.0:*",
		"tcp LISTEN 0 5 [1.2.3.4]:80 0.0.0.0:*",
		"tcp LISTEN 0 5 ::1:80 0.0.0.0:*",
		"tcp LISTEN 0 5 host:80 0.0.0.0:*",
	} {
		if _, err := ParseSS([]byte(bad)); !errors.Is(err, ErrBadSS) {
			t.Errorf("ParseSS(%q) = %v, want ErrBadSS", bad, err)
		}
	}
}

type fakeShell struct {
	out, errOut string
	code        int
	cmd         string
}

func (f *fakeShell) Run(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	f.cmd = cmd
	_, _ = io.WriteString(stdout, f.out)
	_, _ = io.WriteString(stderr, f.errOut)
	return f.code, nil
}

func TestSSHLister(t *testing.T) {
	sh := &fakeShell{out: ssSample}
	ps, err := SSHLister{Conn: sh}.Listening(context.Background())
	if err != nil || len(ps) != 7 || sh.cmd != SSCommand {
		t.Fatalf("Listening = %v, %v (ran %q)", ps, err, sh.cmd)
	}
	_, err = SSHLister{Conn: &fakeShell{code: 127, errOut: "sh: ss: not found"}}.Listening(context.Background())
	if err == nil || !strings.Contains(err.Error(), "iproute2") {
		t.Fatalf("without ss: %v", err)
	}
}

// fakeAgent is an agent.Client that only lists ports.
type fakeAgent struct {
	agent.Client
	ports []agent.Port
}

func (f fakeAgent) Ports(context.Context) ([]agent.Port, error) { return f.ports, nil }

// Both transports give the same answer for the same sockets.
func TestAgentListerMatchesSSH(t *testing.T) {
	viaSSH, err := SSHLister{Conn: &fakeShell{out: ssSample}}.Listening(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	shuffled := append([]agent.Port(nil), viaSSH...)
	for i, j := 0, len(shuffled)-1; i < j; i, j = i+1, j-1 {
		shuffled[i], shuffled[j] = shuffled[j], shuffled[i]
	}
	viaAgent, err := AgentLister{Client: fakeAgent{ports: shuffled}}.Listening(context.Background())
	if err != nil || !reflect.DeepEqual(viaAgent, viaSSH) {
		t.Fatalf("agent %v %v, ssh %v", viaAgent, err, viaSSH)
	}
}

func FuzzParseSS(f *testing.F) {
	f.Add([]byte(ssSample))
	f.Add([]byte("tcp LISTEN 0 5 *:1 *:* users:((\""))
	f.Add([]byte("udp UNCONN 0 0 [::ffff:1.2.3.4]:5 *:*"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ps, err := ParseSS(data)
		if err != nil {
			if !errors.Is(err, ErrBadSS) {
				t.Fatalf("error without ErrBadSS: %v", err)
			}
			return
		}
		for _, p := range ps {
			if p.Port < 0 || p.Port > 65535 || p.Address == "" || !strings.HasPrefix(p.Proto, "tcp") && !strings.HasPrefix(p.Proto, "udp") {
				t.Fatalf("bad port %+v from %q", p, data)
			}
		}
	})
}
