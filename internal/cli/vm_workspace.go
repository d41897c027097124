package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/workspace"
)

func (a *app) vmWorkspaceCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "workspace",
		Short: "Copy a repository into a VM, or bring the guest's changes back",
		Long: `Workspaces are git repositories copied into a VM: ` + "`prepare`" + ` copies one in
(` + "`vm run`" + ` does this for you), ` + "`export`" + ` turns everything changed in the guest
into a patch that ` + "`git apply`" + ` takes on the host, and ` + "`apply`" + ` does both.`,
		Example: `  banger vm workspace prepare dev .
  banger vm workspace export dev > guest.patch && git apply guest.patch
  banger vm workspace apply dev`,
	}
	cmd.AddCommand(a.vmWorkspacePrepareCmd(), a.vmWorkspaceExportCmd(), a.vmWorkspaceApplyCmd())
	return cmd
}

func (a *app) vmWorkspacePrepareCmd() *cobra.Command {
	var p api.WorkspacePrepareParams
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "prepare VM PATH",
		Short: "Copy a git repository into a running VM",
		Long: `Copy the git repository at PATH into a running VM (default /root/repo), as
one tar stream (through the guest agent, over the VM network; ssh for a guest
without one), and record it as the VM's workspace (host path,
guest path, HEAD) for ` + "`vm exec`" + ` and ` + "`vm workspace export`" + `.

Copied: tracked files as they are in the work tree (uncommitted changes
included); untracked files that are not ignored only with
--include-untracked (banger says how many it left out); ignored files never.
A shallow .git comes along so git status, diff and log work in the guest and
show the host's staged and unstaged changes as such. Exec bits, symlinks,
empty and binary files and names with spaces or unicode are kept. A
repository with submodules is refused; PATH must be inside a git work tree
(a subdirectory copies the whole repository and ` + "`vm exec`" + ` then runs in that
subdirectory). --from REV copies a clean checkout of a commit instead of the
work tree; --branch names the branch checked out in the guest.

Preparing again replaces the workspace banger recorded at the same guest path
(a re-sync: changes made in the guest there are lost; export them first).
Any other non-empty guest directory is refused unless --replace is given.
The guest directory changes only when the whole copy arrived.`,
		Example: `  banger vm workspace prepare dev .
  banger vm workspace prepare dev ~/src/app --include-untracked
  banger vm workspace prepare dev . --readonly --guest-path /srv/app
  banger vm workspace prepare dev . --from v1.2.0 --branch release`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			abs, err := filepath.Abs(args[1])
			if err != nil {
				return err
			}
			p.Ref, p.Path = args[0], abs
			if p.GuestPath != "" {
				if err := workspace.CheckGuestPath(p.GuestPath); err != nil {
					return err
				}
			}
			if err := p.Validate(); err != nil {
				return err
			}
			var res api.WorkspacePrepareResult
			if err := a.callWithStages(cmd.Context(), api.MethodVMWorkspacePrepare, p, &res); err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.env.Stdout, res)
			}
			name := p.Ref
			if res.VM != nil {
				name = res.VM.Name
			}
			verb := "copied"
			if res.Replaced {
				verb = "re-synced"
			}
			fmt.Fprintf(a.env.Stdout, "%s %s -> %s:%s (%d files, %d symlinks, %s; %s sent in %s)\n", verb, res.Root, name, res.GuestPath,
				res.Files, res.Symlinks, humanBytes(res.FileBytes), humanBytes(res.StreamBytes),
				(time.Duration(res.ElapsedMS) * time.Millisecond).Round(10*time.Millisecond))
			if res.Subdir != "" {
				fmt.Fprintf(a.env.Stdout, "commands run in %s (`banger vm exec %s -- CMD`)\n", res.WorkDir, name)
			}
			if res.SkippedUntracked > 0 {
				fmt.Fprintf(a.env.Stderr, "banger: %d untracked file(s) not copied (add --include-untracked to copy them)\n", res.SkippedUntracked)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&p.IncludeUntracked, "include-untracked", false, "also copy untracked files that are not ignored")
	cmd.Flags().BoolVar(&p.ReadOnly, "readonly", false, "make the guest's copy read-only (git still works)")
	cmd.Flags().StringVar(&p.GuestPath, "guest-path", "", "where the repository goes in the guest (default "+workspace.DefaultGuestPath+")")
	cmd.Flags().StringVar(&p.Branch, "branch", "", "branch checked out in the guest (default: the host's current branch)")
	cmd.Flags().StringVar(&p.From, "from", "", "copy a clean checkout of this commit, branch or tag instead of the work tree")
	cmd.Flags().BoolVar(&p.Replace, "replace", false, "replace a non-empty guest directory that is not banger's workspace")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}

