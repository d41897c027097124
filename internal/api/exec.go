package api

import (
	"errors"
	"fmt"
	"path"
	"strings"
)

// MethodVMExec runs a command in a running VM through its guest agent,
// without ssh. It is a streaming method (rpc.Client.OpenStream; see the
// rpc package doc, "Streams"): the client sends the command's stdin on
// channel ExecStdin (data, then eof) when Stdin is set, and control
// messages VMExecControl; the daemon sends the command's output on
// ExecStdout and ExecStderr and answers VMExecResult once the command
// exited and all of its output was sent. Hanging up kills the command's
// process group in the guest.
//
// A VM without a reachable agent (no agent binary, an image or template
// whose guest does not run one, a guest that does not answer) is refused
// with not_supported before anything runs: the caller then uses ssh.
const MethodVMExec = "vm.exec"

// Stream channels of vm.exec.
const (
	ExecStdin  = 0
	ExecStdout = 1
	ExecStderr = 2
)

// MaxExecArgs bounds the bytes of a vm.exec command line and environment
// (the request is one guest agent frame).
const MaxExecArgs = 256 << 10

// VMExecParams are the inputs of vm.exec.
type VMExecParams struct {
	Ref string `json:"ref"`
	// Argv is run as is (no shell): give ["/bin/sh", "-c", LINE] for a
	// command line.
	Argv []string `json:"argv"`
	// Dir is the working directory (absolute; default /root).
	Dir string `json:"dir,omitempty"`
	// Env adds KEY=VALUE entries to the agent's minimal environment (PATH,
	// HOME=/root, USER, LOGNAME, LANG=C.UTF-8, TERM=dumb).
	Env []string `json:"env,omitempty"`
	// Stdin says the client sends stdin on ExecStdin; without it the
	// command's stdin is empty (at EOF).
	Stdin bool `json:"stdin,omitempty"`
}

// Validate checks the params without touching the guest.
func (p VMExecParams) Validate() error {
	size := 0
	switch {
	case strings.TrimSpace(p.Ref) == "":
		return errors.New("no VM given: name a VM by name, id or id prefix")
	case len(p.Argv) == 0 || p.Argv[0] == "":
		return errors.New("no command given")
	case p.Dir != "" && !path.IsAbs(p.Dir):
		return fmt.Errorf("working directory %q must be absolute", p.Dir)
	case strings.ContainsRune(p.Dir, 0):
		return errors.New("working directory contains NUL")
	}
	for _, a := range p.Argv {
		if strings.ContainsRune(a, 0) {
			return errors.New("command argument contains NUL")
		}
		size += len(a)
	}
	for _, e := range p.Env {
		k, _, ok := strings.Cut(e, "=")
		if !ok || k == "" || strings.ContainsRune(e, 0) {
			return fmt.Errorf("environment entry %q is not KEY=VALUE", truncateArg(e))
		}
		size += len(e)
	}
	if size > MaxExecArgs {
		return fmt.Errorf("command line and environment are %d bytes, more than %d KiB", size, MaxExecArgs>>10)
	}
	return nil
}

func truncateArg(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// VMExecControl is a control message of vm.exec from the client.
type VMExecControl struct {
	// Signal is delivered to the command's process group: INT, TERM,
	// HUP, QUIT, KILL, USR1 or USR2. On a guest whose agent cannot signal
	// (an older agent), KILL and every other signal end the command the
	// only way it can: its process group is killed.
	Signal string `json:"signal"`
}

// VMExecResult is how a vm.exec command ended.
type VMExecResult struct {
	// ExitCode is the process's exit code; -1 when a signal killed it.
	ExitCode int `json:"exit_code"`
	// Signal names the signal that killed it ("INT", "KILL"), if one did.
	Signal string `json:"signal,omitempty"`
	// Status is what a shell reports: ExitCode, or 128+N for signal N.
	Status int `json:"status"`
}
