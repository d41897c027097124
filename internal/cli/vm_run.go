package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/progress"
	"github.com/bangerdev/banger/internal/rpc"
	"github.com/bangerdev/banger/internal/workspace"
)

// exitBanger is the exit status of `vm run` and `vm exec` when banger itself
// fails (bad flags, the VM, ssh or the workspace copy) rather than the
// command, so scripts can tell the two apart (like `docker run`).
const exitBanger = 125

// bangerFailure marks err as banger's own failure (exit status 125).
func bangerFailure(err error) error {
	if err == nil {
		return nil
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return err
	}
	return &exitError{code: exitBanger, err: err}
}

// vmWorkspaceCmds are the commands of the one-command workflow: run, exec,
// ssh and workspace.
func (a *app) vmWorkspaceCmds() []*cobra.Command {
	return []*cobra.Command{a.vmRunCmd(), a.vmExecCmd(), a.vmSSHCmd(), a.vmWorkspaceCmd()}
}

// runFlags are the flags of `vm run`.
type runFlags struct {
	create           api.VMCreateParams
	sizes            sizeFlags
	net              netFlags
	rm               bool
	detach           bool
	includeUntracked bool
	branch           string
	from             string
	dryRun           bool
	apply            bool
	tty, noTTY       bool
}

// runArgs are the positional arguments of `vm run`: an optional PATH
// before `--` and the command after it.
type runArgs struct {
	path string   // "" = no workspace
	argv []string // nil = interactive session (or -d)
}

// parseRunArgs splits `[PATH] [-- CMD ARGS...]`; dash is
// cmd.ArgsLenAtDash().
func parseRunArgs(args []string, dash int) (runArgs, error) {
	pos, rest := args, []string(nil)
	if dash >= 0 {
		pos, rest = args[:dash], args[dash:]
		if len(rest) == 0 {
			return runArgs{}, errors.New("nothing after `--`: give the command to run (`banger vm run . -- make test`), or drop the `--` for a shell")
		}
	}
	if len(pos) > 1 {
		return runArgs{}, fmt.Errorf("vm run takes at most one PATH, got %d arguments (%s): to run a command, put it after `--`, e.g. `banger vm run %s -- %s`",
			len(pos), strings.Join(pos, " "), pos[0], strings.Join(pos[1:], " "))
	}
	var r runArgs
	if len(pos) == 1 {
		if pos[0] == "" {
			return runArgs{}, errors.New("PATH is empty: pass the path of a git repository, e.g. `.`")
		}
		r.path = pos[0]
	}
	r.argv = rest
	return r, nil
}

// validate checks flag combinations; it touches nothing. create params are
// filled from the flags.
func (f *runFlags) validate(cmd *cobra.Command, r runArgs) error {
	switch {
	case f.detach && f.rm:
		return errors.New("-d/--detach leaves the VM running for later, --rm deletes it when the command or session ends: use one of them")
	case f.detach && r.argv != nil:
		return fmt.Errorf("-d/--detach does not run a command: drop `-- %s` and run it afterwards with `banger vm exec NAME -- %s`",
			strings.Join(r.argv, " "), strings.Join(r.argv, " "))
	case r.path == "" && (f.includeUntracked || f.branch != "" || f.from != ""):
		return errors.New("--include-untracked, --branch and --from apply to a workspace: give the PATH of a git repository")
	case f.from != "" && f.includeUntracked:
		return errors.New("--from copies a commit, which has no untracked files: drop --include-untracked")
	case f.tty && f.noTTY:
		return errors.New("-t/--tty and -T/--no-tty contradict each other")
	case f.dryRun && f.detach:
		return errors.New("--dry-run creates nothing, so -d/--detach has nothing to leave running: drop one of them")
	case f.apply && r.path == "":
		return errors.New("--apply brings the guest's changes back into a workspace: give the PATH of a git repository")
	case f.apply && f.detach:
		return errors.New("--apply applies the guest's changes when the command ends, -d/--detach returns at once: drop --apply and run `banger vm workspace apply NAME` later")
	}
	if f.create.Name != "" {
		if err := model.ValidateName(f.create.Name); err != nil {
			return fmt.Errorf("--name: %w", err)
		}
	}
	if err := f.net.apply(&f.create); err != nil {
		return err
	}
	return f.sizes.apply(cmd, &f.create)
}