func (a *app) vmWorkspaceExportCmd() *cobra.Command {
	var output, base, guestPath string
	cmd := &cobra.Command{
		Use:   "export VM",
		Short: "Print a git patch of everything changed in the guest's workspace",
		Long: `Write a binary-safe git patch of what changed in a VM's workspace since it
was prepared: modified, new (not ignored), deleted and binary files and mode
changes. The patch holds only the guest's changes, so ` + "`git apply`" + ` takes it
on the host tree exactly as it was prepared — uncommitted, staged and
untracked changes included (the tree as prepared is recorded in the guest's
repository as ` + workspace.PreparedRef + `, so this survives VM stop/start and
daemon restarts). ` + "`banger vm workspace apply`" + ` does the export and the apply
in one step, refusing cleanly when the host changed in a conflicting way.

--base-commit C instead writes everything changed since commit C (which must
be in the guest's shallow history, e.g. the HEAD the workspace was prepared
from), for ` + "`git apply`" + ` in a clean checkout of C. The guest's index and work
tree are not touched.

The patch goes to stdout, or to --output F (written only when the export
succeeded). An empty patch means nothing changed.`,
		Example: `  banger vm workspace export dev -o changes.patch && git apply changes.patch
  banger vm workspace export dev > guest.patch
  banger vm workspace export dev --base-commit HEAD   # everything since the commit
`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if guestPath != "" {
				if err := workspace.CheckGuestPath(guestPath); err != nil {
					return err
				}
			}
			vm, err := a.showVM(ctx, args[0])
			if err != nil {
				return err
			}
			if vm.State != model.StateRunning {
				return notRunning(vm)
			}
			gp := guestPath
			if gp == "" {
				gp = workspace.DefaultGuestPath
				if vm.Workspace != nil && vm.Workspace.GuestPath != "" {
					gp = vm.Workspace.GuestPath
				}
			}
			// Spool to a temporary file so a failed export never leaves
			// half a patch in F or on stdout.
			dir := ""
			if output != "" && output != "-" {
				dir = filepath.Dir(output)
			}
			tmp, err := a.exportPatch(ctx, vm, gp, base, dir)
			if err != nil {
				return err
			}
			defer os.Remove(tmp.Name())
			defer tmp.Close()
			if output != "" && output != "-" {
				if err := tmp.Chmod(0o644); err != nil {
					return err
				}
				if err := tmp.Close(); err != nil {
					return err
				}
				if err := os.Rename(tmp.Name(), output); err != nil {
					return fmt.Errorf("write %s: %w", output, err)
				}
				st, _ := os.Stat(output)
				var n int64
				if st != nil {
					n = st.Size()
				}
				fmt.Fprintf(a.env.Stderr, "banger: wrote %s (%s); apply it with `git apply %s`\n", output, humanBytes(n), output)
				return nil
			}
			if _, err := tmp.Seek(0, io.SeekStart); err != nil {
				return err
			}
			if isTTY(a.env.Stdout) {
				// The patch is the guest's bytes: on a terminal, escape
				// control characters so a hostile guest cannot drive it.
				if _, err := io.Copy(&terminalSafeWriter{w: a.env.Stdout}, tmp); err != nil {
					return err
				}
				fmt.Fprintf(a.env.Stderr, "banger: control characters shown escaped; for a patch `git apply` takes, use `-o FILE` or redirect stdout\n")
				return nil
			}
			_, err = io.Copy(a.env.Stdout, tmp)
			return err
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "write the patch to this file instead of stdout")
	cmd.Flags().StringVar(&base, "base-commit", "", "diff against this commit instead of the tree as prepared (everything since the commit)")
	cmd.Flags().StringVar(&guestPath, "guest-path", "", "the workspace's directory in the guest (default: the recorded one, else "+workspace.DefaultGuestPath+")")
	return cmd
}

