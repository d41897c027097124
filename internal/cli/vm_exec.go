package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"strings"

	"github.com/spf13/cobra"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/workspace"
)

// showVM returns vm.show of ref.
func (a *app) showVM(ctx context.Context, ref string) (*model.VM, error) {
	var vm model.VM
	if err := a.call(ctx, api.MethodVMShow, api.Ref{Ref: ref}, &vm); err != nil {
		return nil, err
	}
	return &vm, nil
}

// splitRefCommand splits `VM [--] CMD...` (dash is cmd.ArgsLenAtDash()).
func splitRefCommand(args []string, dash int, what string) (ref string, argv []string, err error) {
	if len(args) == 0 || dash == 0 {
		return "", nil, fmt.Errorf("name the VM first: `banger vm %s VM -- CMD`", what)
	}
	if dash > 1 {
		return "", nil, fmt.Errorf("put the command after `--`: `banger vm %s %s -- %s`", what, args[0], strings.Join(args[1:], " "))
	}
	return args[0], args[1:], nil
}

// execDir is where `vm exec` runs: --guest-path, else the recorded
// workspace (its subdirectory), else root's home.
func execDir(vm *model.VM, guestPath string) string {
	switch {
	case guestPath != "":
		return guestPath
	case vm.Workspace != nil && vm.Workspace.GuestPath != "":
		return path.Join(vm.Workspace.GuestPath, vm.Workspace.Subdir)
	}
	return "/root"
}

func (a *app) vmExecCmd() *cobra.Command {
	var guestPath string
	var autoPrepare, tty, noTTY bool
	cmd := &cobra.Command{
		Use:   "exec VM -- CMD [ARGS...]",
		Short: "Run a command in a running VM's workspace",
		Long: `Run a command in a running VM, in the workspace recorded by ` + "`vm run`" + ` or
` + "`vm workspace prepare`" + ` (its subdirectory when a subdirectory was given),
else in /root; --guest-path picks another directory. The command runs under a
login shell (bash -l when the image has bash, else sh -l); one argument is a
shell command line, several are one command and its arguments. stdout and
stderr stay separate, stdin is passed through, and banger exits with the
command's status (128+N when signal N killed it; 125 when banger itself
fails). Ctrl-C is forwarded to the command. A pty is used only when stdin
and stdout are terminals (-t forces one, -T refuses one). Without a pty the
command runs through the VM's guest agent, by way of the daemon (no ssh
handshake); with one, or when the VM has no agent, over ssh
(BANGER_EXEC_VIA=ssh forces ssh; --log-level debug says which was used).

When the host repository's HEAD moved since the workspace was prepared (you
committed or switched branches), exec warns on stderr that the guest has the
older code; --auto-prepare re-syncs the workspace first (replacing the guest
copy, and any changes made there).

A stopped VM is refused (not_running): start it with ` + "`banger vm start`" + `.`,
		Example: `  banger vm exec dev -- make test
  banger vm exec dev -- 'make build && ./bin/app --help'
  banger vm exec dev -- git status
  banger vm exec --auto-prepare dev -- go test ./...
  banger vm exec --guest-path /etc dev -- cat os-release`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			ref, argv, err := splitRefCommand(args, cmd.ArgsLenAtDash(), "exec")
			if err == nil && len(argv) == 0 {
				err = fmt.Errorf("no command: `banger vm exec %s -- CMD` (for a shell: `banger vm ssh %s`)", ref, ref)
			}
			if err == nil && tty && noTTY {
				err = errors.New("-t/--tty and -T/--no-tty contradict each other")
			}
			if err == nil && guestPath != "" {
				err = workspace.CheckGuestPath(guestPath)
			}
			if err != nil {
				return bangerFailure(err)
			}
			vm, err := a.showVM(ctx, ref)
			if err != nil {
				return bangerFailure(err)
			}
			if vm.State != model.StateRunning {
				return bangerFailure(notRunning(vm))
			}
			if err := a.checkWorkspaceFresh(ctx, vm, autoPrepare); err != nil {
				return bangerFailure(err)
			}
			status, err := a.runCommandAuto(ctx, nil, vm, execDir(vm, guestPath), argv, a.wantPTY(tty, noTTY))
			if err != nil {
				return bangerFailure(err)
			}
			if status != 0 {
				return silentExit(status)
			}
			return nil
		},
	}
	cmd.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return bangerFailure(err) })
	cmd.Flags().StringVar(&guestPath, "guest-path", "", "directory in the guest to run in (default: the workspace, else /root)")
	cmd.Flags().BoolVar(&autoPrepare, "auto-prepare", false, "re-sync the workspace first when the host repository's HEAD moved")
	cmd.Flags().BoolVarP(&tty, "tty", "t", false, "run with a pty even when stdin/stdout are not terminals")
	cmd.Flags().BoolVarP(&noTTY, "no-tty", "T", false, "never use a pty")
	return cmd
}

