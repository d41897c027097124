package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/rpc"
)

// errNoAgentExec is wrapped when the daemon cannot run a command through
// the VM's guest agent (no agent, an agent that does not answer, or a
// daemon without vm.exec): nothing ran, and the caller uses ssh.
var errNoAgentExec = errors.New("no guest agent exec")

// envExecVia, set to "ssh", makes `vm run` and `vm exec` run commands over
// ssh even when the VM's guest agent could run them.
const envExecVia = "BANGER_EXEC_VIA"

// runCommandAuto runs argv in dir on vm: through the daemon and the VM's
// guest agent when no pty is wanted and the agent can (no ssh handshake:
// about 1-2 s of emulated crypto on a TCG guest), else over the CLI's own
// ssh connection (pre, when not nil, is an early one).
func (a *app) runCommandAuto(ctx context.Context, pre *predial, vm *model.VM, dir string, argv []string, pty bool) (int, error) {
	if a.agentExecWanted(pty) {
		status, err := a.execViaAgent(ctx, vm, dir, argv)
		if !errors.Is(err, errNoAgentExec) {
			a.debugf("ran the command through the guest agent (vm.exec)")
			return status, err
		}
		a.debugf("the guest agent cannot run the command (%v); using ssh", err)
	} else {
		a.debugf("running the command over ssh (pty %v, %s=%q)", pty, envExecVia, a.env.Getenv(envExecVia))
	}
	if pre != nil {
		return a.runCommandOn(ctx, pre.take(30*time.Second), vm, dir, argv, pty)
	}
	return a.runCommand(ctx, vm, dir, argv, pty)
}

// agentExecWanted says whether a command should first try the agent path:
// not for a pty (an interactive session stays on ssh) and not when
// BANGER_EXEC_VIA=ssh.
func (a *app) agentExecWanted(pty bool) bool {
	return !pty && a.env.Getenv(envExecVia) != "ssh"
}

// execViaAgent runs argv in dir (under a login shell, as over ssh) through
// the daemon's vm.exec: stdin streamed in, stdout and stderr out, the exit
// status back. Ctrl-C, SIGTERM and SIGHUP are forwarded to the command's
// process group; a second one kills it and stops waiting 5 s later. If
// this process dies, the daemon sees the connection close and kills the
// command. Errors wrap errNoAgentExec when nothing ran and ssh should be
// used instead.
func (a *app) execViaAgent(ctx context.Context, vm *model.VM, dir string, argv []string) (int, error) {
	c, err := a.daemon(ctx)
	if err != nil {
		return -1, err
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)

	// The first Ctrl-C cancels ctx (main's NotifyContext); the stream must
	// outlive it so the signal reaches the command instead of a kill.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	p := api.VMExecParams{Ref: vm.ID, Argv: []string{"/bin/sh", "-c", remoteScript(dir, argv, false)}, Stdin: a.env.Stdin != nil}
	st, err := c.OpenStream(sctx, api.MethodVMExec, p)
	if err != nil {
		return -1, err
	}
	defer st.Close()
	if p.Stdin {
		go a.sendStdin(sctx, st)
	}
	type outcome struct {
		res api.VMExecResult
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		var o outcome
		if o.err = a.copyOutput(sctx, st); o.err != nil {
			_ = st.Close() // stops the command: its output has nowhere to go
		} else {
			o.err = st.Wait(sctx, &o.res)
		}
		done <- o
	}()
	var forced <-chan time.Time
	signals := 0
	for {
		select {
		case o := <-done:
			switch {
			case o.err == nil:
				return o.res.Status, nil
			case rpc.CodeOf(o.err) == rpc.CodeNotSupported, rpc.CodeOf(o.err) == rpc.CodeUnknownMethod:
				return -1, fmt.Errorf("%w: %w", errNoAgentExec, o.err)
			}
			return -1, fmt.Errorf("run the command in %s through its guest agent: %w", vm.Name, o.err)
		case sig := <-sigs:
			signals++
			name := a.escalate(sig, signals)
			if name == "KILL" && forced == nil {
				forced = time.After(5 * time.Second)
			}
			ctl, _ := json.Marshal(api.VMExecControl{Signal: name})
			go func() { _ = st.Send(sctx, rpc.StreamMsg{Ctl: ctl}) }()
		case <-forced:
			return 128 + int(syscall.SIGKILL), nil // the deferred Close kills it
		}
	}
}

// sendStdin streams the CLI's stdin to the command, then its end.
func (a *app) sendStdin(ctx context.Context, st *rpc.ClientStream) {
	buf := make([]byte, rpc.StreamChunk)
	for {
		n, err := a.env.Stdin.Read(buf)
		if n > 0 {
			if st.Send(ctx, rpc.StreamMsg{Ch: api.ExecStdin, Data: buf[:n]}) != nil {
				return
			}
		}
		if err != nil {
			_ = st.Send(ctx, rpc.StreamMsg{Ch: api.ExecStdin, EOF: true})
			return
		}
	}
}

// copyOutput writes the command's output to stdout and stderr until the
// daemon answers (Wait then has the answer). Its only error is a failed
// write.
func (a *app) copyOutput(ctx context.Context, st *rpc.ClientStream) error {
	for {
		m, err := st.Recv(ctx)
		if err != nil {
			return nil
		}
		var w io.Writer
		switch m.Ch {
		case api.ExecStdout:
			w = a.env.Stdout
		case api.ExecStderr:
			w = a.env.Stderr
		default:
			continue
		}
		if len(m.Data) > 0 {
			if _, err := w.Write(m.Data); err != nil {
				return fmt.Errorf("write the command's output: %w", err)
			}
		}
	}
}