func (a *app) vmRunCmd() *cobra.Command {
	var f runFlags
	cmd := &cobra.Command{
		Use:   "run [PATH] [-- CMD [ARGS...]]",
		Short: "Create a VM with a repository inside and run a command (or a shell) there",
		Long: `The one command: create a fresh VM, copy the git repository at PATH into
/root/repo and run CMD there, exiting with its exact status; without CMD, open
an interactive shell in /root/repo.

Steps, shown live on stderr: resolve the settings (printed first), build the
default image and pull the default kernel on first use, create and start the
VM, wait for ssh, copy the workspace (one tar stream through the guest agent, over the VM
network), then run.

The workspace: tracked files as they are in your work tree (uncommitted
changes included), plus untracked files with --include-untracked (never
ignored files), with a shallow .git so git status/diff/log work in the guest
and show your uncommitted changes as changes. Exec bits, symlinks, empty and
binary files and odd names are kept. Repositories with submodules are
refused. --from REV copies a clean checkout of a commit instead; --branch
names the branch checked out in the guest. When PATH is a subdirectory of a
repository, the whole repository is copied to /root/repo and CMD runs in the
matching subdirectory (e.g. /root/repo/examples/hello).

The command: after ` + "`--`" + `. One argument is a shell command line (` + "`-- 'make && make test'`" + `);
several are one command and its arguments, quoted for you. It runs under a
login shell (bash -l when the image has bash, else sh -l). stdout and stderr
stay separate; stdin is passed through. A pty is used only when stdin and
stdout are terminals (force with -t, refuse with -T). Ctrl-C is forwarded to
the command (a second Ctrl-C stops waiting for it). banger exits with the
command's status (0-255; a command killed by signal N gives 128+N); when
banger itself fails (bad flags, the VM, ssh, the copy) it exits 125.
Without a pty the command runs through the VM's guest agent, by way of the
daemon (no ssh handshake); with one, or when the VM has no agent, over ssh
(BANGER_EXEC_VIA=ssh forces ssh; --log-level debug says which was used).

Without CMD and with a terminal: an interactive ssh session (the system ssh
client) in /root/repo. Without CMD and without a terminal, the guest's login
shell reads commands from stdin. On exit banger prints how to reach, stop or
delete the VM.

--rm deletes the VM when the command or session ends, also after Ctrl-C; a
VM whose ssh never came up is kept (and banger says so) so that
` + "`banger vm logs NAME`" + ` can show why. -d/--detach prepares everything and
returns (it prints the VM's name on stdout). --apply brings the guest's
changes back into the host work tree when the command or session ends (see
` + "`banger vm workspace apply`" + `: all or nothing, the patch is kept on a conflict,
and the exit status stays the command's unless the apply fails). --dry-run prints the settings
and the files that would be copied, and creates nothing.`,
		Example: `  banger vm run ./myrepo -- make test          # exits with make's status
  banger vm run . -- 'go test ./... && go vet ./...'
  banger vm run --rm . -- pytest -x            # throwaway VM
  banger vm run --rm --apply . -- make fmt     # run in a VM, keep the changes
  banger vm run ./examples/hello -- make test  # runs in /root/repo/examples/hello
  banger vm run .                              # a shell in /root/repo
  banger vm run                                # a bare sandbox shell
  vm=$(banger vm run -d --name dev --nat .)    # prepare, then:
  banger vm exec dev -- make test
  banger vm run --dry-run --include-untracked .
  banger vm run --from HEAD~1 --branch bisect . -- make test`,
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := parseRunArgs(args, cmd.ArgsLenAtDash())
			if err != nil {
				return bangerFailure(err)
			}
			if err := f.validate(cmd, r); err != nil {
				return bangerFailure(err)
			}
			return a.vmRun(cmd.Context(), &f, r)
		},
	}
	cmd.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return bangerFailure(err) })
	fl := cmd.Flags()
	fl.StringVar(&f.create.Name, "name", "", "VM name (a DNS label; generated when omitted)")
	fl.StringVar(&f.create.Image, "image", "", "root image (default from config: debian-bookworm, built on first use)")
	fl.StringVar(&f.create.Kernel, "kernel", "", "kernel (default from config: debian, pulled on first use)")
	fl.BoolVar(&f.create.NAT, "nat", false, "give the VM internet access through NAT")
	fl.BoolVar(&f.create.Cold, "cold", false, "boot from scratch instead of restoring the image's template")
	fl.BoolVar(&f.create.NoStandby, "no-standby", false, "restore the template even when a standby VM is ready (see docs/templates.md)")
	f.sizes.add(cmd)
	f.net.add(cmd)
	fl.BoolVar(&f.rm, "rm", false, "delete the VM when the command or session ends (kept if ssh never came up)")
	fl.BoolVarP(&f.detach, "detach", "d", false, "prepare the VM and the workspace, then return (prints the VM name)")
	fl.BoolVar(&f.includeUntracked, "include-untracked", false, "also copy untracked files that are not ignored")
	fl.StringVar(&f.branch, "branch", "", "name of the branch checked out in the guest (default: the host's current branch)")
	fl.StringVar(&f.from, "from", "", "copy a clean checkout of this commit, branch or tag instead of the work tree")
	fl.BoolVar(&f.dryRun, "dry-run", false, "print the settings and the files that would be copied; create nothing")
	fl.BoolVar(&f.apply, "apply", false, "when the command or session ends, apply the guest's changes to the host tree (all or nothing)")
	fl.BoolVarP(&f.tty, "tty", "t", false, "run CMD with a pty even when stdin/stdout are not terminals")
	fl.BoolVarP(&f.noTTY, "no-tty", "T", false, "never use a pty for CMD (keeps stdout and stderr apart on a terminal)")
	return cmd
}

