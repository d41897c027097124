package guest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
)

// Defaults for Options.
const (
	DefaultUser              = "root"
	DefaultConnectTimeout    = 10 * time.Second
	DefaultKeepAliveInterval = 5 * time.Second
	DefaultKeepAliveMax      = 3
	DefaultWaitTimeout       = 3 * time.Minute
)

// ErrConnectionLost is wrapped when a connection dies under a client: the
// peer stopped answering keep-alives (a guest that powered off) or the
// transport broke.
var ErrConnectionLost = errors.New("ssh connection lost")

// ErrNotReady is wrapped by WaitForSSH when the guest's ssh did not come up
// in time.
var ErrNotReady = errors.New("guest ssh not ready")

// Options configure a connection to a guest.
type Options struct {
	User   string     // default "root"
	Signer ssh.Signer // the managed key (EnsureKey)
	// KnownHosts checks the host key (trust on first use), pinning it for the
	// dialled address and Aliases (e.g. "name.vm"). Required unless
	// HostKeyCallback is set.
	KnownHosts *KnownHosts
	Aliases    []string
	// HostKeyCallback replaces the KnownHosts check (tests, Pin-only setups).
	HostKeyCallback ssh.HostKeyCallback
	// HostKeyAlgorithms, with HostKeyCallback, are the host key algorithms
	// to ask the server for (those of the keys the callback accepts), so a
	// server with several host keys presents the pinned one.
	HostKeyAlgorithms []string
	// ConnectTimeout bounds the TCP connect plus the ssh handshake of one
	// attempt (default 10s).
	ConnectTimeout time.Duration
	// KeepAliveInterval and KeepAliveMax work like OpenSSH's
	// ServerAliveInterval/ServerAliveCountMax: a keepalive@openssh.com request
	// every interval, and the connection is closed when KeepAliveMax
	// intervals pass without a reply, so a dead guest is detected within
	// (KeepAliveMax+1) × KeepAliveInterval. Defaults 5s and 3; a negative
	// interval disables keep-alives.
	KeepAliveInterval time.Duration
	KeepAliveMax      int
	// WaitTimeout bounds WaitForSSH (default 3 minutes; an earlier context
	// deadline wins).
	WaitTimeout time.Duration
	Logger      *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.User == "" {
		o.User = DefaultUser
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	if o.KeepAliveInterval == 0 {
		o.KeepAliveInterval = DefaultKeepAliveInterval
	}
	if o.KeepAliveMax <= 0 {
		o.KeepAliveMax = DefaultKeepAliveMax
	}
	if o.WaitTimeout <= 0 {
		o.WaitTimeout = DefaultWaitTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// Client is one ssh connection to a guest; it runs any number of commands,
// also concurrently. It is closed when Close is called or the connection
// dies (see Done and Err).
type Client struct {
	ssh  *ssh.Client
	addr string
	log  *slog.Logger

	done      chan struct{}
	closeOnce sync.Once
	mu        sync.Mutex
	err       error
}

// Dial connects to addr (host:port) and authenticates with opts.Signer.
func Dial(ctx context.Context, addr string, opts Options) (*Client, error) {
	opts = opts.withDefaults()
	if opts.Signer == nil {
		return nil, errors.New("ssh dial: no key (guest.EnsureKey)")
	}
	cb := opts.HostKeyCallback
	algos := opts.HostKeyAlgorithms
	if cb == nil {
		if opts.KnownHosts == nil {
			return nil, errors.New("ssh dial: no host key check configured (Options.KnownHosts)")
		}
		cb = opts.KnownHosts.Callback(opts.Aliases...)
		algos = opts.KnownHosts.HostKeyAlgorithms(append([]string{addr}, opts.Aliases...)...)
	}
	cfg := &ssh.ClientConfig{
		User:              opts.User,
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(opts.Signer)},
		HostKeyCallback:   cb,
		HostKeyAlgorithms: algos,
		Timeout:           opts.ConnectTimeout,
	}
	dctx, cancel := context.WithTimeout(ctx, opts.ConnectTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("ssh dial %s: %w", addr, err)
	}
	// The handshake is bounded by the same deadline and by ctx.
	deadline, _ := dctx.Deadline()
	_ = conn.SetDeadline(deadline)
	stop := context.AfterFunc(dctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	sc, chans, reqs, err := ssh.NewClientConn(conn, addr, cfg)
	stopped := stop()
	if err != nil {
		conn.Close()
		if errors.Is(err, ErrHostKeyMismatch) {
			return nil, fmt.Errorf("ssh %s: %w", addr, err)
		}
		if !stopped || ctx.Err() != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("ssh handshake with %s: %w", addr, ctx.Err())
			}
			return nil, fmt.Errorf("ssh handshake with %s: timed out after %v: %w", addr, opts.ConnectTimeout, err)
		}
		return nil, fmt.Errorf("ssh handshake with %s: %w", addr, err)
	}
	_ = conn.SetDeadline(time.Time{})
	c := &Client{ssh: ssh.NewClient(sc, chans, reqs), addr: addr, log: opts.Logger, done: make(chan struct{})}
	go func() {
		err := c.ssh.Wait()
		c.fail(fmt.Errorf("%w: %s: %v", ErrConnectionLost, addr, err))
	}()
	if opts.KeepAliveInterval > 0 {
		go c.keepAlive(opts.KeepAliveInterval, opts.KeepAliveMax)
	}
	return c, nil
}

// Addr returns the address the client is connected to.
func (c *Client) Addr() string { return c.addr }

// SSH returns the underlying x/crypto client (for sessions with a pty,
// port forwards, ...). It is closed with c.
func (c *Client) SSH() *ssh.Client { return c.ssh }

// Done is closed when the connection is closed or lost.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err returns why the connection ended (nil while open; net.ErrClosed after
// Close).
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close closes the connection. Closing twice is fine.
func (c *Client) Close() error {
	c.fail(net.ErrClosed)
	return nil
}

// fail records the first reason the connection ended and closes it.
func (c *Client) fail(err error) {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.err = err
		c.mu.Unlock()
		close(c.done)
		_ = c.ssh.Close()
	})
}

