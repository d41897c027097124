package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/bangerdev/banger/internal/hostexec"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/guest"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/sshconfig"
)

// vmHost is the name a VM's host key is pinned under besides its address.
func vmHost(vm *model.VM) string { return vm.Name + "." + sshconfig.DefaultDomain }

// dialVM opens the CLI's own ssh connection to a running VM with banger's
// managed key and known_hosts (the daemon pinned the VM's host key before
// its first boot, so a different key is refused).
func (a *app) dialVM(ctx context.Context, vm *model.VM) (*guest.Client, error) {
	if vm.State != model.StateRunning || vm.IP == "" {
		return nil, notRunning(vm)
	}
	// The key and known_hosts are the daemon's files: ask the daemon
	// (in system mode this CLI may not be able to read them).
	var cred api.SSHCredentials
	if err := a.call(ctx, api.MethodSSHCredentials, api.Ref{Ref: vm.ID}, &cred); err != nil {
		return nil, fmt.Errorf("banger's ssh credentials for %s: %w", vm.Name, err)
	}
	signer, err := ssh.ParsePrivateKey([]byte(cred.PrivateKey))
	if err != nil {
		return nil, fmt.Errorf("banger's ssh key from the daemon: %w", err)
	}
	cb, algos, err := pinnedHostKeys(vm.Name, cred.HostKeys)
	if err != nil {
		return nil, err
	}
	c, err := guest.Dial(ctx, net.JoinHostPort(vm.IP, "22"), guest.Options{
		Signer: signer, HostKeyCallback: cb, HostKeyAlgorithms: algos, ConnectTimeout: 30 * time.Second,
	})
	if err != nil {
		return nil, fmt.Errorf("ssh to VM %s: %w (is it up? `banger vm logs %s`)", vm.Name, err, vm.Name)
	}
	return c, nil
}

// pinnedHostKeys accepts exactly the host keys the daemon pinned for the
// VM (it writes them before the first boot, so there is nothing to trust on
// first use), and returns the host key algorithms to ask for.
func pinnedHostKeys(name string, lines []string) (ssh.HostKeyCallback, []string, error) {
	var keys [][]byte
	var algos []string
	for _, l := range lines {
		k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(l))
		if err != nil {
			return nil, nil, fmt.Errorf("host key of %s from the daemon: %w", name, err)
		}
		keys = append(keys, k.Marshal())
		if k.Type() == ssh.KeyAlgoRSA {
			algos = append(algos, ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA)
		} else {
			algos = append(algos, k.Type())
		}
	}
	if len(keys) == 0 {
		return nil, nil, fmt.Errorf("no host key is pinned for VM %s: recreate it (`banger vm delete %s`)", name, name)
	}
	return func(_ string, _ net.Addr, key ssh.PublicKey) error {
		got := key.Marshal()
		for _, k := range keys {
			if bytes.Equal(k, got) {
				return nil
			}
		}
		return fmt.Errorf("VM %s presented host key %s, not the one banger pinned (possible MITM, or the VM was rebuilt)", name, ssh.FingerprintSHA256(key))
	}, algos, nil
}

// notRunning is the error for commands that need a running VM.
func notRunning(vm *model.VM) error {
	return fmt.Errorf("VM %s is %s (not_running): start it with `banger vm start %s`", vm.Name, vm.State, vm.Name)
}

// pgidMarker frames the process group id the guest-side wrapper prints on
// stderr before it runs the command; the CLI strips it and uses the id to
// forward Ctrl-C to every process of the command.
const pgidMarker = "\x1ebanger-pgid:"

// remoteScript is the command line sent to the guest for argv in dir:
// change into dir, then run the command under a login shell (bash -l when
// installed, else sh -l). One argument is a shell command line; several are
// quoted words. With marker the wrapper first reports its pid on stderr:
// sshd makes it a session and process group leader, and the exec chain
// keeps the pid, so it is the command's process group.
func remoteScript(dir string, argv []string, marker bool) string {
	user := commandLine(argv)
	var b strings.Builder
	if marker {
		b.WriteString(`printf '` + strings.ReplaceAll(pgidMarker, "\x1e", `\036`) + `%s\036\n' "$$" >&2; `)
	}
	fmt.Fprintf(&b, `cd -- %s || { echo "banger: cannot enter %s in the guest (is the workspace prepared? `+"`banger vm workspace prepare`"+`)" >&2; exit 1; }; `,
		hostexec.Quote(dir), strings.ReplaceAll(dir, `"`, ``))
	fmt.Fprintf(&b, `if command -v bash >/dev/null 2>&1; then exec bash -lc %s; else exec sh -lc %s; fi`, hostexec.Quote(user), hostexec.Quote(user))
	return b.String()
}

