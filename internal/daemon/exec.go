package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bangerdev/banger/internal/agent"
	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/rpc"
	"github.com/bangerdev/banger/internal/vm"
)

// execProbe bounds the ping that decides whether vm.exec can use a VM's
// agent (it also tells whether the agent can deliver signals).
const execProbe = 3 * time.Second

// registerExec registers vm.exec.
func (d *Daemon) registerExec() {
	d.srv.HandleStream(api.MethodVMExec, rpc.TypedStream(d.vmExec))
}

// vmExec runs a command through a running VM's guest agent (see
// api.MethodVMExec). The VM's lock is not held while the command runs: a
// stop or delete meanwhile ends it (the agent's channel goes away).
func (d *Daemon) vmExec(ctx context.Context, p api.VMExecParams, st *rpc.Stream) (*api.VMExecResult, error) {
	if d.rt.mgr == nil {
		return nil, rpc.Errorf(rpc.CodeNotSupported, "VM lifecycle unavailable: %s", d.rt.disabled)
	}
	v, err := d.resolveRef(ctx, p.Ref)
	if err != nil {
		return nil, err
	}
	if v.State != model.StateRunning {
		return nil, rpc.Errorf(rpc.CodeNotRunning, "VM %s is %s: start it with `banger vm start %s`", v.Name, v.State, v.Name)
	}
	c, err := d.rt.mgr.Agent(v)
	if err != nil {
		if errors.Is(err, vm.ErrNoAgent) {
			return nil, rpc.Errorf(rpc.CodeNotSupported, "VM %s has no guest agent (%v): use ssh", v.Name, err)
		}
		return nil, err
	}
	return execThroughAgent(ctx, d.logger.With("vm", v.Name), c, p, st)
}

// execThroughAgent checks that the agent answers, then runs p on it,
// pumping st: stdin and control messages in, output out.
func execThroughAgent(ctx context.Context, log *slog.Logger, c agent.Client, p api.VMExecParams, st *rpc.Stream) (*api.VMExecResult, error) {
	pctx, cancel := context.WithTimeout(ctx, execProbe)
	health, err := c.Ping(pctx)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, rpc.Errorf(rpc.CodeNotSupported, "the guest agent does not answer (%v): use ssh", err)
	}
	canSignal := health.HasFeature(agent.FeatureSignal)

	ectx, cancelExec := context.WithCancelCause(ctx)
	defer cancelExec(nil)
	signals := make(chan string, 8)
	req := agent.ExecRequest{
		Argv: p.Argv, Env: p.Env, Dir: p.Dir, Signals: signals,
		Stdout: &streamWriter{ctx: ectx, st: st, ch: api.ExecStdout},
		Stderr: &streamWriter{ctx: ectx, st: st, ch: api.ExecStderr},
	}
	var stdinW *io.PipeWriter
	if p.Stdin {
		var r *io.PipeReader
		r, stdinW = io.Pipe()
		defer r.Close()
		req.Stdin = r
	}
	go pumpClient(ectx, log, st, stdinW, signals, canSignal, cancelExec)

	start := time.Now()
	res, err := c.Exec(ectx, req)
	log.DebugContext(ctx, "vm exec through the guest agent", "argv0", p.Argv[0], "duration", time.Since(start), "exit", res.ExitCode, "signal", res.Signal, "err", err)
	if err != nil {
		if cause := context.Cause(ectx); cause != nil && !errors.Is(cause, context.Canceled) && ctx.Err() == nil {
			return nil, cause // the client broke the protocol
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		var ae *agent.Error
		if errors.As(err, &ae) {
			return nil, rpc.Errorf(rpc.CodeOperationFailed, "in the guest: %s", ae.Message)
		}
		return nil, fmt.Errorf("run the command through the guest agent: %w", err)
	}
	out := &api.VMExecResult{ExitCode: res.ExitCode, Status: res.ExitCode}
	if res.Signal != "" {
		sig := signalNumber(res.Signal)
		out.Signal = strings.TrimPrefix(unix.SignalName(sig), "SIG")
		if out.Signal == "" {
			out.Signal = res.Signal
		}
		out.Status = 128 + int(sig)
		if sig == 0 {
			out.Status = 128 + int(syscall.SIGKILL)
		}
	}
	return out, nil
}