// checkWorkspaceFresh compares the host repository's HEAD with the one the
// workspace was prepared from: it warns when they differ, or re-syncs with
// autoPrepare. Without a recorded workspace there is nothing to compare.
func (a *app) checkWorkspaceFresh(ctx context.Context, vm *model.VM, autoPrepare bool) error {
	ws := vm.Workspace
	if ws == nil {
		if autoPrepare {
			return fmt.Errorf("--auto-prepare: VM %s has no workspace yet; copy one with `banger vm workspace prepare %s PATH`", vm.Name, vm.Name)
		}
		return nil
	}
	if _, err := os.Stat(ws.HostPath); err != nil {
		if autoPrepare {
			return fmt.Errorf("--auto-prepare: the workspace's host repository %s is gone: %w", ws.HostPath, err)
		}
		return nil
	}
	head, err := workspace.Head(ctx, hostexec.Real{}, ws.HostPath)
	if err != nil {
		fmt.Fprintf(a.env.Stderr, "banger: warning: cannot read HEAD of %s: %v\n", ws.HostPath, err)
		return nil
	}
	if ws.From != "" || head == ws.HeadCommit {
		return nil // a --from workspace is pinned to its commit
	}
	if !autoPrepare {
		fmt.Fprintf(a.env.Stderr, "banger: warning: %s moved from %s to %s since the workspace was prepared: the guest has the older code "+
			"(re-sync with `banger vm exec --auto-prepare` or `banger vm workspace prepare %s %s`)\n",
			ws.HostPath, short(ws.HeadCommit), short(head), vm.Name, path.Join(ws.HostPath, ws.Subdir))
		return nil
	}
	fmt.Fprintf(a.env.Stderr, "banger: %s moved from %s to %s: re-syncing the workspace\n", ws.HostPath, short(ws.HeadCommit), short(head))
	var res api.WorkspacePrepareResult
	err = a.callWithStages(ctx, api.MethodVMWorkspacePrepare, api.WorkspacePrepareParams{
		Ref: vm.ID, Path: path.Join(ws.HostPath, ws.Subdir), GuestPath: ws.GuestPath,
		IncludeUntracked: ws.IncludeUntracked, ReadOnly: ws.ReadOnly, Branch: ws.Branch, Replace: true,
	}, &res)
	if err != nil {
		return fmt.Errorf("re-sync the workspace: %w", err)
	}
	if res.VM != nil {
		*vm = *res.VM
	}
	return nil
}

func short(commit string) string {
	if commit == "" {
		return "(no commit)"
	}
	if len(commit) > 12 {
		return commit[:12]
	}
	return commit
}

// sshOptsWithArg are the ssh options that take an argument.
const sshOptsWithArg = "BbcDEeFIiJLlmOoPpQRSWw"

// splitSSHArgs splits `vm ssh VM -- ARGS` into ssh options (before the
// destination) and the remote command, as ssh itself parses
// `ssh [options] destination [command]`: leading arguments starting with
// '-' are options (with their values), the first other one starts the
// command.
func splitSSHArgs(args []string) (opts, command []string, err error) {
	i := 0
	for i < len(args) {
		a := args[i]
		if a == "--" {
			i++
			break
		}
		if len(a) < 2 || a[0] != '-' {
			break
		}
		opts = append(opts, a)
		i++
		for j := 1; j < len(a); j++ {
			if strings.IndexByte(sshOptsWithArg, a[j]) >= 0 {
				if j == len(a)-1 { // value is the next argument
					if i >= len(args) {
						return nil, nil, fmt.Errorf("ssh option %s needs a value", a)
					}
					opts = append(opts, args[i])
					i++
				}
				break
			}
		}
	}
	return opts, args[i:], nil
}

func (a *app) vmSSHCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ssh VM [-- SSH-ARGS...]",
		Short: "Open an ssh session to a VM (system ssh client)",
		Long: `Run the system ssh client against a running VM as root, with banger's
managed key and its own known_hosts (strict host key checking: the key is
pinned when the VM is created). Without arguments it opens a login shell.
Arguments after ` + "`--`" + ` are passed to ssh as it parses them: leading options
(-L 8080:localhost:8080, -A, -v, ...), then an optional remote command.
banger exits with ssh's status (the remote command's, 255 when ssh failed).
For commands in the workspace, ` + "`banger vm exec`" + ` is usually handier; with
` + "`banger ssh-config --install`" + `, plain ` + "`ssh NAME.vm`" + ` works too.`,
		Example: `  banger vm ssh dev
  banger vm ssh dev -- uptime
  banger vm ssh dev -- -L 8080:localhost:8080
  banger vm ssh dev -- -t htop`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dash := cmd.ArgsLenAtDash()
			if dash > 1 || (dash == -1 && len(args) > 1) {
				return fmt.Errorf("put ssh arguments after `--`: `banger vm ssh %s -- %s`", args[0], strings.Join(args[1:], " "))
			}
			if dash == 0 {
				return errors.New("name the VM first: `banger vm ssh VM -- ARGS`")
			}
			opts, command, err := splitSSHArgs(args[1:])
			if err != nil {
				return err
			}
			vm, err := a.showVM(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			status, err := a.runSystemSSH(vm, opts, command)
			if err != nil {
				return err
			}
			if status != 0 {
				return silentExit(status)
			}
			return nil
		},
	}
	return cmd
}