// runPlan is what `vm run` resolved before creating anything.
type runPlan struct {
	args    runArgs
	abs     string // absolute PATH ("" = no workspace)
	snap    *workspace.Snapshot
	subdir  string // PATH relative to the repository root ("" = the root)
	workDir string // where CMD / the shell runs in the guest
	params  api.VMCreateParams
	genName bool
	cfg     *config.Config // nil when the config could not be read
}

// vmRun runs `vm run` once flags are valid.
func (a *app) vmRun(ctx context.Context, f *runFlags, r runArgs) error {
	p := &runPlan{args: r, params: f.create, workDir: "/root"}
	if r.path != "" {
		if err := a.inspectRun(ctx, f, p); err != nil {
			return bangerFailure(err)
		}
	}
	if layout, err := a.layout(); err == nil {
		if cfg, err := config.Load(layout.ConfigFile(), config.DetectHost(), a.env.Getenv); err == nil {
			p.cfg = cfg
		}
	}
	if f.dryRun {
		a.printRunSpec(f, p)
		a.printDryRun(p)
		return nil
	}
	if p.params.Name == "" {
		name, err := a.freshName(ctx)
		if err != nil {
			return bangerFailure(err)
		}
		p.params.Name, p.genName = name, true
	}
	a.printRunSpec(f, p)

	// With a command that goes over ssh, the CLI's own ssh connection is
	// opened while the daemon waits for ssh (see predial). A command
	// without a pty goes through the guest agent (vm.exec) and needs no
	// ssh at all, so nothing is dialed for it (a handshake costs the guest
	// CPU); ssh is dialed afterwards only if the agent cannot run it.
	pty := a.wantPTY(f.tty, f.noTTY)
	pre := &predial{}
	defer pre.close()
	var hook func(progress.Event)
	if r.argv != nil && !a.agentExecWanted(pty) {
		hook = pre.hook(a, ctx, p.params.Name)
	}
	vm, err := a.createForRun(ctx, f, p, hook)
	if err != nil {
		return bangerFailure(err)
	}
	cleanupCtx := context.WithoutCancel(ctx)
	if p.snap != nil {
		if err := a.prepareForRun(ctx, f, p, vm); err != nil {
			a.finishRun(cleanupCtx, vm, f.rm, false)
			return bangerFailure(err)
		}
	}
	if f.detach {
		a.printReach(vm, p.workDir, true)
		fmt.Fprintln(a.env.Stdout, vm.Name)
		return nil
	}
	var status int
	if r.argv != nil {
		status, err = a.runCommandAuto(ctx, pre, vm, p.workDir, r.argv, pty)
	} else {
		status, err = a.interactiveShell(ctx, vm, p.workDir)
	}
	rm := f.rm
	if f.apply && err == nil {
		if applyErr := a.applyAfterRun(ctx, cleanupCtx, vm, p); applyErr != nil {
			a.printError(applyErr)
			if !errors.Is(applyErr, workspace.ErrApplyConflict) && rm {
				// The guest's changes exist only in the VM now: keep it.
				rm = false
				fmt.Fprintf(a.env.Stderr, "banger: VM %s was kept (not deleted despite --rm) so its changes are not lost: `banger vm workspace apply %s`\n", vm.Name, vm.Name)
			}
			if status == 0 {
				status = exitBanger
			}
		}
	}
	a.finishRun(cleanupCtx, vm, rm, r.argv == nil)
	if err != nil {
		return bangerFailure(err)
	}
	if status != 0 {
		return silentExit(status)
	}
	return nil
}

