package e2e

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/bangerdev/banger/internal/model"
)

// writeFile writes data at dir/rel with mode, making parents.
func writeFile(t testing.TB, dir, rel string, data []byte, mode os.FileMode) {
	t.Helper()
	p := filepath.Join(dir, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

// fidelityRepo makes a repository with every kind of file and state the
// workspace copy must preserve: an exec bit, a symlink, an empty file, a
// 1 MiB binary, names with spaces and unicode, a nested directory, a staged
// change, an unstaged change, an untracked file and ignored files.
func fidelityRepo(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "fidelity repo")
	gitIn(t, filepath.Dir(dir), "init", "-q", "-b", "main", dir)
	writeFile(t, dir, ".gitignore", []byte("*.log\nbuild/\n"), 0o644)
	writeFile(t, dir, "run.sh", []byte("#!/bin/sh\necho run\n"), 0o755)
	if err := os.Symlink("run.sh", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "empty", nil, 0o644)
	blob := make([]byte, 1<<20)
	_, _ = rand.Read(blob)
	writeFile(t, dir, "blob.bin", blob, 0o644)
	writeFile(t, dir, "name with space.txt", []byte("spaces\n"), 0o644)
	writeFile(t, dir, "ünïcødé ✓.txt", []byte("unicode\n"), 0o600)
	writeFile(t, dir, "dir/sub/deep.txt", []byte("deep\n"), 0o644)
	writeFile(t, dir, "staged.txt", []byte("v1\n"), 0o644)
	writeFile(t, dir, "unstaged.txt", []byte("v1\n"), 0o644)
	writeFile(t, dir, "Makefile", []byte("test:\n\t@echo make-ok\n"), 0o644)
	gitIn(t, dir, "add", "-A")
	gitIn(t, dir, "commit", "-q", "-m", "fixture")
	writeFile(t, dir, "staged.txt", []byte("v2 staged\n"), 0o644)
	gitIn(t, dir, "add", "staged.txt")
	writeFile(t, dir, "unstaged.txt", []byte("v2 unstaged\n"), 0o644)
	writeFile(t, dir, "untracked.txt", []byte("untracked\n"), 0o644)
	writeFile(t, dir, "debug.log", []byte("ignored\n"), 0o644)
	writeFile(t, dir, "build/out.o", []byte("ignored too\n"), 0o644)
	return dir
}

// manifest maps "./path" to "f MODE SHA256" or "l TARGET".
type manifest map[string]string

// hostManifest lists the files under dir (not .git), skipping the paths
// for which skip returns true. With execOnly, modes are reduced to the
// exec bit (what git records).
func hostManifest(t testing.TB, dir string, execOnly bool, skip func(rel string) bool) manifest {
	t.Helper()
	m := manifest{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == ".git" && d.IsDir() {
			return filepath.SkipDir
		}
		if d.IsDir() || (skip != nil && skip(rel)) {
			return nil
		}
		key := "./" + filepath.ToSlash(rel)
		if d.Type()&fs.ModeSymlink != 0 {
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			m[key] = "l " + target
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		m[key] = fmt.Sprintf("f %s %s", modeString(fi.Mode().Perm(), execOnly), sha256Hex(data))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func modeString(perm os.FileMode, execOnly bool) string {
	if execOnly {
		if perm&0o100 != 0 {
			return "x"
		}
		return "-"
	}
	return fmt.Sprintf("%o", perm)
}

// guestManifestScript prints one line per file of the current directory
// (not .git): "f<TAB>MODE<TAB>SHA256<TAB>PATH" or "l<TAB>TARGET<TAB>PATH".
const guestManifestScript = `find . -path ./.git -prune -o \( -type f -o -type l \) -print | LC_ALL=C sort | while IFS= read -r f; do
  if [ -L "$f" ]; then printf 'l\t%s\t%s\n' "$(readlink "$f")" "$f"
  else printf 'f\t%s\t%s\t%s\n' "$(stat -c %a "$f")" "$(sha256sum < "$f" | cut -d' ' -f1)" "$f"; fi
done`

// guestManifest lists the files of the VM's workspace.
func (e *env) guestManifest(t testing.TB, vm string, execOnly bool) manifest {
	t.Helper()
	r := e.bangerT(t, "", nil, "vm", "exec", vm, "--", guestManifestScript)
	if r.code != 0 {
		t.Fatalf("guest manifest: %s", r)
	}
	m := manifest{}
	for _, l := range strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n") {
		f := strings.Split(l, "\t")
		switch {
		case len(f) == 3 && f[0] == "l":
			m[f[2]] = "l " + f[1]
		case len(f) == 4 && f[0] == "f":
			var perm os.FileMode
			_, _ = fmt.Sscanf(f[1], "%o", &perm)
			m[f[3]] = fmt.Sprintf("f %s %s", modeString(perm, execOnly), f[2])
		default:
			t.Fatalf("guest manifest line %q", l)
		}
	}
	return m
}

func diffManifests(want, got manifest) []string {
	var out []string
	for k, v := range want {
		if got[k] != v {
			out = append(out, fmt.Sprintf("%s: host %q guest %q", k, v, got[k]))
		}
	}
	for k, v := range got {
		if _, ok := want[k]; !ok {
			out = append(out, fmt.Sprintf("%s: only in the guest (%q)", k, v))
		}
	}
	sort.Strings(out)
	return out
}

// exec runs `vm exec VM -- CMD...` and returns the result.
func (e *env) exec(t testing.TB, vm string, cmd ...string) result {
	t.Helper()
	return e.bangerT(t, "", nil, append([]string{"vm", "exec", vm, "--"}, cmd...)...)
}

// mustExec runs `vm exec` and fails t unless it exits 0.
func (e *env) mustExec(t testing.TB, vm string, cmd ...string) string {
	t.Helper()
	r := e.exec(t, vm, cmd...)
	if r.code != 0 {
		t.Fatalf("vm exec %s -- %s: %s", vm, strings.Join(cmd, " "), r)
	}
	return r.stdout
}

// TestE2EVMRunWorkspace boots ONE VM with `vm run -d` and checks against it:
// workspace fidelity with and without --include-untracked, exit status
// propagation, separate ordered streams, 10 MB of output, stdin, Ctrl-C
// forwarding, a pty session, export round trip, the dirty-HEAD warning and
// --auto-prepare, submodule and non-repository refusal, --dry-run, and the
// refusal on a stopped VM.
func TestE2EVMRunWorkspace(t *testing.T) {
	e := newRunEnv(t, envOptions{TapPool: 1})
	repo := fidelityRepo(t)
	start := time.Now()

	// vm run -d: create, start, copy, return; the name on stdout.
	r := e.bangerT(t, repo, nil, "vm", "run", "-d", "--name", "ws", "--image", devImageName, ".")
	if r.code != 0 || r.stdout != "ws\n" {
		t.Fatalf("vm run -d: %s", r)
	}
	t.Logf("vm run -d: %s", time.Since(start).Round(time.Millisecond))
	for _, want := range []string{"image:", devImageName, "1 untracked file(s) not copied", "banger vm exec ws -- CMD", "runs in:"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("vm run -d stderr lacks %q:\n%s", want, r.stderr)
		}
	}
	vm := e.show("ws")
	if vm.State != model.StateRunning || vm.Workspace == nil || vm.Workspace.GuestPath != "/root/repo" ||
		vm.Workspace.HeadCommit != strings.TrimSpace(gitIn(t, repo, "rev-parse", "HEAD")) {
		t.Fatalf("after vm run -d: %+v workspace %+v", vm, vm.Workspace)
	}
	realRepo, _ := filepath.EvalSymlinks(repo)
	if vm.Workspace.HostPath != realRepo {
		t.Errorf("recorded host path %q, want %q", vm.Workspace.HostPath, realRepo)
	}

	t.Run("fidelity", func(t *testing.T) {
		ignored := func(rel string) bool { return strings.HasSuffix(rel, ".log") || strings.HasPrefix(rel, "build") }
		want := hostManifest(t, repo, false, func(rel string) bool { return ignored(rel) || rel == "untracked.txt" })
		if d := diffManifests(want, e.guestManifest(t, "ws", false)); len(d) > 0 {
			t.Errorf("without --include-untracked, host and guest differ:\n  %s", strings.Join(d, "\n  "))
		}
		// git sees the same state: staged vs unstaged kept apart.
		for _, args := range [][]string{{"diff", "--cached", "--name-only"}, {"diff", "--name-only"}, {"log", "--format=%H%x09%s"}} {
			host := gitIn(t, repo, args...)
			guest := e.mustExec(t, "ws", "git "+strings.Join(args, " "))
			if host != guest {
				t.Errorf("git %v: host %q guest %q", args, host, guest)
			}
		}
		// Re-sync with untracked files: prepare replaces banger's own workspace.
		out := e.mustT(t, "vm", "workspace", "prepare", "ws", repo, "--include-untracked")
		if !strings.Contains(out, "re-synced") {
			t.Errorf("prepare again: %q", out)
		}
		want = hostManifest(t, repo, false, ignored)
		if d := diffManifests(want, e.guestManifest(t, "ws", false)); len(d) > 0 {
			t.Errorf("with --include-untracked, host and guest differ:\n  %s", strings.Join(d, "\n  "))
		}
		host := gitIn(t, repo, "status", "--porcelain")
		if guest := e.mustExec(t, "ws", "git status --porcelain"); guest != host {
			t.Errorf("git status: host %q guest %q", host, guest)
		}
		// Both copies went through the agent's own install (no script):
		// the daemon logs each copy and how it was made.
		logData, _ := os.ReadFile(filepath.Join(e.dir, "bangerd.log"))
		if n := strings.Count(string(logData), `"msg":"workspace prepared","vm":"ws"`); n != 2 {
			t.Errorf("%d workspace copies logged, want 2", n)
		}
		if n := strings.Count(string(logData), `"native":true`); n != 2 {
			t.Errorf("%d native workspace installs logged, want 2 (the agent's workspace-install builtin)", n)
		}
	})

	t.Run("exit-status", func(t *testing.T) {
		for _, tc := range []struct {
			cmd  string
			want int
		}{
			{"exit 0", 0}, {"exit 1", 1}, {"exit 2", 2}, {"no-such-command-xyz", 127}, {"exit 255", 255},
			{"kill -TERM $$", 128 + 15},        // the shell itself killed
			{"sh -c 'kill -KILL $$'", 128 + 9}, // a child killed
		} {
			if r := e.exec(t, "ws", tc.cmd); r.code != tc.want {
				t.Errorf("%q: %s; want exit %d", tc.cmd, r, tc.want)
			}
		}
		// Several words are argv, quoted for the guest shell.
		if r := e.exec(t, "ws", "printf", "%s|", "a b", "$HOME", "it's"); r.code != 0 || r.stdout != "a b|$HOME|it's|" {
			t.Errorf("argv quoting: %s", r)
		}
		if got := strings.TrimSpace(e.mustExec(t, "ws", "pwd")); got != "/root/repo" {
			t.Errorf("exec runs in %q, want /root/repo", got)
		}
	})

	t.Run("streams", func(t *testing.T) {
		r := e.exec(t, "ws", `i=1; while [ $i -le 300 ]; do echo out$i; echo err$i >&2; i=$((i+1)); done`)
		var wantOut, wantErr strings.Builder
		for i := 1; i <= 300; i++ {
			fmt.Fprintf(&wantOut, "out%d\n", i)
			fmt.Fprintf(&wantErr, "err%d\n", i)
		}
		if r.code != 0 || r.stdout != wantOut.String() || r.stderr != wantErr.String() {
			t.Errorf("streams mixed or reordered: %s", r)
		}
		// 10 MB of binary output arrives intact.
		r = e.exec(t, "ws", "head -c 10485760 /dev/urandom > /tmp/big && sha256sum < /tmp/big | cut -d' ' -f1 >&2 && cat /tmp/big")
		if r.code != 0 || len(r.stdout) != 10<<20 || sha256Hex([]byte(r.stdout)) != strings.TrimSpace(r.stderr) {
			t.Errorf("10 MB output: exit %d, %d bytes, hash %s, guest hash %q", r.code, len(r.stdout), sha256Hex([]byte(r.stdout)), r.stderr)
		}
		t.Logf("10 MB output in %s", r.took.Round(time.Millisecond))
		// stdin is passed through.
		in := bytes.Repeat([]byte("stdin data\n"), 10000)
		r = e.bangerT(t, "", in, "vm", "exec", "ws", "--", "sha256sum | cut -d' ' -f1")
		if r.code != 0 || strings.TrimSpace(r.stdout) != sha256Hex(in) {
			t.Errorf("stdin: %s", r)
		}
	})

	t.Run("agent-path", func(t *testing.T) {
		// Without a pty, commands go through the daemon and the guest
		// agent (vm.exec), not ssh: stdin in, streams apart, the status
		// out; BANGER_EXEC_VIA=ssh takes the ssh path, with the same
		// results and the same login environment.
		in := []byte("stdin through the agent\n")
		script := `cat; echo "to-stderr $(pwd)" >&2; exit 4`
		agent := e.bangerT(t, "", in, "--log-level", "debug", "vm", "exec", "ws", "--", script)
		if agent.code != 4 || agent.stdout != string(in) || !strings.Contains(agent.stderr, "to-stderr /root/repo\n") ||
			!strings.Contains(agent.stderr, "through the guest agent") {
			t.Errorf("agent path: %s", agent)
		}
		ssh := e.bangerEnvT(t, []string{"BANGER_EXEC_VIA=ssh"}, "", in, "--log-level", "debug", "vm", "exec", "ws", "--", script)
		if ssh.code != 4 || ssh.stdout != string(in) || !strings.Contains(ssh.stderr, "to-stderr /root/repo\n") ||
			!strings.Contains(ssh.stderr, "over ssh") {
			t.Errorf("ssh path: %s", ssh)
		}
		t.Logf("vm exec through the agent: %s; over ssh: %s", agent.took.Round(time.Millisecond), ssh.took.Round(time.Millisecond))
		envScript := `echo "$HOME $USER $LOGNAME"; case ":$PATH:" in *:/usr/bin:*) echo path-ok;; esac; [ -n "$BASH_VERSION" ] && shopt -q login_shell && echo login-bash`
		a := e.bangerT(t, "", nil, "vm", "exec", "ws", "--", envScript)
		s := e.bangerEnvT(t, []string{"BANGER_EXEC_VIA=ssh"}, "", nil, "vm", "exec", "ws", "--", envScript)
		if a.code != 0 || a.stdout != s.stdout || !strings.Contains(a.stdout, "/root root root\npath-ok\n") {
			t.Errorf("login environment: agent %q, ssh %q", a.stdout, s.stdout)
		}
	})

	t.Run("interrupt", func(t *testing.T) {
		// Ctrl-C reaches every process of the command (here a pipeline),
		// not just the shell sshd started.
		cmd := exec.Command("ip", "netns", "exec", e.ns, filepath.Join(e.bin, "banger"), "vm", "exec", "ws", "--",
			"echo started; sleep 600 | cat; echo not-reached")
		cmd.Env = e.environ()
		stdout, _ := cmd.StdoutPipe()
		var serr bytes.Buffer
		cmd.Stderr = &serr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 8)
		if _, err := io.ReadFull(stdout, buf[:8]); err != nil || string(buf) != "started\n" {
			t.Fatalf("read %q: %v", buf, err)
		}
		time.Sleep(300 * time.Millisecond)
		t0 := time.Now()
		_ = cmd.Process.Signal(syscall.SIGINT)
		guard := time.AfterFunc(60*time.Second, func() { _ = cmd.Process.Kill() })
		defer guard.Stop()
		rest, _ := io.ReadAll(stdout)
		err := cmd.Wait()
		code := cmd.ProcessState.ExitCode()
		if err == nil || code != 130 || strings.Contains(string(rest), "not-reached") {
			t.Errorf("after Ctrl-C: exit %d (%v) stdout %q stderr %q", code, err, rest, serr.String())
		}
		t.Logf("Ctrl-C -> exit in %s", time.Since(t0).Round(time.Millisecond))
		left := e.mustExec(t, "ws", `n=0; for c in /proc/[0-9]*/comm; do [ "$(cat $c 2>/dev/null)" = sleep ] && n=$((n+1)); done; echo $n`)
		if strings.TrimSpace(left) != "0" {
			t.Errorf("%s sleep processes left in the guest after Ctrl-C", strings.TrimSpace(left))
		}
	})

	t.Run("pty", func(t *testing.T) {
		// vm exec -t gets a terminal.
		r := e.bangerT(t, "", nil, "vm", "exec", "-t", "ws", "--", "tty")
		if r.code != 0 || !strings.HasPrefix(strings.TrimSpace(r.stdout), "/dev/pts/") {
			t.Errorf("vm exec -t: %s", r)
		}
		// An interactive session through a pty: vm ssh runs the system ssh
		// with a terminal; type commands, read their output, exit.
		cmd := exec.Command("ip", "netns", "exec", e.ns, filepath.Join(e.bin, "banger"), "vm", "ssh", "ws")
		cmd.Env = append(e.environ(), "TERM=dumb")
		f, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 40, Cols: 120})
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		out := make(chan string, 1)
		go func() {
			var b bytes.Buffer
			_, _ = io.Copy(&b, f) // ends with EIO when the session closes
			out <- b.String()
		}()
		time.Sleep(2 * time.Second) // let the shell come up; input typed earlier is kept anyway
		_, _ = f.Write([]byte("cd /root/repo && echo marker-$((6*7)) && tty\n"))
		_, _ = f.Write([]byte("exit 3\n"))
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			t.Fatalf("interactive session did not end")
		}
		text := <-out
		if cmd.ProcessState.ExitCode() != 3 || !strings.Contains(text, "marker-42") || !strings.Contains(text, "/dev/pts/") {
			t.Errorf("interactive session: exit %d, output %q", cmd.ProcessState.ExitCode(), tail(text, 2000))
		}
	})

	t.Run("export", func(t *testing.T) {
		base := strings.TrimSpace(gitIn(t, repo, "rev-parse", "HEAD"))
		e.mustExec(t, "ws", `set -e
echo changed >> "name with space.txt"
echo new > "added file.txt"
rm dir/sub/deep.txt
chmod +x empty
printf '\000\001\377' | dd of=blob.bin bs=1 seek=1000 conv=notrunc 2>/dev/null
git add "added file.txt"`)
		statusBefore := e.mustExec(t, "ws", "git status --porcelain")
		patch := filepath.Join(t.TempDir(), "guest.patch")
		e.mustT(t, "vm", "workspace", "export", "ws", "--output", patch)
		if statusAfter := e.mustExec(t, "ws", "git status --porcelain"); statusAfter != statusBefore {
			t.Errorf("export changed the guest's index: %q -> %q", statusBefore, statusAfter)
		}
		data, err := os.ReadFile(patch)
		if err != nil || !bytes.Contains(data, []byte("GIT binary patch")) || !bytes.Contains(data, []byte("new mode 100755")) {
			t.Fatalf("patch (%v):\n%s", err, tail(string(data), 3000))
		}
		// stdout gives the same patch.
		if out := e.mustT(t, "vm", "workspace", "export", "ws"); out != string(data) {
			t.Errorf("export to stdout differs from --output (%d vs %d bytes)", len(out), len(data))
		}
		// The default patch holds only the guest's changes: `git apply`
		// succeeds on the still-dirty host tree (staged, unstaged and
		// untracked changes) and gives exactly the guest's tree.
		for _, hostOnly := range []string{"staged.txt", "unstaged.txt", "untracked.txt"} {
			if bytes.Contains(data, []byte("b/"+hostOnly)) {
				t.Errorf("the default patch repeats the host's own change to %s", hostOnly)
			}
		}
		want := e.guestManifest(t, "ws", true)
		ignored := func(rel string) bool { return strings.HasSuffix(rel, ".log") || strings.HasPrefix(rel, "build") }
		copyRepo := func(name string) string {
			dst := filepath.Join(t.TempDir(), name)
			run(t, "cp", "-a", repo, dst)
			return dst
		}
		dirty := copyRepo("dirty")
		gitIn(t, dirty, "apply", patch)
		if d := diffManifests(want, hostManifest(t, dirty, true, ignored)); len(d) > 0 {
			t.Errorf("dirty host tree + patch differs from the guest:\n  %s", strings.Join(d, "\n  "))
		}
		// --base-commit: everything since the commit, for a clean clone.
		full := filepath.Join(t.TempDir(), "full.patch")
		e.mustT(t, "vm", "workspace", "export", "ws", "--base-commit", base, "--output", full)
		clone := filepath.Join(t.TempDir(), "clone")
		gitIn(t, filepath.Dir(clone), "clone", "-q", repo, clone)
		gitIn(t, clone, "checkout", "-q", base)
		gitIn(t, clone, "apply", full)
		if d := diffManifests(want, hostManifest(t, clone, true, nil)); len(d) > 0 {
			t.Errorf("clone + --base-commit patch differs from the guest:\n  %s", strings.Join(d, "\n  "))
		}
		// vm workspace apply: the same in one step.
		applied := copyRepo("applied")
		r := e.bangerT(t, "", nil, "vm", "workspace", "apply", "ws", applied)
		if r.code != 0 || !strings.Contains(r.stderr, "applied the guest's changes") {
			t.Fatalf("workspace apply: %s", r)
		}
		if d := diffManifests(want, hostManifest(t, applied, true, ignored)); len(d) > 0 {
			t.Errorf("workspace apply differs from the guest:\n  %s", strings.Join(d, "\n  "))
		}
		// A conflicting host edit made while the VM ran: refused, host
		// untouched, the patch kept and named.
		conflict := copyRepo("conflict")
		writeFile(t, conflict, "name with space.txt", []byte("host rewrote this\n"), 0o644)
		before := hostManifest(t, conflict, false, nil)
		r = e.bangerT(t, "", nil, "vm", "workspace", "apply", "ws", conflict)
		if r.code == 0 || !strings.Contains(r.stderr, ".git/banger/patches/ws-") || !strings.Contains(r.stderr, "nothing was changed") {
			t.Fatalf("conflicting apply: %s", r)
		}
		if d := diffManifests(before, hostManifest(t, conflict, false, nil)); len(d) > 0 {
			t.Errorf("a refused apply changed the host tree:\n  %s", strings.Join(d, "\n  "))
		}
		if kept, _ := filepath.Glob(filepath.Join(conflict, ".git", "banger", "patches", "ws-*.patch")); len(kept) != 1 {
			t.Errorf("kept patches: %v", kept)
		} else if b, _ := os.ReadFile(kept[0]); !bytes.Equal(b, data) {
			t.Errorf("the kept patch differs from the export")
		}
	})

	t.Run("dirty-warning", func(t *testing.T) {
		if r := e.exec(t, "ws", "true"); r.code != 0 || strings.Contains(r.stderr, "warning") {
			t.Fatalf("exec before the host moved: %s", r)
		}
		writeFile(t, repo, "committed-later.txt", []byte("later\n"), 0o644)
		gitIn(t, repo, "add", "committed-later.txt")
		gitIn(t, repo, "commit", "-q", "-m", "host moved on")
		r := e.exec(t, "ws", "test -e committed-later.txt && echo present || echo absent")
		if r.code != 0 || strings.TrimSpace(r.stdout) != "absent" || !strings.Contains(r.stderr, "warning") || !strings.Contains(r.stderr, "moved from") {
			t.Errorf("exec after a host commit: %s", r)
		}
		r = e.bangerT(t, "", nil, "vm", "exec", "--auto-prepare", "ws", "--", "cat committed-later.txt")
		if r.code != 0 || r.stdout != "later\n" || !strings.Contains(r.stderr, "re-syncing") {
			t.Errorf("exec --auto-prepare: %s", r)
		}
		if r := e.exec(t, "ws", "true"); r.code != 0 || strings.Contains(r.stderr, "warning") {
			t.Errorf("exec after the re-sync still warns: %s", r)
		}
	})

	t.Run("refusals", func(t *testing.T) {
		// Submodules: refused by prepare and by vm run (before creating a VM).
		sub := filepath.Join(t.TempDir(), "with-sub")
		gitIn(t, filepath.Dir(sub), "init", "-q", sub)
		writeFile(t, sub, "a.txt", []byte("a\n"), 0o644)
		gitIn(t, sub, "add", "a.txt")
		gitIn(t, sub, "commit", "-q", "-m", "a")
		head := strings.TrimSpace(gitIn(t, sub, "rev-parse", "HEAD"))
		writeFile(t, sub, ".gitmodules", []byte("[submodule \"lib\"]\n\tpath = lib\n\turl = ../lib\n"), 0o644)
		gitIn(t, sub, "update-index", "--add", "--cacheinfo", "160000,"+head+",lib")
		gitIn(t, sub, "add", ".gitmodules")
		_, serr, err := e.banger("vm", "workspace", "prepare", "ws", sub)
		if err == nil || !strings.Contains(serr, "submodules") {
			t.Errorf("prepare of a repository with submodules: %v %s", err, serr)
		}
		before := len(e.list())
		if r := e.bangerT(t, sub, nil, "vm", "run", "--image", devImageName, ".", "--", "true"); r.code != 125 || !strings.Contains(r.stderr, "submodules") {
			t.Errorf("vm run of a repository with submodules: %s", r)
		}
		notRepo := t.TempDir()
		if r := e.bangerT(t, notRepo, nil, "vm", "run", ".", "--", "true"); r.code != 125 || !strings.Contains(r.stderr, "not a git repository") {
			t.Errorf("vm run outside a repository: %s", r)
		}
		if _, serr, err := e.banger("vm", "workspace", "prepare", "ws", notRepo); err == nil || !strings.Contains(serr, "not a git repository") {
			t.Errorf("prepare outside a repository: %v %s", err, serr)
		}
		// --dry-run lists the files and creates nothing.
		r := e.bangerT(t, repo, nil, "vm", "run", "--dry-run", "--include-untracked", ".", "--", "make", "test")
		if r.code != 0 || !strings.Contains(r.stdout, "name with space.txt") || !strings.Contains(r.stdout, "untracked.txt  (untracked)") ||
			strings.Contains(r.stdout, "debug.log") || !strings.Contains(r.stderr, "nothing is created") {
			t.Errorf("dry run: %s", r)
		}
		if after := len(e.list()); after != before {
			t.Errorf("refused runs and the dry run changed the VM count: %d -> %d", before, after)
		}
	})

	// A stopped VM is refused with not_running and a hint; then clean up.
	e.mustT(t, "vm", "stop", "ws")
	if r := e.exec(t, "ws", "true"); r.code != 125 || !strings.Contains(r.stderr, "not_running") || !strings.Contains(r.stderr, "banger vm start ws") {
		t.Errorf("exec on a stopped VM: %s", r)
	}
	e.mustT(t, "vm", "delete", "ws")
	e.assertNoLeaks("after delete")
	t.Logf("total %s", time.Since(start).Round(time.Millisecond))
}