// shellQuote always quotes s for a POSIX shell.

// pgidFilter passes stderr through, removing the wrapper's pgid marker
// line (the first thing the wrapper writes) and recording the id.
type pgidFilter struct {
	mu   sync.Mutex
	w    io.Writer
	buf  []byte
	done bool
	pgid int
}

func (f *pgidFilter) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.done {
		return f.w.Write(p)
	}
	f.buf = append(f.buf, p...)
	if i := bytes.Index(f.buf, []byte(pgidMarker)); i >= 0 {
		rest := f.buf[i+len(pgidMarker):]
		j := bytes.Index(rest, []byte("\x1e\n"))
		if j < 0 {
			if len(rest) > 64 { // not our marker after all
				return len(p), f.flushLocked()
			}
			return len(p), nil
		}
		if n, err := strconv.Atoi(string(rest[:j])); err == nil && n > 1 {
			f.pgid = n
		}
		out := append(append([]byte(nil), f.buf[:i]...), rest[j+2:]...)
		f.buf, f.done = nil, true
		_, err := f.w.Write(out)
		return len(p), err
	}
	// Keep a possible start of the marker, write the rest.
	keep := 0
	if k := bytes.LastIndexByte(f.buf, pgidMarker[0]); k >= 0 && bytes.HasPrefix([]byte(pgidMarker), f.buf[k:]) {
		keep = len(f.buf) - k
	}
	if len(f.buf) > 64<<10 {
		return len(p), f.flushLocked()
	}
	out := f.buf[:len(f.buf)-keep]
	if len(out) > 0 {
		if _, err := f.w.Write(out); err != nil {
			return len(p), err
		}
		f.buf = append([]byte(nil), f.buf[len(out):]...)
	}
	return len(p), nil
}

func (f *pgidFilter) flushLocked() error {
	f.done = true
	b := f.buf
	f.buf = nil
	_, err := f.w.Write(b)
	return err
}

// Flush writes anything held back (at the end of the command).
func (f *pgidFilter) Flush() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.done && len(f.buf) > 0 {
		_ = f.flushLocked()
	}
}

func (f *pgidFilter) PGID() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pgid
}

// escalate says what the n-th host signal during a remote command does and
// returns the signal name to deliver: the first is passed on as it is,
// any later one kills the command ("KILL"; the caller stops waiting 5 s
// later).
func (a *app) escalate(sig os.Signal, n int) string {
	if n == 1 {
		name := sshSignalName(sig)
		fmt.Fprintf(a.env.Stderr, "\nbanger: sending SIG%s to the command (again to stop waiting for it)\n", name)
		return name
	}
	fmt.Fprintf(a.env.Stderr, "\nbanger: killing the command\n")
	return "KILL"
}

// sshSignalName maps a host signal to its ssh name.
func sshSignalName(sig os.Signal) string {
	switch sig {
	case syscall.SIGTERM:
		return "TERM"
	case syscall.SIGHUP:
		return "HUP"
	case syscall.SIGKILL:
		return "KILL"
	}
	return "INT"
}

// exitStatus maps the result of an ssh session to the command's status:
// its own, or 128+N when signal N killed it.
func exitStatus(err error) (int, error) {
	var ee *ssh.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &ee):
		if sig := ee.Signal(); sig != "" {
			if n := unix.SignalNum("SIG" + strings.TrimPrefix(sig, "SIG")); n != 0 {
				return 128 + int(n), nil
			}
			return 128 + int(syscall.SIGKILL), nil
		}
		return ee.ExitStatus(), nil
	}
	var missing *ssh.ExitMissingError
	if errors.As(err, &missing) {
		return -1, errors.New("the guest closed the session without an exit status (the connection dropped or the VM went down)")
	}
	return -1, err
}