// applyAfterRun applies the guest's changes to the host tree the workspace
// came from (--apply). After Ctrl-C it applies nothing.
func (a *app) applyAfterRun(ctx, cleanupCtx context.Context, vm *model.VM, p *runPlan) error {
	if ctx.Err() != nil {
		return fmt.Errorf("--apply: interrupted, nothing applied (later: `banger vm workspace apply %s`)", vm.Name)
	}
	actx, cancel := context.WithTimeout(cleanupCtx, 10*time.Minute)
	defer cancel()
	if err := a.applyWorkspace(actx, vm, "", p.snap.Root); err != nil {
		return fmt.Errorf("--apply: %w", err)
	}
	return nil
}

// inspectRun reads the repository at PATH on the host, so a bad PATH fails
// before anything is created.
func (a *app) inspectRun(ctx context.Context, f *runFlags, p *runPlan) error {
	abs, err := filepath.Abs(p.args.path)
	if err != nil {
		return fmt.Errorf("workspace path %q: %w", p.args.path, err)
	}
	snap, err := workspace.Inspect(ctx, hostexec.Real{}, abs, workspace.Options{
		IncludeUntracked: f.includeUntracked, Branch: f.branch, From: f.from,
	})
	if err != nil {
		return err
	}
	sub, err := workspace.Subdir(snap.Root, abs)
	if err != nil {
		return err
	}
	p.abs, p.snap, p.subdir = abs, snap, sub
	p.workDir = path.Join(workspace.DefaultGuestPath, sub)
	return nil
}

// freshName generates a VM name not in use.
func (a *app) freshName(ctx context.Context) (string, error) {
	var list api.VMList
	if err := a.call(ctx, api.MethodVMList, api.VMListParams{}, &list); err != nil {
		return "", err
	}
	taken := map[string]bool{}
	for _, vm := range list.VMs {
		taken[vm.Name] = true
	}
	return model.GenerateName(func(n string) bool { return taken[n] }), nil
}

// createForRun creates and starts the VM (live stages). When the VM was
// recorded but did not come up it is kept, even with --rm, and the error
// says how to see why — except after Ctrl-C with --rm, which deletes it.
func (a *app) createForRun(ctx context.Context, f *runFlags, p *runPlan, hook func(progress.Event)) (*model.VM, error) {
	for attempt := 0; ; attempt++ {
		var vm model.VM
		err := a.callWithStagesHook(ctx, api.MethodVMCreate, p.params, &vm, hook)
		if err == nil {
			return &vm, nil
		}
		if rpc.CodeOf(err) == rpc.CodeAlreadyExists {
			if p.genName && attempt < 3 {
				name, nerr := a.freshName(ctx)
				if nerr != nil {
					return nil, nerr
				}
				p.params.Name = name
				continue
			}
			return nil, err
		}
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		var left model.VM
		if a.call(cctx, api.MethodVMShow, api.Ref{Ref: p.params.Name}, &left) != nil {
			return nil, err // nothing was recorded
		}
		if ctx.Err() != nil {
			if f.rm {
				a.deleteVM(cctx, &left)
				return nil, fmt.Errorf("interrupted while creating VM %s: %w", left.Name, err)
			}
			return nil, fmt.Errorf("interrupted while creating VM %s (kept, %s: start it with `banger vm start %s` or delete it with `banger vm delete %s`): %w",
				left.Name, left.State, left.Name, left.Name, err)
		}
		return nil, fmt.Errorf("%w\nVM %s was kept so you can see why it did not come up: `banger vm logs %s` (then `banger vm delete %s`)",
			err, left.Name, left.Name, left.Name)
	}
}

