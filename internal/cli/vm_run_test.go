package cli

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/testreq"
)

// runMain runs the CLI in-process with an isolated layout and no daemon
// binary, returning stdout, stderr and the exit status.
func runMain(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	dir := t.TempDir()
	for k, v := range map[string]string{
		"BANGER_STATE_DIR": filepath.Join(dir, "state"), "BANGER_CACHE_DIR": filepath.Join(dir, "cache"),
		"BANGER_RUNTIME_DIR": filepath.Join(dir, "run"), "BANGER_CONFIG_DIR": filepath.Join(dir, "config"),
		"BANGER_DAEMON": "/nonexistent/bangerd",
	} {
		t.Setenv(k, v)
	}
	var out, errb bytes.Buffer
	code := Main(context.Background(), Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb, Getenv: os.Getenv}, args)
	return out.String(), errb.String(), code
}

func TestVMRunFlagValidation(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"vm", "run", "-d", "--rm", "."}, "use one of them"},
		{[]string{"vm", "run", "-d", ".", "--", "make", "test"}, "banger vm exec NAME -- make test"},
		{[]string{"vm", "run", "--detach", "--", "true"}, "does not run a command"},
		{[]string{"vm", "run", "make", "test"}, "put it after `--`"},
		{[]string{"vm", "run", ".", "--"}, "nothing after `--`"},
		{[]string{"vm", "run", "--include-untracked"}, "give the PATH"},
		{[]string{"vm", "run", "--branch", "x", "--", "true"}, "give the PATH"},
		{[]string{"vm", "run", "--from", "HEAD", "--include-untracked", "."}, "drop --include-untracked"},
		{[]string{"vm", "run", "-t", "-T", "--", "true"}, "contradict"},
		{[]string{"vm", "run", "--name", "Bad_Name", "--", "true"}, "--name"},
		{[]string{"vm", "run", "--vcpu", "0", "--", "true"}, "--vcpu must be between 1 and 64"},
		{[]string{"vm", "run", "--memory", "-1G", "--", "true"}, "--memory"},
		{[]string{"vm", "run", "--disk-size", "lots", "--", "true"}, "--disk-size"},
		{[]string{"vm", "run", "--dry-run", "-d", "."}, "--dry-run creates nothing"},
		{[]string{"vm", "run", "--apply", "--", "true"}, "give the PATH"},
		{[]string{"vm", "run", "--apply", "-d", "."}, "banger vm workspace apply NAME"},
		{[]string{"vm", "run", "--no-such-flag"}, "unknown flag"},
		{[]string{"vm", "exec", "dev"}, "no command"},
		{[]string{"vm", "exec", "dev", "ls", "--", "x"}, "put the command after `--`"},
		{[]string{"vm", "exec", "-t", "-T", "dev", "--", "ls"}, "contradict"},
		{[]string{"vm", "exec", "--guest-path", "rel", "dev", "--", "ls"}, "must be absolute"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			stdout, stderr, code := runMain(t, tc.args...)
			if code != exitBanger {
				t.Errorf("exit status %d, want %d (stderr %q)", code, exitBanger, stderr)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("stderr %q lacks %q", stderr, tc.want)
			}
			if stdout != "" {
				t.Errorf("stdout %q, want nothing", stdout)
			}
			if strings.Contains(stderr, "goroutine") || strings.Contains(stderr, "panic") {
				t.Errorf("stack trace on stderr: %s", stderr)
			}
		})
	}
}

func TestVMSSHAndWorkspaceArgs(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"vm", "ssh", "dev", "uptime"}, 1, "after `--`"},
		{[]string{"vm", "ssh", "dev", "--", "-L"}, 1, "needs a value"},
		{[]string{"vm", "workspace", "prepare", "dev"}, 1, "accepts 2 arg(s)"},
		{[]string{"vm", "workspace", "prepare", "dev", ".", "--from", "v1", "--include-untracked"}, 1, "drop --include-untracked"},
		{[]string{"vm", "workspace", "prepare", "dev", ".", "--guest-path", "/"}, 1, "pick a directory"},
		{[]string{"vm", "workspace", "export", "dev", "--guest-path", "a/b"}, 1, "must be absolute"},
		{[]string{"vm", "workspace", "apply"}, 1, "accepts between 1 and 2 arg"},
		{[]string{"vm", "workspace", "apply", "--guest-path", "rel", "dev"}, 1, "must be absolute"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			_, stderr, code := runMain(t, tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d stderr %q; want exit %d and %q", code, stderr, tc.code, tc.want)
			}
		})
	}
}

