// Package portfwd serves a running VM's port forwards (model.PortForward)
// from the host: a userspace TCP proxy inside the owner daemon. It also
// lists what a guest listens on (Lister), over ssh today.
//
// # Why a userspace proxy and not nftables DNAT
//
//   - Forwards listen on 127.0.0.1 by default. DNAT of loopback traffic to
//     a guest needs net.ipv4.conf.*.route_localnet=1, a host-wide switch
//     that lets martian loopback packets onto the wire; a proxy needs
//     nothing of the kind.
//   - The daemon runs as the owner in user mode and system mode alike; a
//     proxy needs no privilege (ports below 1024 excepted, which fail with
//     a clear error) and no new operation in the root helper.
//   - A port in use is a bind error at the moment the forward is set up,
//     which the user sees; a DNAT rule would silently shadow the host
//     service that already listens there.
//   - Proxied connections are host-to-guest connections: banger's firewall
//     (internal/privops/firewall.go) needs no rule for them, and guests
//     still cannot reach the host.
//
// The cost is a copy of every byte through the daemon, which is fine for
// development traffic, and that open connections end when the daemon
// stops. The forwards themselves are kept: they are part of the VM record,
// set up when the VM starts, removed when it stops, and re-established
// from the record by reconcile when the daemon starts again.
package portfwd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/bangerdev/banger/internal/model"
)

// ErrPortInUse is wrapped when a host port is already taken.
var ErrPortInUse = errors.New("host port in use")

// DialTimeout bounds the connection to the guest for each client.
const DialTimeout = 5 * time.Second

// Manager serves the forwards of every running VM. Its methods are safe
// for concurrent use. The contract (see the vm.Forwards interface):
//
//   - Set replaces a VM's forwards: every listener is bound before any old
//     one is closed (except those kept unchanged), so either the new set
//     serves or, on error, the old set still does and nothing new is left
//     listening. Errors name the forward and say what to do.
//   - Remove closes a VM's listeners and its open connections; removing a
//     VM without forwards is a no-op.
//   - Close removes every VM's forwards.
type Manager struct {
	log    *slog.Logger
	listen func(ctx context.Context, addr string) (net.Listener, error)
	dial   func(ctx context.Context, addr string) (net.Conn, error)

	mu   sync.Mutex
	vms  map[string]map[model.PortForward]*forward
	done bool
}

// New returns a Manager using the host's network.
func New(logger *slog.Logger) *Manager {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	var lc net.ListenConfig
	var d net.Dialer
	return &Manager{
		log:    logger,
		listen: func(ctx context.Context, addr string) (net.Listener, error) { return lc.Listen(ctx, "tcp", addr) },
		dial: func(ctx context.Context, addr string) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, DialTimeout)
			defer cancel()
			return d.DialContext(ctx, "tcp", addr)
		},
		vms: map[string]map[model.PortForward]*forward{},
	}
}

// forward is one listener and its open connections.
type forward struct {
	spec   model.PortForward
	target string
	ln     net.Listener
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Set implements vm.Forwards.
func (m *Manager) Set(ctx context.Context, vmID string, guestIP netip.Addr, fwds []model.PortForward) error {
	if err := model.ValidatePortForwards(fwds); err != nil {
		return err
	}
	m.mu.Lock()
	if m.done {
		m.mu.Unlock()
		return errors.New("port forwarding stopped (the daemon is shutting down)")
	}
	old := m.vms[vmID]
	m.mu.Unlock()

	next := map[model.PortForward]*forward{}
	var opened []*forward
	for _, spec := range fwds {
		target := netip.AddrPortFrom(guestIP, uint16(spec.GuestPort)).String()
		if f, ok := old[spec]; ok && f.target == target {
			next[spec] = f
			continue
		}
		ln, err := m.listen(ctx, spec.HostAddrPort())
		if err != nil {
			for _, f := range opened {
				f.stop()
			}
			return listenError(spec, err)
		}
		f := &forward{spec: spec, target: target, ln: ln}
		f.ctx, f.cancel = context.WithCancel(context.Background())
		opened = append(opened, f)
		next[spec] = f
	}
	m.mu.Lock()
	m.vms[vmID] = next
	if len(next) == 0 {
		delete(m.vms, vmID)
	}
	m.mu.Unlock()
	for _, f := range opened {
		f.wg.Add(1)
		go m.serve(f)
		m.log.InfoContext(ctx, "port forward", "vm", vmID, "from", f.spec.HostAddrPort(), "to", f.target)
	}
	for spec, f := range old {
		if next[spec] != f {
			f.stop()
		}
	}
	return nil
}

// listenError explains a failed listen.
func listenError(spec model.PortForward, err error) error {
	addr := spec.HostAddrPort()
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Errorf("%w: %s is already in use on the host: pick another host port (-p OTHER:%d) or stop what listens there (ss -ltnp 'sport = :%d'): %w",
			ErrPortInUse, addr, spec.GuestPort, spec.HostPort, err)
	case errors.Is(err, syscall.EACCES):
		return fmt.Errorf("forward %s: ports below 1024 need privileges the daemon does not have: use a port of 1024 or more: %w", spec, err)
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return fmt.Errorf("forward %s: %s is not an address of this host: %w", spec, spec.HostAddr, err)
	}
	return fmt.Errorf("forward %s: listen: %w", spec, err)
}

// Remove implements vm.Forwards.
func (m *Manager) Remove(vmID string) {
	m.mu.Lock()
	fs := m.vms[vmID]
	delete(m.vms, vmID)
	m.mu.Unlock()
	for _, f := range fs {
		f.stop()
	}
}

// Forwards returns the forwards served for a VM.
func (m *Manager) Forwards(vmID string) []model.PortForward {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []model.PortForward
	for spec := range m.vms[vmID] {
		out = append(out, spec)
	}
	return out
}

// Close removes every VM's forwards; later Sets fail.
func (m *Manager) Close() error {
	m.mu.Lock()
	m.done = true
	all := m.vms
	m.vms = map[string]map[model.PortForward]*forward{}
	m.mu.Unlock()
	for _, fs := range all {
		for _, f := range fs {
			f.stop()
		}
	}
	return nil
}

// stop closes the listener and every open connection, and waits for them.
func (f *forward) stop() {
	f.cancel()
	_ = f.ln.Close()
	f.wg.Wait()
}

func (m *Manager) serve(f *forward) {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			if f.ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				m.log.Warn("port forward stopped accepting", "from", f.spec.HostAddrPort(), "err", err)
			}
			return
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			m.proxy(f, c)
		}()
	}
}

// proxy copies both ways until both directions end (half-closes are
// passed on) or the forward stops.
func (m *Manager) proxy(f *forward, client net.Conn) {
	defer client.Close()
	guest, err := m.dial(f.ctx, f.target)
	if err != nil {
		m.log.Debug("port forward: guest not answering", "to", f.target, "err", err)
		return
	}
	defer guest.Close()
	stop := context.AfterFunc(f.ctx, func() {
		_ = client.Close()
		_ = guest.Close()
	})
	defer stop()
	var wg sync.WaitGroup
	wg.Add(2)
	pipe := func(dst, src net.Conn) {
		defer wg.Done()
		_, _ = io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		} else {
			_ = dst.Close()
		}
	}
	go pipe(guest, client)
	go pipe(client, guest)
	wg.Wait()
}