// runCommand runs argv in dir on the VM over one ssh connection made by
// the CLI, streaming stdin, stdout and stderr, and returns the command's
// exit status. Ctrl-C (SIGINT), SIGTERM and SIGHUP are forwarded to the
// command's whole process group; a second one stops waiting.
func (a *app) runCommand(ctx context.Context, vm *model.VM, dir string, argv []string, pty bool) (int, error) {
	return a.runCommandOn(ctx, nil, vm, dir, argv, pty)
}

// runCommandOn is runCommand on c when it is not nil (an early connection,
// see predial), else on a new connection; c is closed afterwards.
func (a *app) runCommandOn(ctx context.Context, c *guest.Client, vm *model.VM, dir string, argv []string, pty bool) (int, error) {
	if c == nil {
		var err error
		if c, err = a.dialVM(ctx, vm); err != nil {
			return -1, err
		}
	}
	defer c.Close()
	return a.runOn(c, dir, argv, pty)
}

// runOn is runCommand on an open connection.
func (a *app) runOn(c *guest.Client, dir string, argv []string, pty bool) (int, error) {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)

	sess, err := c.SSH().NewSession()
	if err != nil {
		return -1, fmt.Errorf("ssh session: %w", err)
	}
	defer sess.Close()
	var filter *pgidFilter
	var restore func()
	if pty {
		restore, err = a.setupPTY(sess)
		if err != nil {
			return -1, err
		}
		defer restore()
		sess.Stdout, sess.Stderr = a.env.Stdout, a.env.Stderr
	} else {
		filter = &pgidFilter{w: a.env.Stderr}
		sess.Stdout, sess.Stderr = a.env.Stdout, filter
	}
	stdin, err := sess.StdinPipe()
	if err != nil {
		return -1, fmt.Errorf("ssh stdin: %w", err)
	}
	if err := sess.Start(remoteScript(dir, argv, !pty)); err != nil {
		return -1, fmt.Errorf("start the command on the VM: %w", err)
	}
	go func() {
		if a.env.Stdin != nil {
			_, _ = io.Copy(stdin, a.env.Stdin)
		}
		_ = stdin.Close()
	}()
	var winch chan os.Signal
	if pty {
		winch = make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
	}
	waitc := make(chan error, 1)
	go func() { waitc <- sess.Wait() }()
	var forced <-chan time.Time
	signals := 0
	for {
		select {
		case err := <-waitc:
			if filter != nil {
				filter.Flush()
			}
			return exitStatus(err)
		case <-c.Done():
			return -1, fmt.Errorf("lost the ssh connection to the VM: %w", c.Err())
		case <-winch:
			if w, h, err := termSize(a.env.Stdout); err == nil {
				_ = sess.WindowChange(h, w)
			}
		case sig := <-sigs:
			signals++
			name := a.escalate(sig, signals)
			if name == "KILL" {
				forced = time.After(5 * time.Second)
			}
			a.signalRemote(c, sess, filter, name)
		case <-forced:
			_ = sess.Close()
			return 128 + int(syscall.SIGKILL), nil
		}
	}
}

// signalRemote delivers signal name to the session's process and, when
// the process group is known, to every process of the command (as a
// terminal's Ctrl-C would), through a second session on the connection.
func (a *app) signalRemote(c *guest.Client, sess *ssh.Session, filter *pgidFilter, name string) {
	_ = sess.Signal(ssh.Signal(name))
	if filter == nil {
		return
	}
	if pgid := filter.PGID(); pgid > 1 {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, _ = c.Run(ctx, fmt.Sprintf("kill -s %s -- -%d 2>/dev/null", name, pgid), nil, nil, nil)
		}()
	}
}