// exportPatch exports the workspace at guestPath of a running VM (see
// workspace.Export; base "" = the guest's changes since prepare) into a
// new temporary file in dir ("" = the temp dir), rewound to its start.
// The caller closes and removes it.
func (a *app) exportPatch(ctx context.Context, vm *model.VM, guestPath, base, dir string) (*os.File, error) {
	if dir == "" {
		dir = os.TempDir()
	}
	c, err := a.dialVM(ctx, vm)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	tmp, err := os.CreateTemp(dir, ".banger-export-*")
	if err != nil {
		return nil, fmt.Errorf("temporary file for the patch: %w", err)
	}
	fail := func(err error) (*os.File, error) {
		tmp.Close()
		os.Remove(tmp.Name())
		return nil, err
	}
	if err := workspace.Export(ctx, c, guestPath, base, tmp); err != nil {
		return fail(fmt.Errorf("export from %s:%s: %w", vm.Name, guestPath, err))
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return fail(err)
	}
	return tmp, nil
}

func (a *app) vmWorkspaceApplyCmd() *cobra.Command {
	var guestPath string
	cmd := &cobra.Command{
		Use:   "apply VM [PATH]",
		Short: "Bring the guest's changes into the host's work tree",
		Long: `Export what changed in the VM's workspace since it was prepared (see
` + "`banger vm workspace export`" + `) and apply it to the host work tree at PATH
(default: the repository the workspace was prepared from).

All or nothing: when the host tree changed since prepare in a way that
conflicts with the guest's changes, nothing is changed on the host, the patch
is kept under the repository's .git/banger/patches/ and banger says where, so
no change on either side is ever lost. Changes on the host that do not
conflict stay as they are.`,
		Example: `  banger vm run -d --name dev . && banger vm exec dev -- make fmt
  banger vm workspace apply dev
  banger vm workspace apply dev ~/src/app-copy`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if guestPath != "" {
				if err := workspace.CheckGuestPath(guestPath); err != nil {
					return err
				}
			}
			vm, err := a.showVM(ctx, args[0])
			if err != nil {
				return err
			}
			if vm.State != model.StateRunning {
				return notRunning(vm)
			}
			host := ""
			if len(args) == 2 {
				if host, err = filepath.Abs(args[1]); err != nil {
					return err
				}
			}
			return a.applyWorkspace(ctx, vm, guestPath, host)
		},
	}
	cmd.Flags().StringVar(&guestPath, "guest-path", "", "the workspace's directory in the guest (default: the recorded one, else "+workspace.DefaultGuestPath+")")
	return cmd
}

// applyWorkspace exports the guest's changes since prepare and applies
// them to host ("" = the recorded host path), all or nothing.
func (a *app) applyWorkspace(ctx context.Context, vm *model.VM, guestPath, host string) error {
	if guestPath == "" {
		guestPath = workspace.DefaultGuestPath
		if vm.Workspace != nil && vm.Workspace.GuestPath != "" {
			guestPath = vm.Workspace.GuestPath
		}
	}
	if host == "" {
		if vm.Workspace == nil || vm.Workspace.HostPath == "" {
			return fmt.Errorf("VM %s has no recorded workspace: give the host PATH to apply to (`banger vm workspace apply %s PATH`)", vm.Name, vm.Name)
		}
		host = vm.Workspace.HostPath
	}
	tmp, err := a.exportPatch(ctx, vm, guestPath, "", "")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	res, err := workspace.Apply(ctx, hostexec.Real{}, host, tmp.Name(), vm.Name, time.Now())
	if err != nil {
		return err
	}
	if res.Empty {
		fmt.Fprintf(a.env.Stderr, "banger: nothing changed in %s:%s; %s is unchanged\n", vm.Name, guestPath, host)
		return nil
	}
	fmt.Fprintf(a.env.Stderr, "banger: applied the guest's changes to %s (%d file(s)):\n", host, len(res.Files))
	for _, f := range res.Files {
		fmt.Fprintf(a.env.Stderr, "  %s\n", sanitizeLine(f))
	}
	return nil
}

// sanitizeLine makes a guest-supplied string safe to print on a terminal:
// control characters become \xNN.
func sanitizeLine(s string) string {
	var b strings.Builder
	(&terminalSafeWriter{w: &b}).Write([]byte(s))
	return b.String()
}

// terminalSafeWriter passes text through and writes every control byte
// but newline and tab (ESC, CR, BEL, DEL …) as \xNN, so bytes
// from a guest can never move the cursor, retitle the window or answer
// back through the terminal.
type terminalSafeWriter struct{ w io.Writer }

func (t *terminalSafeWriter) Write(p []byte) (int, error) {
	var b []byte
	for _, c := range p {
		if (c < 0x20 && c != '\n' && c != '\t') || c == 0x7f {
			b = fmt.Appendf(b, "\\x%02x", c)
			continue
		}
		b = append(b, c)
	}
	if _, err := t.w.Write(b); err != nil {
		return 0, err
	}
	return len(p), nil
}