// TestE2EVMRunApply: `vm run --rm --apply` on a dirty repository brings the
// command's changes (new, modified, deleted, binary, mode change) back into
// the still-dirty host tree in one command, keeping the host's own
// uncommitted changes.
func TestE2EVMRunApply(t *testing.T) {
	e := newRunEnv(t, envOptions{TapPool: 1})
	repo := fidelityRepo(t)
	r := e.bangerT(t, repo, nil, "vm", "run", "--rm", "--apply", "--name", "ap", "--image", devImageName, ".", "--", `set -e
echo "from the guest" >> unstaged.txt
echo new > "guest new.txt"
rm "name with space.txt"
chmod +x empty
printf '\000\001\377' | dd of=blob.bin bs=1 seek=10 conv=notrunc 2>/dev/null
exit 3`)
	if r.code != 3 || !strings.Contains(r.stderr, "applied the guest's changes") || !strings.Contains(r.stderr, "deleted VM ap") {
		t.Fatalf("vm run --rm --apply: %s", r)
	}
	if b, _ := os.ReadFile(filepath.Join(repo, "unstaged.txt")); string(b) != "v2 unstaged\nfrom the guest\n" {
		t.Errorf("unstaged.txt = %q: the host's uncommitted change and the guest's must both be there", b)
	}
	if b, _ := os.ReadFile(filepath.Join(repo, "guest new.txt")); string(b) != "new\n" {
		t.Errorf("guest new.txt = %q", b)
	}
	if _, err := os.Lstat(filepath.Join(repo, "name with space.txt")); !os.IsNotExist(err) {
		t.Errorf("name with space.txt still there: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(repo, "empty")); err != nil || fi.Mode()&0o100 == 0 {
		t.Errorf("empty: mode change not applied (%v)", err)
	}
	if b, _ := os.ReadFile(filepath.Join(repo, "blob.bin")); len(b) != 1<<20 || !bytes.Equal(b[10:13], []byte{0, 1, 0xff}) {
		t.Errorf("blob.bin: binary change not applied")
	}
	if got := gitIn(t, repo, "diff", "--cached", "--name-only"); got != "staged.txt\n" {
		t.Errorf("the host's staged changes changed: %q", got)
	}
	if b, _ := os.ReadFile(filepath.Join(repo, "untracked.txt")); string(b) != "untracked\n" {
		t.Errorf("untracked.txt = %q", b)
	}
	if vms := e.list(); len(vms) != 0 {
		t.Errorf("--rm left %d VM(s)", len(vms))
	}
	e.assertNoLeaks("after vm run --rm --apply")
}