// setupPTY requests a pty sized like the local terminal and puts the local
// terminal in raw mode; restore undoes that.
func (a *app) setupPTY(sess *ssh.Session) (restore func(), err error) {
	w, h, err := termSize(a.env.Stdout)
	if err != nil {
		w, h = 80, 24
	}
	termName := a.env.Getenv("TERM")
	if termName == "" {
		termName = "xterm-256color"
	}
	modes := ssh.TerminalModes{ssh.ECHO: 1, ssh.TTY_OP_ISPEED: 38400, ssh.TTY_OP_OSPEED: 38400}
	if err := sess.RequestPty(termName, h, w, modes); err != nil {
		return nil, fmt.Errorf("ssh pty: %w", err)
	}
	restore = func() {}
	if in, ok := a.env.Stdin.(*os.File); ok && term.IsTerminal(int(in.Fd())) {
		st, err := term.MakeRaw(int(in.Fd()))
		if err == nil {
			restore = func() { _ = term.Restore(int(in.Fd()), st) }
		}
	}
	return restore, nil
}

func termSize(w io.Writer) (width, height int, err error) {
	f, ok := w.(*os.File)
	if !ok {
		return 0, 0, errors.New("not a terminal")
	}
	return term.GetSize(int(f.Fd()))
}

// sshBinary finds the system ssh client.
func sshBinary() (string, error) {
	p, err := exec.LookPath("ssh")
	if err != nil {
		return "", errors.New("the ssh client is not installed: install it (Debian: `apt-get install openssh-client`)")
	}
	return p, nil
}

// systemSSHArgs are the system ssh options for a VM: banger's key and
// known_hosts with strict checking (the host key is pinned under the VM's
// address and NAME.vm), keep-alives, and no user or system ssh_config, so
// a ProxyJump or User set for `Host *` there cannot break access.
func systemSSHArgs(layout paths.Layout, vm *model.VM) []string {
	return []string{
		"-F", "none",
		"-i", guest.KeyPath(layout.SSHDir()),
		"-o", "IdentitiesOnly=yes",
		"-o", "UserKnownHostsFile=" + layout.KnownHostsPath(),
		"-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "StrictHostKeyChecking=yes",
		"-o", "HostKeyAlias=" + vmHost(vm),
		"-o", "CheckHostIP=no",
		"-o", "ServerAliveInterval=5",
		"-o", "ServerAliveCountMax=3",
		"-o", "ConnectTimeout=30",
		"-o", "LogLevel=ERROR",
		"-l", "root",
	}
}

// runSystemSSH runs the system ssh client to vm with opts before the
// destination and command (may be empty) after it, connected to the CLI's
// stdin/stdout/stderr, and returns ssh's exit status (the remote command's,
// or 255 when ssh itself failed). The CLI ignores Ctrl-C meanwhile: ssh
// (or the remote terminal) handles it.
func (a *app) runSystemSSH(vm *model.VM, opts []string, command []string) (int, error) {
	if vm.State != model.StateRunning || vm.IP == "" {
		return -1, notRunning(vm)
	}
	bin, err := sshBinary()
	if err != nil {
		return -1, err
	}
	layout, err := a.layout()
	if err != nil {
		return -1, err
	}
	args := append(systemSSHArgs(layout, vm), opts...)
	args = append(args, vm.IP)
	args = append(args, command...)
	cmd := exec.Command(bin, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = a.env.Stdin, a.env.Stdout, a.env.Stderr
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	if err := cmd.Start(); err != nil {
		return -1, fmt.Errorf("run %s: %w", bin, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for {
		select {
		case err := <-done:
			if err == nil {
				return 0, nil
			}
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
					return 128 + int(ws.Signal()), nil
				}
				return ee.ExitCode(), nil
			}
			return -1, err
		case sig := <-sigs:
			if sig != syscall.SIGINT { // Ctrl-C reaches ssh through the terminal
				_ = cmd.Process.Signal(sig)
			}
		}
	}
}

// interactiveShell opens the guest user's login shell in dir with the
// system ssh client: with a pty when stdin is a terminal; otherwise the
// shell reads commands from stdin.
func (a *app) interactiveShell(ctx context.Context, vm *model.VM, dir string) (int, error) {
	remote := fmt.Sprintf(`cd -- %s && exec "${SHELL:-/bin/sh}" -l`, hostexec.Quote(dir))
	opt := "-T"
	if in, ok := a.env.Stdin.(*os.File); ok && isTTY(in) {
		opt = "-t"
	}
	return a.runSystemSSH(vm, []string{opt}, []string{remote})
}
