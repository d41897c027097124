package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bangerdev/banger/internal/agent"
	"github.com/bangerdev/banger/internal/atomicfile"
	"github.com/bangerdev/banger/internal/ext4"
	"github.com/bangerdev/banger/internal/image"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/vmm"
	"github.com/bangerdev/banger/internal/workspace"
)

// Agent files: the token in the VM's directory (0600), the host end of the
// virtio-serial port (QEMU) or of the hybrid vsock (Firecracker) in its
// runtime directory.
const (
	agentTokenFile  = "agent.token"
	AgentSocketName = "agent.sock"
	VsockSocketName = "vsock.sock"
)

// agentVsockCID is the guest context id of Firecracker VMs. Firecracker's
// vsock is private to each VM (a host unix socket, not the host's vsock
// namespace), so every VM can use the same one.
const agentVsockCID = 3

// ErrNoAgent is wrapped when a VM has no agent channel (the daemon has no
// agent binary, or the VM runs on a driver without one).
var ErrNoAgent = errors.New("no guest agent")

// agentToken returns the VM's agent token, generating it on first use in dir.
func agentToken(dir string) (string, error) {
	p := filepath.Join(dir, agentTokenFile)
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		t, gerr := agent.NewToken()
		if gerr != nil {
			return "", gerr
		}
		if werr := atomicfile.Write(p, []byte(t+"\n"), 0o600); werr != nil {
			return "", fmt.Errorf("write agent token: %w", werr)
		}
		return t, nil
	}
	if err != nil {
		return "", fmt.Errorf("read agent token: %w", err)
	}
	t, err := agent.ParseToken(data)
	if err != nil {
		return "", fmt.Errorf("%s: %w (delete it; a new one is made at the next start)", p, err)
	}
	return t, nil
}

// agentBatch adds the agent (binary, unit, token) to the guest
// configuration written before every boot.
func (m *Manager) agentBatch(ctx context.Context, b *ext4.Batch, vm *model.VM) error {
	token, err := agentToken(m.o.Layout.VMDir(vm.ID))
	if err != nil {
		return err
	}
	var bin []byte
	if m.o.AgentBinary != "" {
		bin, err = os.ReadFile(m.o.AgentBinary)
		if err != nil {
			return fmt.Errorf("guest agent binary: %w (rebuild banger, or unset it to run VMs without the agent)", err)
		}
	}
	image.AgentBatch(b, bin, token)
	return nil
}

// agentSpec adds the agent's channel to a VMM spec: a virtio-serial port on
// QEMU, the hybrid vsock on Firecracker.
func (m *Manager) agentSpec(vm *model.VM, s *vmm.Spec) {
	if m.o.AgentBinary == "" {
		return
	}
	switch vm.Driver {
	case "qemu":
		if p, err := vmm.SocketPath(s.RuntimeDir, AgentSocketName); err == nil {
			s.SerialPorts = append(s.SerialPorts, vmm.SerialPort{Name: agent.PortName, Socket: p})
		}
	case "firecracker":
		if p, err := vmm.SocketPath(s.RuntimeDir, VsockSocketName); err == nil {
			s.VsockCID, s.VsockPath = agentVsockCID, p
		}
	}
}

// agentClients caches one agent.Client per running VM (QEMU's chardev takes
// one connection at a time, so calls share it).
type agentClients struct {
	mu sync.Mutex
	m  map[string]agent.Client
}

func (a *agentClients) get(id string, mk func() (agent.Client, error)) (agent.Client, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if c := a.m[id]; c != nil {
		return c, nil
	}
	c, err := mk()
	if err != nil {
		return nil, err
	}
	if a.m == nil {
		a.m = map[string]agent.Client{}
	}
	a.m[id] = c
	return c, nil
}

func (a *agentClients) drop(id string) {
	a.mu.Lock()
	c := a.m[id]
	delete(a.m, id)
	a.mu.Unlock()
	if c != nil {
		_ = c.Close()
	}
}