func (c *Client) keepAlive(interval time.Duration, maxMissed int) {
	t := time.NewTicker(interval)
	defer t.Stop()
	missed := 0
	var pending chan error
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
		}
		if pending != nil {
			select {
			case err := <-pending:
				pending = nil
				if err != nil {
					c.fail(fmt.Errorf("%w: %s: keep-alive: %v", ErrConnectionLost, c.addr, err))
					return
				}
				missed = 0
			default:
				missed++
				if missed >= maxMissed {
					c.log.Warn("ssh peer stopped answering; closing", "addr", c.addr, "missed", missed, "interval", interval)
					c.fail(fmt.Errorf("%w: %s: no answer to keep-alives for %v", ErrConnectionLost, c.addr, time.Duration(missed)*interval))
					return
				}
				continue
			}
		}
		ch := make(chan error, 1)
		go func() {
			// Any reply (OpenSSH answers "failure") proves the peer alive.
			_, _, err := c.ssh.SendRequest("keepalive@openssh.com", true, nil)
			ch <- err
		}()
		pending = ch
	}
}

// Run runs cmd in a new session on the connection, streaming stdin (may be
// nil) to it and its output to stdout/stderr (nil = discard). It returns
// the exit status: the command's own, or 128+N when a signal N killed it, as
// a shell reports it. err is non-nil only when no status exists: the session
// could not start, the connection was lost (wraps ErrConnectionLost) or ctx
// ended (the command is sent SIGKILL and ctx's error is returned). Run does
// not wait for stdin to be drained once the command exits.
func (c *Client) Run(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) (exitStatus int, err error) {
	select {
	case <-c.done:
		return -1, c.Err()
	default:
	}
	sess, err := c.ssh.NewSession()
	if err != nil {
		if e := c.Err(); e != nil {
			return -1, e
		}
		return -1, fmt.Errorf("ssh session on %s: %w", c.addr, err)
	}
	defer sess.Close()
	sess.Stdout, sess.Stderr = stdout, stderr
	var stdinPipe io.WriteCloser
	if stdin != nil {
		if stdinPipe, err = sess.StdinPipe(); err != nil {
			return -1, fmt.Errorf("ssh stdin: %w", err)
		}
	}
	if err := sess.Start(cmd); err != nil {
		if e := c.Err(); e != nil {
			return -1, e
		}
		return -1, fmt.Errorf("ssh start %q on %s: %w", cmd, c.addr, err)
	}
	if stdinPipe != nil {
		go func() {
			_, _ = io.Copy(stdinPipe, stdin)
			_ = stdinPipe.Close()
		}()
	}
	waitc := make(chan error, 1)
	go func() { waitc <- sess.Wait() }()
	select {
	case err = <-waitc:
	case <-ctx.Done():
		_ = sess.Signal(ssh.SIGKILL)
		_ = sess.Close()
		return -1, fmt.Errorf("ssh %q on %s: %w", cmd, c.addr, ctx.Err())
	case <-c.done:
		return -1, c.Err()
	}
	var exitErr *ssh.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &exitErr):
		if sig := exitErr.Signal(); sig != "" {
			return 128 + signalNumber(sig), nil
		}
		return exitErr.ExitStatus(), nil
	default:
		// ExitMissingError or a transport error: the connection may be gone.
		select {
		case <-c.done:
			return -1, c.Err()
		case <-time.After(50 * time.Millisecond):
		}
		return -1, fmt.Errorf("ssh %q on %s: %w", cmd, c.addr, err)
	}
}

