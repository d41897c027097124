package daemon

import (
	"context"
	"errors"
	"fmt"
	"path"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/progress"
	"github.com/bangerdev/banger/internal/rpc"
	"github.com/bangerdev/banger/internal/workspace"
)

// registerWorkspace registers vm.workspace.prepare.
func (d *Daemon) registerWorkspace() {
	d.srv.Handle(api.MethodVMWorkspacePrepare, rpc.Typed(d.vmWorkspacePrepare))
}

// vmWorkspacePrepare copies a host repository into a running VM: the
// workspace library inspects it with git (through the daemon's runner) and
// streams one tar over the daemon's ssh connection to the guest; the
// result is recorded in the VM's Workspace. The VM's lock is held for the
// whole copy, so a concurrent stop or delete waits for it (a client that
// hangs up cancels it).
func (d *Daemon) vmWorkspacePrepare(ctx context.Context, p api.WorkspacePrepareParams) (*api.WorkspacePrepareResult, error) {
	if d.rt.mgr == nil {
		return nil, rpc.Errorf(rpc.CodeNotSupported, "VM lifecycle unavailable: %s", d.rt.disabled)
	}
	guestPath := p.GuestPath
	if guestPath == "" {
		guestPath = workspace.DefaultGuestPath
	}
	if err := workspace.CheckGuestPath(guestPath); err != nil {
		return nil, rpc.Errorf(rpc.CodeBadRequest, "%w", err)
	}
	ctx, op := d.ops.Begin(ctx, "vm.workspace.prepare", p.Ref)
	var res *api.WorkspacePrepareResult
	_, err := d.withVM(ctx, p.Ref, func(vm *model.VM) (*model.VM, error) {
		var err error
		res, err = d.prepareLocked(ctx, vm, p, guestPath)
		return vm, err
	})
	op.End(err)
	if err != nil {
		return nil, err
	}
	return res, nil
}

// prepareLocked does the copy; the caller holds the VM's lock.
func (d *Daemon) prepareLocked(ctx context.Context, vm *model.VM, p api.WorkspacePrepareParams, guestPath string) (*api.WorkspacePrepareResult, error) {
	if vm.State != model.StateRunning {
		return nil, rpc.Errorf(rpc.CodeNotRunning, "VM %s is %s: start it with `banger vm start %s`", vm.Name, vm.State, vm.Name)
	}
	replace := p.Replace || (vm.Workspace != nil && vm.Workspace.GuestPath == guestPath)
	progress.Stage(ctx, "inspect", "reading "+p.Path+" with git")
	snap, err := workspace.Inspect(ctx, d.runner, p.Path, workspace.Options{
		IncludeUntracked: p.IncludeUntracked, From: p.From, Branch: p.Branch, ReadOnly: p.ReadOnly, Replace: replace,
	})
	if err != nil {
		return nil, workspaceError(err)
	}
	subdir, err := workspace.Subdir(snap.Root, p.Path)
	if err != nil {
		return nil, rpc.Errorf(rpc.CodeBadRequest, "%w", err)
	}
	conn, err := d.rt.mgr.Runner(ctx, vm, snap.Bytes())
	if err != nil {
		return nil, err
	}
	progress.Stage(ctx, "workspace", fmt.Sprintf("copying %d files to %s:%s", len(snap.Files()), vm.Name, guestPath))
	stats, err := workspace.Prepare(ctx, conn, snap, guestPath)
	if err != nil {
		return nil, workspaceError(err)
	}
	vm.Workspace = &model.Workspace{
		HostPath: snap.Root, GuestPath: guestPath, HeadCommit: snap.Head, Branch: snap.Branch,
		PreparedAt: d.now(), Subdir: subdir, IncludeUntracked: p.IncludeUntracked, ReadOnly: p.ReadOnly, From: p.From,
	}
	if err := d.store.UpdateVM(context.WithoutCancel(ctx), vm); err != nil {
		return nil, fmt.Errorf("record the workspace of %s: %w", vm.Name, err)
	}
	d.logger.InfoContext(ctx, "workspace prepared", "vm", vm.Name, "host", snap.Root, "guest", guestPath,
		"files", stats.Files, "stream_bytes", stats.StreamBytes, "native", stats.Native, "guest", stats.Guest, "took", stats.Elapsed, "op_id", rpc.OpIDFrom(ctx))
	return &api.WorkspacePrepareResult{
		VM: vm, Root: snap.Root, Subdir: subdir, GuestPath: guestPath, WorkDir: path.Join(guestPath, subdir),
		Head: snap.Head, Branch: snap.Branch, Replaced: replace,
		Files: stats.Files, Symlinks: stats.Symlinks, FileBytes: stats.FileBytes, StreamBytes: stats.StreamBytes,
		SkippedUntracked: snap.SkippedCount(workspace.SkipUntracked), ElapsedMS: stats.Elapsed.Milliseconds(),
	}, nil
}

// workspaceError gives workspace errors their RPC codes: problems with the
// repository or the options are the caller's (bad_request).
func workspaceError(err error) error {
	switch {
	case errors.Is(err, workspace.ErrNotGitRepo), errors.Is(err, workspace.ErrSubmodules),
		errors.Is(err, workspace.ErrUnsupportedName), errors.Is(err, workspace.ErrInvalidOptions):
		return rpc.Errorf(rpc.CodeBadRequest, "%w", err)
	}
	return err
}