func TestParseRunArgs(t *testing.T) {
	r, err := parseRunArgs([]string{"./repo", "make", "test"}, 1)
	if err != nil || r.path != "./repo" || strings.Join(r.argv, " ") != "make test" {
		t.Fatalf("%+v %v", r, err)
	}
	r, err = parseRunArgs([]string{"./repo"}, -1)
	if err != nil || r.path != "./repo" || r.argv != nil {
		t.Fatalf("%+v %v", r, err)
	}
	r, err = parseRunArgs([]string{"true"}, 0)
	if err != nil || r.path != "" || len(r.argv) != 1 {
		t.Fatalf("%+v %v", r, err)
	}
	r, err = parseRunArgs(nil, -1)
	if err != nil || r.path != "" || r.argv != nil {
		t.Fatalf("%+v %v", r, err)
	}
}

func TestSplitSSHArgs(t *testing.T) {
	for _, tc := range []struct {
		in         string
		opts, cmnd string
	}{
		{"", "", ""},
		{"uptime", "", "uptime"},
		{"-L 8080:localhost:80", "-L 8080:localhost:80", ""},
		{"-L8080:localhost:80 -A uname -a", "-L8080:localhost:80 -A", "uname -a"},
		{"-vt -o LogLevel=DEBUG htop", "-vt -o LogLevel=DEBUG", "htop"},
		{"-tp 22 -- -x", "-tp 22", "-x"},
	} {
		opts, cmd, err := splitSSHArgs(strings.Fields(tc.in))
		if err != nil || strings.Join(opts, " ") != tc.opts || strings.Join(cmd, " ") != tc.cmnd {
			t.Errorf("%q: opts %q cmd %q err %v; want %q %q", tc.in, opts, cmd, err, tc.opts, tc.cmnd)
		}
	}
}

func TestExecDir(t *testing.T) {
	vm := &model.VM{Name: "dev"}
	if got := execDir(vm, ""); got != "/root" {
		t.Errorf("no workspace: %q", got)
	}
	vm.Workspace = &model.Workspace{GuestPath: "/root/repo", Subdir: "examples/hello"}
	if got := execDir(vm, ""); got != "/root/repo/examples/hello" {
		t.Errorf("subdir workspace: %q", got)
	}
	if got := execDir(vm, "/srv"); got != "/srv" {
		t.Errorf("--guest-path: %q", got)
	}
}

func TestCommandLine(t *testing.T) {
	if got := commandLine([]string{"make test && echo ok"}); got != "make test && echo ok" {
		t.Errorf("one argument is a shell line: %q", got)
	}
	if got := commandLine([]string{"echo", "it's", "$HOME", "a b", "plain-1.0"}); got != `echo 'it'\''s' '$HOME' 'a b' plain-1.0` {
		t.Errorf("argv: %q", got)
	}
}

