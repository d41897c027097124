package vm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bangerdev/banger/internal/guest"
)

// SSHGuests implements Guests with internal/guest: the managed key, banger's
// known_hosts (the daemon pins each VM's injected host key before boot) and
// x/crypto/ssh connections with keep-alives.
type SSHGuests struct {
	Signer     ssh.Signer
	PubLine    string // authorized_keys line of Signer
	KnownHosts *guest.KnownHosts
	Logger     *slog.Logger
	// Poll is the interval between TCP probes while a guest boots
	// (default 100ms).
	Poll time.Duration
}

// AuthorizedKey implements Guests.
func (g *SSHGuests) AuthorizedKey() string { return g.PubLine }

// PinHostKey implements Guests.
func (g *SSHGuests) PinHostKey(hosts []string, key ssh.PublicKey) error {
	return g.KnownHosts.Pin(hosts, key)
}

// Forget implements Guests.
func (g *SSHGuests) Forget(hosts ...string) error { return g.KnownHosts.Forget(hosts...) }

func (g *SSHGuests) opts(aliases []string, timeout time.Duration) guest.Options {
	return guest.Options{Signer: g.Signer, KnownHosts: g.KnownHosts, Aliases: aliases,
		ConnectTimeout: timeout, Logger: g.Logger}
}

// Dial implements Guests.
func (g *SSHGuests) Dial(ctx context.Context, addr string, aliases []string, timeout time.Duration) (GuestConn, error) {
	c, err := guest.Dial(ctx, addr, g.opts(aliases, timeout))
	if err != nil {
		return nil, err
	}
	return c, nil
}

// handshakeTimeout bounds one ssh handshake with a guest whose port is
// open (a first connection costs about a second of guest crypto under TCG).
const handshakeTimeout = 30 * time.Second

// WaitReady implements Guests. While the guest boots it probes the TCP port
// every Poll (cheap, so readiness is seen within ~Poll of sshd listening),
// and only handshakes once the port accepts; the first successful handshake
// is the returned connection. A changed host key fails at once.
func (g *SSHGuests) WaitReady(ctx context.Context, addr string, aliases []string, serialLog string, timeout time.Duration) (GuestConn, error) {
	var c GuestConn
	err := g.waitBoot(ctx, addr, serialLog, timeout, "ssh to %s not ready", func(wctx context.Context, attempts int, start time.Time) (bool, error) {
		open := time.Now()
		gc, err := guest.Dial(wctx, addr, g.opts(aliases, handshakeTimeout))
		if err != nil {
			return false, err
		}
		if g.Logger != nil {
			g.Logger.DebugContext(ctx, "ssh ready", "addr", addr, "attempts", attempts,
				"port_open_after", open.Sub(start), "handshake", time.Since(open))
		}
		c = gc
		return true, nil
	})
	return c, err
}

// WaitOpen implements Guests: a TCP probe of addr every Poll.
func (g *SSHGuests) WaitOpen(ctx context.Context, addr string, serialLog string, timeout time.Duration) error {
	return g.waitBoot(ctx, addr, serialLog, timeout, "ssh port %s not open", nil)
}

// waitBoot probes addr's TCP port every Poll until it accepts and then
// onOpen (when set) succeeds, or bootDeadline ends the wait. onOpen's
// guest.ErrHostKeyMismatch ends it at once; other errors are retried. The
// final error names what (a format with addr), the attempts, the last
// error and the console's tail.
func (g *SSHGuests) waitBoot(ctx context.Context, addr, serialLog string, timeout time.Duration, what string,
	onOpen func(wctx context.Context, attempts int, start time.Time) (bool, error)) error {
	poll := g.Poll
	if poll <= 0 {
		poll = 100 * time.Millisecond
	}
	start := time.Now()
	wctx, cancel := bootDeadline(ctx, serialLog, timeout)
	defer cancel()
	var last error
	attempts := 0
	for {
		attempts++
		var d net.Dialer
		pctx, pcancel := context.WithTimeout(wctx, time.Second)
		conn, err := d.DialContext(pctx, "tcp", addr)
		pcancel()
		last = err
		if err == nil {
			conn.Close()
			if onOpen == nil {
				return nil
			}
			done, err := onOpen(wctx, attempts, start)
			if done {
				return nil
			}
			if errors.Is(err, guest.ErrHostKeyMismatch) {
				return err
			}
			last = err
		}
		select {
		case <-wctx.Done():
			cause := context.Cause(wctx)
			if ctx.Err() != nil {
				cause = context.Cause(ctx)
			}
			msg := fmt.Errorf(what+" after %v (%d attempts): %w: last error: %v",
				addr, time.Since(start).Round(100*time.Millisecond), attempts, cause, last)
			if tail := guest.SerialTail(serialLog, 30); tail != "" {
				msg = fmt.Errorf("%w\n--- last lines of the guest console (%s) ---\n%s", msg, serialLog, tail)
			}
			return msg
		case <-time.After(poll):
		}
	}
}

// bootCapFactor bounds a boot that keeps printing: bootDeadline's context
// ends after bootCapFactor × idle in all.
const bootCapFactor = 4

// bootDeadline returns a context for waiting on a booting guest. It ends
// once the guest's console log (serialLog) has not grown for idle — a
// guest that stopped making progress — or after bootCapFactor × idle in
// all, so a guest that boots slowly because the host is overloaded (eight
// emulated boots on two cores take minutes) is not given up while it is
// still getting somewhere. Its cause wraps guest.ErrNotReady and says
// which limit ended it. Without a console log it is a plain timeout of
// idle.
func bootDeadline(ctx context.Context, serialLog string, idle time.Duration) (context.Context, context.CancelFunc) {
	total := bootCapFactor * idle
	if serialLog == "" {
		total = idle
	}
	cctx, cancelCause := context.WithCancelCause(ctx)
	tctx, cancelTotal := context.WithTimeoutCause(cctx, total,
		fmt.Errorf("%w: still booting after %v (the cap is %d× the ssh timeout)", guest.ErrNotReady, total, bootCapFactor))
	if serialLog == "" {
		return tctx, func() { cancelTotal(); cancelCause(nil) }
	}
	stop := make(chan struct{})
	go func() {
		size := func() int64 {
			if fi, err := os.Stat(serialLog); err == nil {
				return fi.Size()
			}
			return -1
		}
		last, lastGrowth := size(), time.Now()
		tick := time.NewTicker(min(time.Second, idle/4+time.Millisecond))
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tctx.Done():
				return
			case now := <-tick.C:
				if n := size(); n != last {
					last, lastGrowth = n, now
				} else if now.Sub(lastGrowth) >= idle {
					cancelCause(fmt.Errorf("%w: no console output for %v", guest.ErrNotReady, idle))
					return
				}
			}
		}
	}()
	var once sync.Once
	return tctx, func() {
		once.Do(func() { close(stop) })
		cancelTotal()
		cancelCause(nil)
	}
}
