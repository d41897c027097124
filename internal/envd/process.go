package envd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// outputChunk bounds one data event.
const outputChunk = 32 << 10

// process is one process started by Start.
type process struct {
	pid    uint32
	tag    *string
	config ProcessConfig
	cmd    *exec.Cmd

	stdinMu sync.Mutex
	stdin   io.WriteCloser // nil when started without stdin or closed

	mu   sync.Mutex
	subs map[*subscriber]struct{}
	end  *EndEvent // set once the process ended and its output drained
	done chan struct{}
}

type subscriber struct {
	ch   chan *ProcessEvent
	gone chan struct{} // closed when the subscriber stops reading
}

type processTable struct {
	mu    sync.Mutex
	procs map[uint32]*process
}

func newProcessTable() *processTable { return &processTable{procs: map[uint32]*process{}} }

func (t *processTable) add(p *process) {
	t.mu.Lock()
	t.procs[p.pid] = p
	t.mu.Unlock()
}

func (t *processTable) remove(p *process) {
	t.mu.Lock()
	if t.procs[p.pid] == p {
		delete(t.procs, p.pid)
	}
	t.mu.Unlock()
}

// find resolves a selector to a running process.
func (t *processTable) find(sel *ProcessSelector) (*process, error) {
	if sel == nil || (sel.PID == nil && sel.Tag == nil) {
		return nil, errorf(CodeInvalidArgument, "process selector: give a pid or a tag")
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if sel.PID != nil {
		if p, ok := t.procs[*sel.PID]; ok {
			return p, nil
		}
		return nil, errorf(CodeNotFound, "process with pid %d not found", *sel.PID)
	}
	for _, p := range t.procs {
		if p.tag != nil && *p.tag == *sel.Tag {
			return p, nil
		}
	}
	return nil, errorf(CodeNotFound, "process with tag %q not found", *sel.Tag)
}

func (t *processTable) list() []*process {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]*process, 0, len(t.procs))
	for _, p := range t.procs {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].pid < out[j].pid })
	return out
}

func (t *processTable) killAll() {
	for _, p := range t.list() {
		p.signal(syscall.SIGKILL)
	}
}

// subscribe registers a reader of p's events. It returns nil once p ended.
func (p *process) subscribe() *subscriber {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.end != nil {
		return nil
	}
	s := &subscriber{ch: make(chan *ProcessEvent, 16), gone: make(chan struct{})}
	p.subs[s] = struct{}{}
	return s
}

func (p *process) unsubscribe(s *subscriber) {
	p.mu.Lock()
	delete(p.subs, s)
	p.mu.Unlock()
	close(s.gone)
}

// publish hands ev to every subscriber, waiting for each to take it (or to
// go away): output is paced by the slowest reader, never dropped.
func (p *process) publish(ev *ProcessEvent) {
	p.mu.Lock()
	subs := make([]*subscriber, 0, len(p.subs))
	for s := range p.subs {
		subs = append(subs, s)
	}
	p.mu.Unlock()
	for _, s := range subs {
		select {
		case s.ch <- ev:
		case <-s.gone:
		}
	}
}

// finish publishes the end event and closes every subscription.
func (p *process) finish(end *EndEvent) {
	p.publish(&ProcessEvent{End: end})
	p.mu.Lock()
	p.end = end
	for s := range p.subs {
		close(s.ch)
		delete(p.subs, s)
	}
	p.mu.Unlock()
	close(p.done)
}

