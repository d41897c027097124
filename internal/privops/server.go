package privops

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"syscall"
	"time"

	"github.com/bangerdev/banger/internal/rpc"
)

// RPC method names of the root helper. Each Ops method M is served as
// "privops.M".
const (
	MethodPing               = "privops.Ping"
	MethodEnsureBridge       = "privops.EnsureBridge"
	MethodDeleteBridge       = "privops.DeleteBridge"
	MethodCreateTap          = "privops.CreateTap"
	MethodDeleteTap          = "privops.DeleteTap"
	MethodEnsureVMNet        = "privops.EnsureVMNet"
	MethodClearVMNet         = "privops.ClearVMNet"
	MethodSetResolverRouting = "privops.SetResolverRouting"
	MethodAttachLoop         = "privops.AttachLoop"
	MethodDetachLoop         = "privops.DetachLoop"
	MethodCreateSnapshot     = "privops.CreateSnapshot"
	MethodRemoveSnapshot     = "privops.RemoveSnapshot"
	MethodLaunchVMM          = "privops.LaunchVMM"
	MethodSignalVMM          = "privops.SignalVMM"
	MethodChownPath          = "privops.ChownPath"
	MethodPrepareJail        = "privops.PrepareJail"
	MethodRemoveJail         = "privops.RemoveJail"
)

// Wire types of the methods whose arguments are not a single spec.
type (
	nameParams struct {
		Name string `json:"name"`
	}
	deviceParams struct {
		Device string `json:"device"`
	}
	deviceResult struct {
		Device string `json:"device"`
	}
	pidResult struct {
		PID int `json:"pid"`
	}
	signalParams struct {
		Identity ProcessIdentity `json:"identity"`
		Signal   int             `json:"signal"`
	}
	chrootResult struct {
		Chroot string `json:"chroot"`
	}
	chownParams struct {
		Path string `json:"path"`
		UID  int    `json:"uid"`
		GID  int    `json:"gid"`
	}
)

// HelperInfo is the root helper's answer to Ping.
type HelperInfo struct {
	Version string `json:"version"`
	Commit  string `json:"commit"`
	PID     int    `json:"pid"`
}

// ServerConfig configures the root helper's RPC server.
type ServerConfig struct {
	Policy
	// AllowedUIDs may call the helper; empty means only Policy.OwnerUID.
	AllowedUIDs []uint32
	Logger      *slog.Logger
	// Version and Commit of the helper binary (Ping, logs).
	Version, Commit string
}

// NewServer returns an RPC server exposing impl as the root helper: one
// method per Ops method (see the Method constants) plus MethodPing. Every
// argument is checked against cfg.Policy before impl sees it; refusals
// answer bad_request. Errors of impl are answered with their codes:
// ErrInvalidArgument -> bad_request, ErrNotSupported -> not_supported,
// model sentinels as rpc.CodeOf maps them, anything else operation_failed.
// Limits of the root helper's server (see NewServer).
const (
	HelperMaxConns   = 32
	HelperMaxRequest = 256 << 10
)

func NewServer(impl Ops, cfg ServerConfig) (*rpc.Server, error) {
	if impl == nil {
		return nil, errors.New("root helper: no privileged-operations implementation")
	}
	if err := cfg.Policy.Check(); err != nil {
		return nil, err
	}
	allowed := slices.Clone(cfg.AllowedUIDs)
	if len(allowed) == 0 {
		allowed = []uint32{uint32(cfg.OwnerUID)}
	}
	s := rpc.NewServer(rpc.ServerOptions{
		Logger:   cfg.Logger,
		AllowUID: func(uid uint32) bool { return slices.Contains(allowed, uid) },
		Version:  cfg.Version,
		Commit:   cfg.Commit,
		// Privileged requests are small and few: a tight frame limit,
		// connection cap and read timeout keep a hostile owner from
		// pinning the helper's memory or goroutines.
		MaxConns:    HelperMaxConns,
		MaxRequest:  HelperMaxRequest,
		ReadTimeout: 10 * time.Second,
	})
	registerHelper(s, impl, &cfg)
	return s, nil
}

// registrar is where the helper's methods are registered (the rpc.Server;
// tests call the handlers directly).
type registrar interface {
	Handle(method string, h rpc.Handler)
}