func (a *agentClients) closeAll() {
	a.mu.Lock()
	all := a.m
	a.m = nil
	a.mu.Unlock()
	for _, c := range all {
		_ = c.Close()
	}
}

// Agent returns the client of a running VM's guest agent. The caller must
// not close it; it is closed when the VM stops. Errors wrap ErrNoAgent when
// the VM has no agent channel and model.ErrNotRunning when it is not
// running.
func (m *Manager) Agent(vm *model.VM) (agent.Client, error) {
	if vm.State != model.StateRunning {
		return nil, fmt.Errorf("VM %s is %s: %w (start it with `banger vm start %s`)", vm.Name, vm.State, model.ErrNotRunning, vm.Name)
	}
	return m.agents.get(vm.ID, func() (agent.Client, error) { return m.newAgentClient(vm) })
}

func (m *Manager) newAgentClient(vm *model.VM) (agent.Client, error) {
	if m.o.AgentBinary == "" {
		return nil, fmt.Errorf("VM %s: %w (the daemon found no banger-agent binary beside itself)", vm.Name, ErrNoAgent)
	}
	token, err := agentToken(m.o.Layout.VMDir(vm.ID))
	if err != nil {
		return nil, err
	}
	rdir := vm.Runtime.RuntimeDir
	if rdir == "" {
		rdir = m.o.Layout.VMRuntimeDir(vm.ID)
	}
	dial, name, err := agentDial(vm.Driver, rdir)
	if err != nil {
		return nil, fmt.Errorf("VM %s: %w", vm.Name, err)
	}
	return agent.NewConn(dial, token, name), nil
}

// agentDial returns how the host reaches the agent of a guest whose VMM
// (of driver) runs in rdir, and a name of that channel for errors: the
// virtio-serial port's socket on QEMU, the hybrid vsock on Firecracker
// (see agentSpec).
func agentDial(driver, rdir string) (agent.DialFunc, string, error) {
	switch driver {
	case "qemu":
		p := filepath.Join(rdir, AgentSocketName)
		return agent.DialUnix(p), "virtio-serial " + p, nil
	case "firecracker":
		p := filepath.Join(rdir, VsockSocketName)
		return agent.DialHybridVsock(p, agent.VsockPort), "vsock " + p, nil
	}
	return nil, "", fmt.Errorf("driver %q: %w", driver, ErrNoAgent)
}

// WaitAgent polls the VM's agent until it answers a ping or ctx ends.
func (m *Manager) WaitAgent(ctx context.Context, vm *model.VM, poll time.Duration) (agent.Health, error) {
	c, err := m.Agent(vm)
	if err != nil {
		return agent.Health{}, err
	}
	if poll <= 0 {
		poll = 100 * time.Millisecond
	}
	for {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		h, err := c.Ping(pctx)
		cancel()
		if err == nil {
			return h, nil
		}
		if !errors.Is(err, agent.ErrUnavailable) && !errors.Is(err, context.DeadlineExceeded) {
			return h, err // the agent answered: a wrong token or version will not heal
		}
		select {
		case <-ctx.Done():
			return h, fmt.Errorf("guest agent of %s: %w (last: %v)", vm.Name, ctx.Err(), err)
		case <-time.After(poll):
		}
	}
}

// agentRemote runs shell commands through a VM's guest agent. It meets the
// GuestConn Run contract (and workspace.Remote's) without ssh: the channel
// is a host-only virtio-serial port or vsock, already authenticated by the
// VM's token, so bulk copies pay no encryption in the guest, which under
// TCG is what bounds ssh's throughput.
//
// Stdin goes over a TCP connection to the guest's address when the agent
// takes that (agent.FeatureTCPStdin): under emulation that moved 100 MB
// into a guest here in 0.5–0.8 s, against 7–9 s through the virtio-serial
// port or ssh.
type agentRemote struct {
	c  agent.Client
	ip string // the guest's address on the VM network ("" = stdin as frames)
}