func (p *process) signal(sig syscall.Signal) error {
	// The process leads its own group: signal the group, so a shell's
	// children go too.
	if err := syscall.Kill(-int(p.pid), sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	return nil
}

// environ builds a process's environment: base, the account's, the
// sandbox's (POST /init), then the request's.
func (s *Server) environ(a *Account, cfg *ProcessConfig) []string {
	env := map[string]string{}
	order := []string{}
	set := func(k, v string) {
		if _, ok := env[k]; !ok {
			order = append(order, k)
		}
		env[k] = v
	}
	for _, kv := range s.o.BaseEnv {
		for i := 0; i < len(kv); i++ {
			if kv[i] == '=' {
				set(kv[:i], kv[i+1:])
				break
			}
		}
	}
	if _, ok := env["PATH"]; !ok {
		set("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	}
	set("HOME", a.Home)
	set("USER", a.Name)
	set("LOGNAME", a.Name)
	if a.Shell != "" {
		set("SHELL", a.Shell)
	}
	for k, v := range s.sandboxEnv() {
		set(k, v)
	}
	for k, v := range cfg.Envs {
		set(k, v)
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		out = append(out, k+"="+env[k])
	}
	return out
}

// startProcess starts cfg as a and registers it; sub (subscribed before
// any output) receives its events.
func (s *Server) startProcess(a *Account, req *StartRequest) (*process, *subscriber, error) {
	cfg := req.Process
	if cfg == nil || cfg.Cmd == "" {
		return nil, nil, errorf(CodeInvalidArgument, "process.cmd is empty")
	}
	if req.PTY != nil {
		return nil, nil, errorf(CodeUnimplemented, "pty processes are not supported by banger's envd")
	}
	dir := a.Home
	if cfg.Cwd != nil && *cfg.Cwd != "" {
		dir = resolvePath(a, *cfg.Cwd)
	}
	cmd := exec.Command(cfg.Cmd, cfg.Args...)
	cmd.Dir = dir
	cmd.Env = s.environ(a, cfg)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if s.o.SwitchCredential(a) {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: a.UID, Gid: a.GID, Groups: a.Groups}
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, nil, err
	}
	var stdin io.WriteCloser
	if req.Stdin != nil && *req.Stdin {
		if stdin, err = cmd.StdinPipe(); err != nil {
			return nil, nil, err
		}
	}
	if err := cmd.Start(); err != nil {
		code := CodeInvalidArgument
		if errors.Is(err, os.ErrPermission) {
			code = CodePermissionDenied
		}
		return nil, nil, errorf(code, "start %s as %s in %s: %v", cfg.Cmd, a.Name, dir, err)
	}
	p := &process{
		pid: uint32(cmd.Process.Pid), tag: req.Tag, config: *cfg, cmd: cmd, stdin: stdin,
		subs: map[*subscriber]struct{}{}, done: make(chan struct{}),
	}
	sub := p.subscribe()
	s.procs.add(p)
	go p.run(s.procs, stdout, stderr)
	return p, sub, nil
}

// run pumps output until both pipes end, waits, and publishes the end.
func (p *process) run(t *processTable, stdout, stderr io.Reader) {
	var wg sync.WaitGroup
	pump := func(r io.Reader, isErr bool) {
		defer wg.Done()
		buf := make([]byte, outputChunk)
		for {
			n, err := r.Read(buf)
			if n > 0 {
				chunk := append([]byte(nil), buf[:n]...)
				d := &DataEvent{Stdout: chunk}
				if isErr {
					d = &DataEvent{Stderr: chunk}
				}
				p.publish(&ProcessEvent{Data: d})
			}
			if err != nil {
				return
			}
		}
	}
	wg.Add(2)
	go pump(stdout, false)
	go pump(stderr, true)
	wg.Wait()
	err := p.cmd.Wait()
	end := &EndEvent{Exited: true, Status: "exit status 0"}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		ws, _ := ee.Sys().(syscall.WaitStatus)
		if ws.Signaled() {
			end.Exited = false
			end.ExitCode = -1
			end.Status = "signal: " + ws.Signal().String()
		} else {
			end.ExitCode = int32(ws.ExitStatus())
			end.Status = "exit status " + strconv.Itoa(ws.ExitStatus())
		}
	default:
		msg := err.Error()
		end.Exited = false
		end.ExitCode = -1
		end.Status = "error"
		end.Error = &msg
	}
	t.remove(p)
	p.stdinMu.Lock()
	if p.stdin != nil {
		_ = p.stdin.Close()
		p.stdin = nil
	}
	p.stdinMu.Unlock()
	p.finish(end)
}

// keepaliveInterval is the Keepalive-Ping-Interval header (seconds).
func keepaliveInterval(r *http.Request) time.Duration {
	n, err := strconv.Atoi(r.Header.Get("Keepalive-Ping-Interval"))
	if err != nil || n <= 0 {
		return 0
	}
	if n > 3600 {
		n = 3600
	}
	return time.Duration(n) * time.Second
}

// streamEvents sends sub's events (after first, when not nil) until the
// process ends or ctx does. When kill is set, ctx ending kills the
// process (a Start stream owns its process).
func streamEvents(ctx context.Context, st *stream, p *process, sub *subscriber, first *ProcessEvent, keepalive time.Duration, kill bool) {
	defer p.unsubscribe(sub)
	if err := st.Send(&EventResponse{Event: first}); err != nil {
		if kill {
			p.signal(syscall.SIGKILL)
		}
		return
	}
	var tick <-chan time.Time
	if keepalive > 0 {
		t := time.NewTicker(keepalive)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case ev, ok := <-sub.ch:
			if !ok {
				st.End(nil)
				return
			}
			if err := st.Send(&EventResponse{Event: ev}); err != nil {
				if kill {
					p.signal(syscall.SIGKILL)
				}
				return
			}
		case <-tick:
			if err := st.Send(&EventResponse{Event: &ProcessEvent{Keepalive: &KeepAlive{}}}); err != nil {
				if kill {
					p.signal(syscall.SIGKILL)
				}
				return
			}
		case <-ctx.Done():
			if kill {
				p.signal(syscall.SIGKILL)
			}
			code := CodeCanceled
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				code = CodeDeadlineExceeded
			}
			st.End(errorf(code, "process %d: %v", p.pid, ctx.Err()))
			return
		}
	}
}