// prepareForRun copies the workspace into the new VM through the daemon.
func (a *app) prepareForRun(ctx context.Context, f *runFlags, p *runPlan, vm *model.VM) error {
	var res api.WorkspacePrepareResult
	err := a.callWithStages(ctx, api.MethodVMWorkspacePrepare, api.WorkspacePrepareParams{
		Ref: vm.ID, Path: p.abs, IncludeUntracked: f.includeUntracked, Branch: f.branch, From: f.from,
	}, &res)
	if err != nil {
		return fmt.Errorf("copy the workspace into %s: %w", vm.Name, err)
	}
	if res.VM != nil {
		*vm = *res.VM
	}
	p.workDir = res.WorkDir
	return nil
}

// finishRun deletes the VM (--rm) or tells how to reach it.
func (a *app) finishRun(ctx context.Context, vm *model.VM, rm, interactive bool) {
	if rm {
		dctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		defer cancel()
		a.deleteVM(dctx, vm)
		return
	}
	a.printReach(vm, "", interactive)
}

func (a *app) deleteVM(ctx context.Context, vm *model.VM) {
	var out model.VM
	if err := a.call(ctx, api.MethodVMDelete, api.Ref{Ref: vm.ID}, &out); err != nil {
		a.printError(fmt.Errorf("--rm: could not delete VM %s: %w (delete it with `banger vm delete %s`)", vm.Name, err, vm.Name))
		return
	}
	fmt.Fprintf(a.env.Stderr, "banger: deleted VM %s (--rm)\n", vm.Name)
}

// printReach tells how to reach, stop or delete a VM that keeps running.
func (a *app) printReach(vm *model.VM, workDir string, verbose bool) {
	w := a.env.Stderr
	fmt.Fprintf(w, "banger: VM %s is running", vm.Name)
	if vm.IP != "" {
		fmt.Fprintf(w, " (%s)", vm.IP)
	}
	fmt.Fprintln(w, ":")
	where := ""
	if workDir != "" {
		where = " in " + workDir
	}
	fmt.Fprintf(w, "  banger vm ssh %-18s # a shell\n", vm.Name)
	fmt.Fprintf(w, "  banger vm exec %s -- CMD%s # run a command%s\n", vm.Name, strings.Repeat(" ", max(0, 10-len(vm.Name))), where)
	if verbose {
		fmt.Fprintf(w, "  banger vm workspace apply %s  # bring the guest's changes back\n", vm.Name)
	}
	fmt.Fprintf(w, "  banger vm stop %-17s # stop it (keeps /root)\n", vm.Name)
	fmt.Fprintf(w, "  banger vm delete %-15s # delete it\n", vm.Name)
}

