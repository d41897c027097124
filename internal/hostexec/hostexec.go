// Package hostexec is the one runner through which banger calls host tools
// (ip, nft, mkfs.ext4, debugfs, qemu-img, git, ssh-keygen, ...). Production
// code takes a Runner so tests can substitute a Recorder and assert the exact
// command lines.
package hostexec

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// Cmd is one invocation of a host tool.
type Cmd struct {
	Name   string    // program name or path
	Args   []string  // arguments, without the program name
	Stdin  io.Reader // optional
	Env    []string  // extra environment entries (KEY=VALUE), appended to the runner's
	Dir    string    // working directory; "" = inherit
	Stdout io.Writer // optional: stream stdout here instead of capturing it
	Stderr io.Writer // optional: stream stderr here as well as capturing its tail
}

// String renders the command line shell-quoted, for logs and test asserts.
func (c Cmd) String() string {
	parts := make([]string, 0, len(c.Args)+1)
	parts = append(parts, Quote(c.Name))
	for _, a := range c.Args {
		parts = append(parts, Quote(a))
	}
	return strings.Join(parts, " ")
}

// Quote returns s as one POSIX shell word: unchanged when it is non-empty
// and consists only of letters, digits and -_./=:,+@%, else wrapped in
// single quotes, each embedded single quote written as close-quote,
// backslash-quote, open-quote. A word with = in command position would be
// read as an assignment; Quote is meant for arguments and values.
func Quote(s string) string {
	if s == "" {
		return "''"
	}
	if strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=:,+@%", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// Result is what a finished command produced.
type Result struct {
	Stdout   []byte
	Stderr   []byte
	ExitCode int
}

// ExitError is returned when a command ran but exited non-zero.
type ExitError struct {
	Cmd      string
	ExitCode int
	Stderr   string
}

func (e *ExitError) Error() string {
	msg := strings.TrimSpace(e.Stderr)
	if len(msg) > 2000 {
		msg = "..." + msg[len(msg)-2000:]
	}
	if msg == "" {
		return fmt.Sprintf("%s: exit status %d", e.Cmd, e.ExitCode)
	}
	return fmt.Sprintf("%s: exit status %d: %s", e.Cmd, e.ExitCode, msg)
}

// ErrNotFound wraps errors for programs missing from PATH.
var ErrNotFound = errors.New("program not found")

// Runner runs host tools. Run returns a *ExitError (with the captured stderr)
// when the program exits non-zero, an error wrapping ErrNotFound when it is
// not installed, and ctx.Err() when the context ends first (the process is
// killed).
type Runner interface {
	Run(ctx context.Context, cmd Cmd) (Result, error)
}

// Real runs commands on the host.
type Real struct {
	Logger *slog.Logger // optional; logs command, duration and exit status at debug
	Env    []string     // optional base environment; nil = inherit
}

// Run implements Runner.
func (r Real) Run(ctx context.Context, c Cmd) (Result, error) {
	path, err := exec.LookPath(c.Name)
	if err != nil {
		return Result{ExitCode: -1}, fmt.Errorf("%s: %w (install it, or check PATH)", c.Name, ErrNotFound)
	}
	cmd := exec.CommandContext(ctx, path, c.Args...)
	cmd.WaitDelay = 5 * time.Second
	cmd.Dir = c.Dir
	if r.Env != nil || len(c.Env) > 0 {
		base := r.Env
		if base == nil {
			base = cmd.Environ()
		}
		cmd.Env = append(append([]string{}, base...), c.Env...)
	}
	cmd.Stdin = c.Stdin
	var stdout, stderr bytes.Buffer
	stderrTail := TailBuffer{Max: 64 << 10}
	if c.Stdout != nil {
		cmd.Stdout = c.Stdout
	} else {
		cmd.Stdout = &stdout
	}
	if c.Stderr != nil {
		cmd.Stderr = io.MultiWriter(c.Stderr, &stderrTail)
	} else {
		cmd.Stderr = &stderr
	}
	start := time.Now()
	err = cmd.Run()
	res := Result{Stdout: stdout.Bytes(), Stderr: stderr.Bytes(), ExitCode: cmd.ProcessState.ExitCode()}
	if c.Stderr != nil {
		res.Stderr = stderrTail.Bytes()
	}
	if r.Logger != nil {
		r.Logger.LogAttrs(ctx, slog.LevelDebug, "exec", slog.String("cmd", c.String()),
			slog.Duration("took", time.Since(start)), slog.Int("exit", res.ExitCode))
	}
	if err != nil {
		if ctx.Err() != nil {
			return res, fmt.Errorf("%s: %w", c.Name, ctx.Err())
		}
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return res, &ExitError{Cmd: c.String(), ExitCode: res.ExitCode, Stderr: string(res.Stderr)}
		}
		return res, fmt.Errorf("run %s: %w", c.Name, err)
	}
	return res, nil
}

// TailBuffer is an io.Writer that keeps only the last Max bytes written
// (the end of a command's stderr, where the reason for a failure is).
// Writes never fail. The zero value keeps nothing; set Max before the first
// Write. A TailBuffer is not safe for concurrent use.
type TailBuffer struct {
	Max int
	buf bytes.Buffer
}

// Write implements io.Writer. Memory stays below 2*Max + len(p).
func (t *TailBuffer) Write(p []byte) (int, error) {
	t.buf.Write(p)
	if t.buf.Len() > 2*t.Max {
		keep := append([]byte(nil), t.buf.Bytes()[t.buf.Len()-t.Max:]...)
		t.buf.Reset()
		t.buf.Write(keep)
	}
	return len(p), nil
}

// Bytes returns the last Max bytes written (fewer if fewer were written).
func (t *TailBuffer) Bytes() []byte {
	b := t.buf.Bytes()
	if len(b) > t.Max {
		b = b[len(b)-max(t.Max, 0):]
	}
	return b
}

// String returns Bytes as a string.
func (t *TailBuffer) String() string { return string(t.Bytes()) }

// Recorder is a Runner for tests: it records every command and answers from
// Respond (nil = success with empty output).
type Recorder struct {
	mu      sync.Mutex
	calls   []Cmd
	Respond func(Cmd) (Result, error)
}

// Run implements Runner.
func (r *Recorder) Run(ctx context.Context, c Cmd) (Result, error) {
	if c.Stdin != nil {
		data, _ := io.ReadAll(c.Stdin)
		c.Stdin = bytes.NewReader(data)
	}
	r.mu.Lock()
	r.calls = append(r.calls, c)
	respond := r.Respond
	r.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return Result{ExitCode: -1}, err
	}
	if respond == nil {
		return Result{}, nil
	}
	return respond(c)
}

// Calls returns the recorded commands.
func (r *Recorder) Calls() []Cmd {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Cmd(nil), r.calls...)
}

// Lines returns the recorded command lines as strings (see Cmd.String).
func (r *Recorder) Lines() []string {
	var out []string
	for _, c := range r.Calls() {
		out = append(out, c.String())
	}
	return out
}