// signalNumber maps an ssh signal name ("KILL") to its number on Linux (0
// for names Linux does not know).
func signalNumber(name string) int {
	return int(unix.SignalNum("SIG" + strings.TrimPrefix(name, "SIG")))
}

// WaitForSSH dials addr until the guest's sshd accepts the key or the wait
// times out (opts.WaitTimeout, or ctx). It backs off between attempts
// (100 ms doubling to 2 s). A host key mismatch fails at once. On timeout
// the error wraps ErrNotReady and the last dial error, and carries the tail
// of the guest's serial console log (serialLog, if non-empty).
func WaitForSSH(ctx context.Context, addr string, opts Options, serialLog string) (*Client, error) {
	opts = opts.withDefaults()
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, opts.WaitTimeout)
	defer cancel()
	backoff := 100 * time.Millisecond
	attempts := 0
	var last error
	for {
		attempts++
		c, err := Dial(wctx, addr, opts)
		if err == nil {
			opts.Logger.Debug("ssh ready", "addr", addr, "attempts", attempts, "took", time.Since(start))
			return c, nil
		}
		if errors.Is(err, ErrHostKeyMismatch) {
			return nil, err
		}
		if last == nil || wctx.Err() == nil {
			// An attempt cut short by the overall deadline says less than
			// the one before it.
			last = err
		}
		opts.Logger.Debug("ssh not ready", "addr", addr, "attempt", attempts, "err", err)
		select {
		case <-wctx.Done():
			return nil, waitError(ctx, addr, attempts, time.Since(start), last, serialLog)
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}

func waitError(ctx context.Context, addr string, attempts int, took time.Duration, last error, serialLog string) error {
	cause := ErrNotReady
	if ctx.Err() != nil {
		cause = ctx.Err() // the caller gave up, not the timeout
	}
	msg := fmt.Sprintf("ssh to %s not ready after %v (%d attempts)", addr, took.Round(100*time.Millisecond), attempts)
	if serialLog != "" {
		if tail := SerialTail(serialLog, 30); tail != "" {
			last = fmt.Errorf("%w\n--- last lines of the guest console (%s) ---\n%s", last, serialLog, tail)
		} else {
			last = fmt.Errorf("%w\n(the guest console log %s is empty or unreadable: did the kernel start?)", last, serialLog)
		}
	}
	return fmt.Errorf("%s: %w: last error: %w", msg, cause, last)
}

// SerialTail returns the last n lines of a console log, with terminal
// escape sequences and other control characters removed.
func SerialTail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	const maxTail = 16 << 10
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(fi.Size()-maxTail, 0)
	buf := make([]byte, fi.Size()-off)
	if _, err := f.ReadAt(buf, off); err != nil && !errors.Is(err, io.EOF) {
		return ""
	}
	text := cleanConsole(string(buf))
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	if off > 0 && len(lines) > 1 {
		lines = lines[1:] // first line is probably cut
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func cleanConsole(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == 0x1b: // ESC [ ... final byte
			if i+1 < len(s) && s[i+1] == '[' {
				i += 2
				for i < len(s) && !(s[i] >= 0x40 && s[i] <= 0x7e) {
					i++
				}
			}
		case c == '\r':
		case c == '\n' || c == '\t' || c >= 0x20 && c != 0x7f:
			b.WriteByte(c)
		}
	}
	return b.String()
}