// registerHelper registers every helper method: each decodes its request
// (rpc.Typed), validates it against cfg.Policy, then calls impl.
func registerHelper(s registrar, impl Ops, cfg *ServerConfig) {
	p := &cfg.Policy

	s.Handle(MethodPing, rpc.Typed(func(ctx context.Context, _ struct{}) (HelperInfo, error) {
		return HelperInfo{Version: cfg.Version, Commit: cfg.Commit, PID: os.Getpid()}, nil
	}))
	handle(s, MethodEnsureBridge, p.ValidateBridge, impl.EnsureBridge)
	handle(s, MethodDeleteBridge, func(a nameParams) error { return p.ValidateBridgeName(a.Name) },
		func(ctx context.Context, a nameParams) error { return impl.DeleteBridge(ctx, a.Name) })
	handle(s, MethodCreateTap, p.ValidateTap, impl.CreateTap)
	handle(s, MethodDeleteTap, func(a nameParams) error { return p.ValidateTapName("tap", a.Name) },
		func(ctx context.Context, a nameParams) error { return impl.DeleteTap(ctx, a.Name) })
	handle(s, MethodEnsureVMNet, p.ValidateVMNet, impl.EnsureVMNet)
	handle(s, MethodClearVMNet, p.ValidateVMNet, impl.ClearVMNet)
	handle(s, MethodSetResolverRouting, p.ValidateResolver, impl.SetResolverRouting)
	handleResult(s, MethodAttachLoop, p.ValidateLoop, func(ctx context.Context, a LoopSpec) (deviceResult, error) {
		dev, err := impl.AttachLoop(ctx, a)
		return deviceResult{Device: dev}, err
	})
	handle(s, MethodDetachLoop, func(a deviceParams) error { return p.ValidateLoopDevice("device", a.Device) },
		func(ctx context.Context, a deviceParams) error { return impl.DetachLoop(ctx, a.Device) })
	handleResult(s, MethodCreateSnapshot, p.ValidateSnapshot, func(ctx context.Context, a SnapshotSpec) (deviceResult, error) {
		dev, err := impl.CreateSnapshot(ctx, a)
		return deviceResult{Device: dev}, err
	})
	handle(s, MethodRemoveSnapshot, func(a nameParams) error { return p.ValidateDMName("name", a.Name) },
		func(ctx context.Context, a nameParams) error { return impl.RemoveSnapshot(ctx, a.Name) })
	s.Handle(MethodLaunchVMM, rpc.Typed(func(ctx context.Context, a LaunchSpec) (pidResult, error) {
		spec, err := p.ValidateLaunch(a)
		if err != nil {
			return pidResult{}, rpc.Errorf(rpc.CodeBadRequest, "%w", err)
		}
		pid, err := impl.LaunchVMM(ctx, spec)
		return pidResult{PID: pid}, implError(err)
	}))
	handle(s, MethodSignalVMM, func(a signalParams) error { return p.ValidateSignal(a.Identity, syscall.Signal(a.Signal)) },
		func(ctx context.Context, a signalParams) error {
			return impl.SignalVMM(ctx, a.Identity, syscall.Signal(a.Signal))
		})
	handle(s, MethodChownPath, func(a chownParams) error { return p.ValidateChown(a.Path, a.UID, a.GID) },
		func(ctx context.Context, a chownParams) error { return impl.ChownPath(ctx, a.Path, a.UID, a.GID) })
	handleResult(s, MethodPrepareJail, p.ValidateJail, func(ctx context.Context, a JailSpec) (chrootResult, error) {
		chroot, err := impl.PrepareJail(ctx, a)
		return chrootResult{Chroot: chroot}, err
	})
	handle(s, MethodRemoveJail, p.ValidateRemoveJail, impl.RemoveJail)
}

// handle registers a method without a result: validate, then call.
func handle[P any](s registrar, method string, validate func(P) error, call func(context.Context, P) error) {
	s.Handle(method, rpc.Typed(func(ctx context.Context, a P) (struct{}, error) {
		if err := validate(a); err != nil {
			return struct{}{}, rpc.Errorf(rpc.CodeBadRequest, "%w", err)
		}
		return struct{}{}, implError(call(ctx, a))
	}))
}

// handleResult registers a method with a result: validate, then call.
func handleResult[P, R any](s registrar, method string, validate func(P) error, call func(context.Context, P) (R, error)) {
	s.Handle(method, rpc.Typed(func(ctx context.Context, a P) (R, error) {
		if err := validate(a); err != nil {
			var zero R
			return zero, rpc.Errorf(rpc.CodeBadRequest, "%w", err)
		}
		r, err := call(ctx, a)
		return r, implError(err)
	}))
}

// implError gives the implementation's sentinel errors their codes.
func implError(err error) error {
	var re *rpc.Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &re):
		return err
	case errors.Is(err, ErrInvalidArgument):
		return rpc.Errorf(rpc.CodeBadRequest, "%w", err)
	case errors.Is(err, ErrNotSupported):
		return rpc.Errorf(rpc.CodeNotSupported, "%w", err)
	}
	return err
}

// Listen creates the root helper's socket at path (see rpc.Listen: mode
// 0600, never wider) and gives it to the owner so the owner daemon, and
// only it, can connect. Run as root.
func Listen(path string, ownerUID, ownerGID int) (net.Listener, error) {
	ln, err := rpc.Listen(path)
	if err != nil {
		return nil, err
	}
	if err := os.Lchown(path, ownerUID, ownerGID); err != nil {
		ln.Close()
		return nil, fmt.Errorf("give helper socket to uid %d: %w", ownerUID, err)
	}
	return ln, nil
}