// TestRemoteScript runs the guest-side wrapper with the host's sh: it
// reports its pid (its process group) first on stderr, changes directory,
// keeps arguments intact and exits with the command's status.
func TestRemoteScript(t *testing.T) {
	testreq.Tools(t, "sh")
	dir := t.TempDir()
	for _, tc := range []struct {
		argv   []string
		stdout string
		status int
	}{
		{[]string{"pwd"}, dir + "\n", 0},
		{[]string{"printf", "%s|", "a b", "it's", "$HOME", ""}, "a b|it's|$HOME||", 0},
		{[]string{"echo out; echo err >&2; exit 7"}, "out\n", 7},
		{[]string{"kill -TERM $$"}, "", 128 + 15},
	} {
		cmd := exec.Command("sh", "-c", remoteScript(dir, tc.argv, true))
		cmd.Env = append(os.Environ(), "HOME="+dir)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		status := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			status = ee.ExitCode()
			if status == -1 {
				status = 128 + 15 // killed by the signal itself
			}
		} else if err != nil {
			t.Fatal(err)
		}
		if out.String() != tc.stdout || status != tc.status {
			t.Errorf("%q: stdout %q status %d; want %q %d (stderr %q)", tc.argv, out.String(), status, tc.stdout, tc.status, errb.String())
		}
		var filtered bytes.Buffer
		f := &pgidFilter{w: &filtered}
		for _, b := range errb.Bytes() { // byte by byte: the marker may arrive split
			_, _ = f.Write([]byte{b})
		}
		f.Flush()
		if f.PGID() <= 1 {
			t.Errorf("%q: no pgid marker in stderr %q", tc.argv, errb.String())
		}
		if strings.Contains(filtered.String(), "banger-pgid") {
			t.Errorf("%q: marker not removed: %q", tc.argv, filtered.String())
		}
		if tc.status == 7 && filtered.String() != "err\n" {
			t.Errorf("stderr after filtering: %q", filtered.String())
		}
	}
	// A missing directory fails before the command runs.
	cmd := exec.Command("sh", "-c", remoteScript(filepath.Join(dir, "missing"), []string{"echo ran"}, false))
	out, err := cmd.CombinedOutput()
	if err == nil || strings.Contains(string(out), "ran") || !strings.Contains(string(out), "cannot enter") {
		t.Errorf("missing dir: %v %q", err, out)
	}
}

func TestPGIDFilterPassesOtherOutput(t *testing.T) {
	var out bytes.Buffer
	f := &pgidFilter{w: &out}
	_, _ = f.Write([]byte("motd line\n"))
	_, _ = f.Write([]byte(pgidMarker + "4242\x1e\nhello "))
	_, _ = f.Write([]byte("world\n\x1e not a marker\n"))
	f.Flush()
	if f.PGID() != 4242 || out.String() != "motd line\nhello world\n\x1e not a marker\n" {
		t.Fatalf("pgid %d out %q", f.PGID(), out.String())
	}
	// Without a marker everything passes through (after at most 64 KiB).
	out.Reset()
	f = &pgidFilter{w: &out}
	big := bytes.Repeat([]byte("x"), 70<<10)
	_, _ = f.Write(big)
	_, _ = f.Write([]byte("\x1eban"))
	f.Flush()
	if out.Len() != len(big)+4 || f.PGID() != 0 {
		t.Fatalf("passthrough: %d bytes, pgid %d", out.Len(), f.PGID())
	}
}

func TestExitStatus(t *testing.T) {
	if s, err := exitStatus(nil); s != 0 || err != nil {
		t.Fatal(s, err)
	}
	if _, err := exitStatus(&ssh.ExitMissingError{}); err == nil {
		t.Fatal("missing exit status accepted")
	}
	if _, err := exitStatus(errors.New("boom")); err == nil {
		t.Fatal("transport error accepted")
	}
}

func FuzzSplitSSHArgs(f *testing.F) {
	f.Add("-L 1:a:2 -A uname -a")
	f.Add("-o")
	f.Add("-- -x")
	f.Fuzz(func(t *testing.T, s string) {
		args := strings.Fields(s)
		opts, cmd, err := splitSSHArgs(args)
		if err != nil {
			return
		}
		// Nothing is lost or invented, except one "--" separator.
		n := len(opts) + len(cmd)
		if n != len(args) && n != len(args)-1 {
			t.Fatalf("%q -> %q %q", args, opts, cmd)
		}
	})
}

func TestTerminalSafeWriter(t *testing.T) {
	var b strings.Builder
	w := &terminalSafeWriter{w: &b}
	in := "diff --git a/x b/x\n+ok\ttab\n+\x1b]0;pwned\x07\x1b[2J\r\x7f ünïcødé\n"
	if n, err := w.Write([]byte(in)); err != nil || n != len(in) {
		t.Fatalf("Write = %d, %v", n, err)
	}
	want := "diff --git a/x b/x\n+ok\ttab\n+\\x1b]0;pwned\\x07\\x1b[2J\\x0d\\x7f ünïcødé\n"
	if b.String() != want {
		t.Errorf("got %q\nwant %q", b.String(), want)
	}
	if got := sanitizeLine("a\x1b[31mb"); got != `a\x1b[31mb` {
		t.Errorf("sanitizeLine = %q", got)
	}
}