// Run runs cmd with `/bin/sh -c` as root in /root, like ssh's session.
func (r agentRemote) Run(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	return r.exec(ctx, agent.ExecRequest{Argv: []string{"/bin/sh", "-c", cmd}, Stdin: stdin, Stdout: stdout, Stderr: stderr})
}

// exec runs req, its stdin over TCP when the guest has an address, and
// returns the exit status as ssh would.
func (r agentRemote) exec(ctx context.Context, req agent.ExecRequest) (int, error) {
	if req.Stdin == nil {
		req.Stdin = strings.NewReader("")
	} else if r.ip != "" {
		req.StdinDial = func(ctx context.Context, port int) (net.Conn, error) {
			d := net.Dialer{Timeout: 5 * time.Second}
			return d.DialContext(ctx, "tcp", net.JoinHostPort(r.ip, strconv.Itoa(port)))
		}
	}
	res, err := r.c.Exec(ctx, req)
	if err != nil {
		return -1, err
	}
	if res.ExitCode < 0 {
		return 255, nil // killed by a signal (ssh reports 255 too)
	}
	return res.ExitCode, nil
}

// agentInstaller is agentRemote to an agent with the workspace install
// builtin: a workspace.Installer (the guest runs no process for a clean
// tree).
type agentInstaller struct{ agentRemote }

// Install runs the agent's BuiltinWorkspaceInstall with the stream on its
// stdin.
func (r agentInstaller) Install(ctx context.Context, req workspace.InstallRequest, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	return r.exec(ctx, agent.ExecRequest{Argv: append([]string{agent.BuiltinWorkspaceInstall}, workspace.InstallArgs(req)...), Builtin: true,
		Stdin: stdin, Stdout: stdout, Stderr: stderr})
}

var _ workspace.Installer = agentInstaller{}

// agentRunner is r, an Installer when the agent (h) has the builtin.
func agentRunner(h agent.Health, r agentRemote) workspace.Remote {
	if h.HasFeature(agent.BuiltinFeature(agent.BuiltinWorkspaceInstall)) {
		return agentInstaller{r}
	}
	return r
}

// agentProbe bounds the ping that decides whether Runner uses the agent.
const agentProbe = 3 * time.Second

// AgentBulkLimit is the largest copy Runner sends through an agent that
// only takes base64 stdin (no agent.FeatureBinary): below it the agent
// wins (no ssh session to set up: about a second of guest work under
// emulation, which dominates small copies); above it ssh does, since
// decoding base64 in JSON bounds that agent's throughput. An agent with
// raw payloads takes every copy: it pays no encryption in the guest.
const AgentBulkLimit = 32 << 20

// AgentFramesLimit is the largest copy an agent with raw payloads takes as
// frames on its channel rather than over a TCP connection: the
// connection's setup (a listener in the guest, a handshake, the nonce)
// costs a restored guest here more than a few frames do.
const AgentFramesLimit = 256 << 10

// Runner returns how to run commands in a running VM whose stdin carries
// about bulk bytes: its guest agent when it answers (and takes raw
// payloads, or bulk is at most AgentBulkLimit), else ssh (Conn); stdin
// goes over TCP when bulk is over AgentFramesLimit. The caller must not
// close it.
func (m *Manager) Runner(ctx context.Context, vm *model.VM, bulk int64) (workspace.Remote, error) {
	if c, err := m.Agent(vm); err == nil {
		pctx, cancel := context.WithTimeout(ctx, agentProbe)
		h, perr := c.Ping(pctx)
		cancel()
		switch {
		case perr != nil:
			m.o.Logger.DebugContext(ctx, "guest agent did not answer; using ssh", "vm", vm.Name, "err", perr)
		case h.HasFeature(agent.FeatureTCPStdin) && vm.IP != "" && (bulk > AgentFramesLimit || !h.HasFeature(agent.FeatureBinary)):
			return agentRunner(h, agentRemote{c: c, ip: vm.IP}), nil
		case bulk <= AgentBulkLimit || h.HasFeature(agent.FeatureBinary):
			return agentRunner(h, agentRemote{c: c}), nil
		}
	}
	return m.Conn(ctx, vm)
}