func (s *Server) processStart(w http.ResponseWriter, r *http.Request) {
	st := newStream(w)
	var req StartRequest
	if err := readStreamRequest(r, &req); err != nil {
		st.End(err)
		return
	}
	ctx, cancel, err := requestContext(r)
	if err != nil {
		st.End(err)
		return
	}
	defer cancel()
	a, err := s.rpcUser(r)
	if err != nil {
		st.End(err)
		return
	}
	p, sub, err := s.startProcess(a, &req)
	if err != nil {
		st.End(err)
		return
	}
	streamEvents(ctx, st, p, sub, &ProcessEvent{Start: &StartEvent{PID: p.pid}}, keepaliveInterval(r), true)
}

func (s *Server) processConnect(w http.ResponseWriter, r *http.Request) {
	st := newStream(w)
	var req ConnectRequest
	if err := readStreamRequest(r, &req); err != nil {
		st.End(err)
		return
	}
	ctx, cancel, err := requestContext(r)
	if err != nil {
		st.End(err)
		return
	}
	defer cancel()
	p, err := s.procs.find(req.Process)
	if err != nil {
		st.End(err)
		return
	}
	sub := p.subscribe()
	if sub == nil {
		st.End(errorf(CodeNotFound, "process %d has ended", p.pid))
		return
	}
	streamEvents(ctx, st, p, sub, &ProcessEvent{Start: &StartEvent{PID: p.pid}}, keepaliveInterval(r), false)
}

func (s *Server) processList(w http.ResponseWriter, r *http.Request) {
	var req struct{}
	if err := readUnary(r, &req); err != nil {
		writeUnaryError(w, err)
		return
	}
	resp := ListResponse{Processes: []ProcessInfo{}}
	for _, p := range s.procs.list() {
		cfg := p.config
		resp.Processes = append(resp.Processes, ProcessInfo{Config: &cfg, PID: p.pid, Tag: p.tag})
	}
	writeUnary(w, &resp)
}

func (s *Server) processSendInput(w http.ResponseWriter, r *http.Request) {
	var req SendInputRequest
	if err := readUnary(r, &req); err != nil {
		writeUnaryError(w, err)
		return
	}
	p, err := s.procs.find(req.Process)
	if err != nil {
		writeUnaryError(w, err)
		return
	}
	if req.Input == nil || req.Input.PTY != nil {
		writeUnaryError(w, errorf(CodeInvalidArgument, "input: only stdin is supported"))
		return
	}
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	if p.stdin == nil {
		writeUnaryError(w, errorf(CodeFailedPrecondition, "process %d has no open stdin (start it with stdin: true)", p.pid))
		return
	}
	if _, err := p.stdin.Write(req.Input.Stdin); err != nil {
		writeUnaryError(w, errorf(CodeFailedPrecondition, "write stdin of process %d: %v", p.pid, err))
		return
	}
	writeUnary(w, struct{}{})
}

func (s *Server) processSendSignal(w http.ResponseWriter, r *http.Request) {
	var req SendSignalRequest
	if err := readUnary(r, &req); err != nil {
		writeUnaryError(w, err)
		return
	}
	p, err := s.procs.find(req.Process)
	if err != nil {
		writeUnaryError(w, err)
		return
	}
	var sig syscall.Signal
	switch req.Signal {
	case SignalSIGKILL:
		sig = syscall.SIGKILL
	case SignalSIGTERM:
		sig = syscall.SIGTERM
	default:
		writeUnaryError(w, errorf(CodeInvalidArgument, "signal %d: only SIGNAL_SIGTERM and SIGNAL_SIGKILL", req.Signal))
		return
	}
	if err := p.signal(sig); err != nil {
		writeUnaryError(w, fmt.Errorf("signal process %d: %w", p.pid, err))
		return
	}
	writeUnary(w, struct{}{})
}

func (s *Server) processCloseStdin(w http.ResponseWriter, r *http.Request) {
	var req CloseStdinRequest
	if err := readUnary(r, &req); err != nil {
		writeUnaryError(w, err)
		return
	}
	p, err := s.procs.find(req.Process)
	if err != nil {
		writeUnaryError(w, err)
		return
	}
	p.stdinMu.Lock()
	if p.stdin != nil {
		_ = p.stdin.Close()
		p.stdin = nil
	}
	p.stdinMu.Unlock()
	writeUnary(w, struct{}{})
}
