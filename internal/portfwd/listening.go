package portfwd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"

	"github.com/bangerdev/banger/internal/agent"
)

// Lister lists the sockets a guest listens on (TCP listening, UDP bound),
// sorted by proto, port, address, in the guest agent's shape (agent.Port)
// so that the agent's Client.Ports can replace the ssh transport: see
// AgentLister.
type Lister interface {
	Listening(ctx context.Context) ([]agent.Port, error)
}

// Runner runs a shell command in the guest (vm.GuestConn satisfies it).
type Runner interface {
	Run(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error)
}

// SSCommand is what SSHLister runs in the guest.
const SSCommand = "ss -Hltnup"

// SSHLister lists a guest's sockets with `ss -Hltnup` over a shell
// connection (the daemon's ssh connection to the guest).
type SSHLister struct{ Conn Runner }

// Listening implements Lister.
func (l SSHLister) Listening(ctx context.Context) ([]agent.Port, error) {
	var out, errb bytes.Buffer
	code, err := l.Conn.Run(ctx, SSCommand, nil, &out, &errb)
	if err != nil {
		return nil, fmt.Errorf("list the guest's sockets: %w", err)
	}
	if code != 0 {
		msg := strings.TrimSpace(errb.String())
		if code == 127 {
			msg = "ss is not installed in the guest (install iproute2 in the image)"
		}
		return nil, fmt.Errorf("list the guest's sockets: %s exited %d: %s", SSCommand, code, clip(msg))
	}
	return ParseSS(out.Bytes())
}

// AgentLister lists a guest's sockets through the guest agent.
type AgentLister struct{ Client agent.Client }

// Listening implements Lister.
func (l AgentLister) Listening(ctx context.Context) ([]agent.Port, error) {
	ps, err := l.Client.Ports(ctx)
	if err != nil {
		return nil, err
	}
	agent.SortPorts(ps)
	return ps, nil
}

// ErrBadSS wraps ParseSS errors.
var ErrBadSS = errors.New("unexpected ss output")

// ParseSS parses the output of `ss -Hltnup` (no header; Netid, State,
// Recv-Q, Send-Q, Local, Peer, [Process]). Addresses: "0.0.0.0:22",
// "[::]:22", "*:8080" (any address, dual stack: "::"), "127.0.0.53%lo:53"
// (the interface is dropped). IPv6 sockets get proto "tcp6"/"udp6". The
// process is the first of users:(("name",pid=N,fd=M),...).
func ParseSS(out []byte) ([]agent.Port, error) {
	var ps []agent.Port
	for n, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) < 6 {
			return nil, fmt.Errorf("%w: line %d: %q has %d fields, want at least 6", ErrBadSS, n+1, clip(line), len(f))
		}
		proto := f[0]
		if proto != "tcp" && proto != "udp" {
			return nil, fmt.Errorf("%w: line %d: protocol %q", ErrBadSS, n+1, clip(proto))
		}
		addr, port, v6, err := parseSSAddr(f[4])
		if err != nil {
			return nil, fmt.Errorf("%w: line %d: %v", ErrBadSS, n+1, err)
		}
		if v6 {
			proto += "6"
		}
		p := agent.Port{Proto: proto, Address: addr, Port: port}
		if i := strings.Index(line, "users:(("); i >= 0 {
			p.Process, p.PID = parseSSUsers(line[i+len("users:(("):])
		}
		ps = append(ps, p)
	}
	agent.SortPorts(ps)
	return ps, nil
}

func parseSSAddr(s string) (addr string, port int, v6 bool, err error) {
	i := strings.LastIndexByte(s, ':')
	if i <= 0 {
		return "", 0, false, fmt.Errorf("local address %q has no port", clip(s))
	}
	host, ps := s[:i], s[i+1:]
	port, perr := strconv.Atoi(ps)
	if perr != nil || port < 0 || port > 65535 || strings.TrimLeft(ps, "0123456789") != "" {
		return "", 0, false, fmt.Errorf("local address %q: bad port", clip(s))
	}
	if host == "*" {
		return "::", port, true, nil
	}
	if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host, v6 = host[1:len(host)-1], true
	}
	if z := strings.IndexByte(host, '%'); z >= 0 {
		host = host[:z]
	}
	a, aerr := netip.ParseAddr(host)
	if aerr != nil || a.Is6() != v6 && !a.Is4In6() {
		return "", 0, false, fmt.Errorf("local address %q: bad address", clip(s))
	}
	return a.String(), port, v6, nil
}

// parseSSUsers reads `"name",pid=N,fd=M)...` (the part after users:(( ).
func parseSSUsers(s string) (name string, pid int) {
	if !strings.HasPrefix(s, `"`) {
		return "", 0
	}
	end := strings.Index(s[1:], `",pid=`)
	if end < 0 {
		return "", 0
	}
	name = s[1 : 1+end]
	rest := s[1+end+len(`",pid=`):]
	j := strings.IndexAny(rest, ",)")
	if j < 0 {
		return name, 0
	}
	pid, _ = strconv.Atoi(rest[:j])
	return name, pid
}

func clip(s string) string {
	if len(s) > 120 {
		return s[:120] + "..."
	}
	return s
}