// printRunSpec prints the resolved settings on stderr.
func (a *app) printRunSpec(f *runFlags, p *runPlan) {
	w := a.env.Stderr
	cfg := p.cfg
	src := func(key string) string {
		if s := cfg.Provenance[key]; s != "" && s != config.SourceDefault {
			return s
		}
		return "default"
	}
	str := func(v, def, key string) string {
		if v != "" {
			return v + " (flag)"
		}
		if cfg == nil {
			return "(daemon default)"
		}
		return def + " (" + src(key) + ")"
	}
	title := "vm run"
	if f.dryRun {
		title = "vm run --dry-run (nothing is created)"
	}
	fmt.Fprintf(w, "banger %s\n", title)
	t := newTable(w, "  name:", func() string {
		switch {
		case p.params.Name == "":
			return "(generated when created)"
		case p.genName:
			return p.params.Name + " (generated)"
		}
		return p.params.Name
	}())
	var defImage, defKernel string
	if cfg != nil {
		defImage, defKernel = cfg.VM.Image, cfg.VM.Kernel
	}
	t.row("  image:", str(p.params.Image, defImage, "vm.image"))
	t.row("  kernel:", str(p.params.Kernel, defKernel, "vm.kernel"))
	var defVCPU, defMem, defDisk int64
	if cfg != nil {
		defVCPU, defMem, defDisk = int64(cfg.VM.VCPU), cfg.VM.MemoryMiB, cfg.VM.DiskSizeMiB
	}
	size := func(flag, def int64, format func(int64) string) string {
		if flag == 0 {
			flag = def
		}
		if flag == 0 {
			return "(daemon default)"
		}
		return format(flag)
	}
	nat := "off"
	if p.params.NAT {
		nat = "on"
		if p.params.AllowLAN {
			nat = "on, LAN allowed"
		}
	}
	t.row("  resources:", fmt.Sprintf("%s vCPU, %s memory, %s /root disk, NAT %s",
		size(int64(p.params.VCPU), defVCPU, func(n int64) string { return fmt.Sprint(n) }),
		size(p.params.MemoryMiB, defMem, model.FormatMiB),
		size(p.params.DiskSizeMiB, defDisk, model.FormatMiB), nat))
	for _, fwd := range p.params.Ports {
		t.row("  port:", fwd.String()+" (host -> guest)")
	}
	if p.snap != nil {
		s := p.snap
		what := "work tree"
		if f.from != "" {
			what = "commit " + f.from
		}
		files := s.Files()
		line := fmt.Sprintf("%s (%s, %d files, %s) -> %s", s.Root, what, len(files), humanBytes(s.Bytes()), workspace.DefaultGuestPath)
		t.row("  workspace:", line)
		if n := s.SkippedCount(workspace.SkipUntracked); n > 0 {
			t.row("", fmt.Sprintf("%d untracked file(s) not copied (add --include-untracked to copy them)", n))
		}
		if s.Branch != "" {
			t.row("  branch:", s.Branch)
		}
		if p.subdir != "" {
			t.row("  runs in:", fmt.Sprintf("%s (%s is inside the repository %s: the whole repository is copied)", p.workDir, p.args.path, s.Root))
		} else {
			t.row("  runs in:", p.workDir)
		}
	} else {
		t.row("  workspace:", "none (give a PATH to copy a repository)")
	}
	switch {
	case f.detach:
		t.row("  then:", "return and leave the VM running (-d)")
	case p.args.argv != nil:
		t.row("  command:", commandLine(p.args.argv))
	default:
		t.row("  command:", "interactive shell")
	}
	if f.rm {
		t.row("  afterwards:", "delete the VM (--rm)")
	} else if !f.detach {
		t.row("  afterwards:", "keep the VM (add --rm to delete it)")
	}
	t.flush()
}

// printDryRun lists the files that would be copied (stdout) and the ones
// that would not (stderr).
func (a *app) printDryRun(p *runPlan) {
	if p.snap == nil {
		fmt.Fprintln(a.env.Stderr, "no workspace: nothing would be copied")
		return
	}
	files := p.snap.Files()
	for _, f := range files {
		switch f.Kind {
		case workspace.Symlink:
			fmt.Fprintf(a.env.Stdout, "%-10s %10s  %s -> %s\n", "symlink", "", f.Path, f.Target)
		default:
			extra := ""
			if f.Untracked {
				extra = "  (untracked)"
			}
			fmt.Fprintf(a.env.Stdout, "%-10s %10d  %s%s\n", fs10(f.Mode), f.Size, f.Path, extra)
		}
	}
	skipped := p.snap.Skipped()
	for _, s := range skipped {
		fmt.Fprintf(a.env.Stderr, "not copied (%s): %s\n", s.Reason, s.Path)
	}
	fmt.Fprintf(a.env.Stderr, "would copy %d files (%s) and a shallow .git to %s; %d path(s) not copied\n",
		len(files), humanBytes(p.snap.Bytes()), workspace.DefaultGuestPath, len(skipped))
}

// fs10 renders permission bits like ls (-rwxr-xr-x).
func fs10(m os.FileMode) string { return (m & os.ModePerm).String() }

// commandLine renders argv the way it runs in the guest.
func commandLine(argv []string) string {
	if len(argv) == 1 {
		return argv[0]
	}
	q := make([]string, len(argv))
	for i, s := range argv {
		q[i] = hostexec.Quote(s)
	}
	return strings.Join(q, " ")
}

// wantPTY decides whether a command gets a pty: forced by -t, refused by
// -T, else only when stdin and stdout are terminals.
func (a *app) wantPTY(force, never bool) bool {
	switch {
	case force:
		return true
	case never:
		return false
	}
	in, ok := a.env.Stdin.(*os.File)
	return ok && isTTY(in) && isTTY(a.env.Stdout)
}