// pumpClient reads the client's messages: stdin data for w (nil: the
// command has no stdin, and data is a protocol error), control messages
// into signals. When the agent cannot signal, any signal kills the
// command (cancel). It returns when the client's side ends.
//
// Stdin is written by its own goroutine and each message's window is
// released only once written (RecvHold), so a command that does not read
// its stdin holds at most a window of it here, and a signal sent behind
// that stdin still arrives.
func pumpClient(ctx context.Context, log *slog.Logger, st *rpc.Stream, w *io.PipeWriter, signals chan<- string, canSignal bool, cancel context.CancelCauseFunc) {
	var stdin chan rpc.StreamMsg
	if w != nil {
		// Never full: unreleased messages are bounded by the window.
		stdin = make(chan rpc.StreamMsg, rpc.StreamWindow/256+1)
		defer func() {
			if stdin != nil {
				close(stdin)
			}
		}()
		go func(stdin <-chan rpc.StreamMsg, w *io.PipeWriter) {
			broken := false
			for m := range stdin {
				switch {
				case m.EOF:
					_ = w.Close()
					broken = true
				case !broken:
					// Blocks until the agent took it.
					if _, err := w.Write(m.Data); err != nil {
						broken = true // the command is gone; drain
					}
				}
				st.Release(m)
			}
		}(stdin, w)
	}
	for {
		m, err := st.RecvHold(ctx)
		if err != nil {
			if w != nil {
				_ = w.CloseWithError(fmt.Errorf("client went away: %w", err))
			}
			return
		}
		switch {
		case len(m.Ctl) > 0:
			var ctl api.VMExecControl
			if err := json.Unmarshal(m.Ctl, &ctl); err != nil {
				cancel(rpc.Errorf(rpc.CodeBadRequest, "vm.exec control message: %v", err))
				return
			}
			if _, ok := agent.Signals[ctl.Signal]; !ok {
				cancel(rpc.Errorf(rpc.CodeBadRequest, "vm.exec: unknown signal %q", ctl.Signal))
				return
			}
			if !canSignal {
				log.InfoContext(ctx, "vm exec: the guest agent cannot deliver signals; killing the command", "signal", ctl.Signal)
				cancel(context.Canceled)
				return
			}
			select {
			case signals <- ctl.Signal:
			default: // a burst of signals: the ones queued will do
			}
		case m.Ch != api.ExecStdin || stdin == nil:
			cancel(rpc.Errorf(rpc.CodeBadRequest, "vm.exec: data on channel %d (stdin goes on channel %d, with stdin set, before its eof)", m.Ch, api.ExecStdin))
			return
		case m.EOF:
			stdin <- m
			close(stdin)
			stdin = nil
			w = nil
		default:
			stdin <- m
		}
	}
}

// streamWriter sends what it is given on one channel of the call's stream.
// A client slow to read stalls it, and with it this VM's agent channel.
type streamWriter struct {
	ctx context.Context
	st  *rpc.Stream
	ch  int
}

func (w *streamWriter) Write(p []byte) (int, error) {
	if err := w.st.Send(w.ctx, rpc.StreamMsg{Ch: w.ch, Data: p}); err != nil {
		return 0, err
	}
	return len(p), nil
}

// signalNumber maps Go's name of a signal ("interrupt", "killed", as the
// agent reports it) to its number; 0 when unknown.
func signalNumber(name string) syscall.Signal {
	for i := syscall.Signal(1); i < 65; i++ {
		if i.String() == name {
			return i
		}
	}
	if s := unix.SignalNum("SIG" + strings.TrimPrefix(strings.ToUpper(name), "SIG")); s != 0 {
		return s
	}
	return 0
}
