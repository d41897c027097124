package privops

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"github.com/bangerdev/banger/internal/rpc"
)

// Client implements Ops by forwarding every call to the root helper over
// its unix socket (see NewServer). The op id in ctx (rpc.OpIDFrom) travels
// with each call, so the helper's log lines carry the daemon's op id.
//
// Errors keep their meaning across the socket: a refused argument matches
// ErrInvalidArgument, an unsupported operation ErrNotSupported, a gone
// process model.ErrNotRunning, and every helper-side error is an
// *rpc.Error with its op id. A helper that is not running yields an error
// wrapping rpc.ErrUnreachable.
type Client struct {
	rpc *rpc.Client
}

var _ Ops = (*Client)(nil)

// NewClient returns a client for the root helper listening on socketPath.
func NewClient(socketPath string) *Client { return &Client{rpc: rpc.NewClient(socketPath)} }

// remoteError is a helper error that also matches this package's
// sentinels.
type remoteError struct {
	err      *rpc.Error
	sentinel error
}

func (e *remoteError) Error() string   { return e.err.Error() }
func (e *remoteError) Unwrap() []error { return []error{e.err, e.sentinel} }

func (c *Client) call(ctx context.Context, method string, params, result any) error {
	err := c.rpc.Call(ctx, method, params, result)
	if err == nil {
		return nil
	}
	var re *rpc.Error
	if errors.As(err, &re) {
		switch re.Code {
		case rpc.CodeBadRequest:
			return &remoteError{err: re, sentinel: ErrInvalidArgument}
		case rpc.CodeNotSupported:
			return &remoteError{err: re, sentinel: ErrNotSupported}
		}
		return err
	}
	if errors.Is(err, rpc.ErrUnreachable) {
		return fmt.Errorf("root helper: %w (is `bangerd root-helper` running? see `banger system status`)", err)
	}
	return fmt.Errorf("root helper: %w", err)
}

// Ping reports the helper's version; doctor uses it.
func (c *Client) Ping(ctx context.Context) (HelperInfo, error) {
	var info HelperInfo
	err := c.call(ctx, MethodPing, nil, &info)
	return info, err
}

// EnsureBridge implements Ops.
func (c *Client) EnsureBridge(ctx context.Context, spec BridgeSpec) error {
	return c.call(ctx, MethodEnsureBridge, spec, nil)
}

// DeleteBridge implements Ops.
func (c *Client) DeleteBridge(ctx context.Context, name string) error {
	return c.call(ctx, MethodDeleteBridge, nameParams{Name: name}, nil)
}

// CreateTap implements Ops.
func (c *Client) CreateTap(ctx context.Context, spec TapSpec) error {
	return c.call(ctx, MethodCreateTap, spec, nil)
}

// DeleteTap implements Ops.
func (c *Client) DeleteTap(ctx context.Context, name string) error {
	return c.call(ctx, MethodDeleteTap, nameParams{Name: name}, nil)
}

// EnsureVMNet implements Ops.
func (c *Client) EnsureVMNet(ctx context.Context, spec VMNetSpec) error {
	return c.call(ctx, MethodEnsureVMNet, spec, nil)
}

// ClearVMNet implements Ops.
func (c *Client) ClearVMNet(ctx context.Context, spec VMNetSpec) error {
	return c.call(ctx, MethodClearVMNet, spec, nil)
}

// SetResolverRouting implements Ops.
func (c *Client) SetResolverRouting(ctx context.Context, spec ResolverSpec) error {
	return c.call(ctx, MethodSetResolverRouting, spec, nil)
}

// AttachLoop implements Ops.
func (c *Client) AttachLoop(ctx context.Context, spec LoopSpec) (string, error) {
	var r deviceResult
	err := c.call(ctx, MethodAttachLoop, spec, &r)
	return r.Device, err
}

// DetachLoop implements Ops.
func (c *Client) DetachLoop(ctx context.Context, device string) error {
	return c.call(ctx, MethodDetachLoop, deviceParams{Device: device}, nil)
}

// CreateSnapshot implements Ops.
func (c *Client) CreateSnapshot(ctx context.Context, spec SnapshotSpec) (string, error) {
	var r deviceResult
	err := c.call(ctx, MethodCreateSnapshot, spec, &r)
	return r.Device, err
}

// RemoveSnapshot implements Ops.
func (c *Client) RemoveSnapshot(ctx context.Context, name string) error {
	return c.call(ctx, MethodRemoveSnapshot, nameParams{Name: name}, nil)
}

// LaunchVMM implements Ops.
func (c *Client) LaunchVMM(ctx context.Context, spec LaunchSpec) (int, error) {
	var r pidResult
	err := c.call(ctx, MethodLaunchVMM, spec, &r)
	return r.PID, err
}

// SignalVMM implements Ops.
func (c *Client) SignalVMM(ctx context.Context, id ProcessIdentity, sig syscall.Signal) error {
	return c.call(ctx, MethodSignalVMM, signalParams{Identity: id, Signal: int(sig)}, nil)
}

// ChownPath implements Ops.
func (c *Client) ChownPath(ctx context.Context, path string, uid, gid int) error {
	return c.call(ctx, MethodChownPath, chownParams{Path: path, UID: uid, GID: gid}, nil)
}

// PrepareJail implements Ops.
func (c *Client) PrepareJail(ctx context.Context, spec JailSpec) (string, error) {
	var r chrootResult
	err := c.call(ctx, MethodPrepareJail, spec, &r)
	return r.Chroot, err
}

// RemoveJail implements Ops.
func (c *Client) RemoveJail(ctx context.Context, spec JailSpec) error {
	return c.call(ctx, MethodRemoveJail, spec, nil)
}
