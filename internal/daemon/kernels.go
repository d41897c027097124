package daemon

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/debmirror"
	"github.com/bangerdev/banger/internal/kernel"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/progress"
	"github.com/bangerdev/banger/internal/rpc"
)

// kernelService is the kernel store plus the lazily resolved Debian mirror
// (resolving it reads the host's apt sources; only pulls need it).
type kernelService struct {
	store *kernel.Store

	mirrorOnce sync.Once
	mirrorErr  error
}

func (d *Daemon) newKernelStore() *kernelService {
	return &kernelService{store: &kernel.Store{
		Dir:     d.layout.KernelsDir(),
		Catalog: d.store,
		Runner:  d.runner,
	}}
}

// mirror resolves the Debian mirror: config [images] mirror, else the
// host's apt sources.
func (d *Daemon) kernelMirror() error {
	k := d.kernels
	k.mirrorOnce.Do(func() {
		cache := filepath.Join(d.layout.CacheDir, "debs")
		if url := d.cfg.Images.Mirror; url != "" {
			k.store.Mirror = &debmirror.Mirror{URL: url, Suite: d.cfg.Images.Suite, Runner: d.runner, CacheDir: cache}
			return
		}
		m, err := debmirror.FromHost("/etc/apt", d.runner, cache)
		if err != nil {
			k.mirrorErr = fmt.Errorf("find the Debian mirror: %w (set [images] mirror in config.toml)", err)
			return
		}
		if d.cfg.Images.Suite != "" {
			m.Suite = d.cfg.Images.Suite
		}
		k.store.Mirror = m
	})
	return k.mirrorErr
}

// pullKernel pulls a kernel from a known source ("debian") as an operation.
func (d *Daemon) pullKernel(ctx context.Context, source, name string) (*model.Kernel, error) {
	if name == "" {
		name = source
	}
	if name != source {
		return nil, rpc.Errorf(rpc.CodeBadRequest, "kernel pull %s stores the kernel as %q; import it under another name with `banger kernel import`", source, source)
	}
	if err := d.kernelMirror(); err != nil {
		return nil, err
	}
	ctx, op := d.ops.Begin(ctx, "kernel.pull", name)
	k, err := d.kernels.store.Pull(ctx, source)
	op.End(err)
	return k, err
}

// ensureKernel returns the kernel called name; the default kernel
// ("debian") is pulled on first use.
func (d *Daemon) ensureKernel(ctx context.Context, name string) (*model.Kernel, error) {
	k, err := d.kernels.store.Get(ctx, name)
	if err == nil {
		return k, nil
	}
	if !errors.Is(err, model.ErrNotFound) {
		return nil, err
	}
	if name != "debian" {
		return nil, rpc.Errorf(rpc.CodeNotFound, "kernel %q does not exist: pull or import it first (see `banger kernel --help`)", name)
	}
	progress.Stage(ctx, "kernel", "pulling the default kernel (first use)")
	if err := d.kernelMirror(); err != nil {
		return nil, err
	}
	return d.kernels.store.Pull(ctx, name)
}

// registerKernels registers the kernel.* methods.
func (d *Daemon) registerKernels() {
	s := d.srv
	s.Handle(api.MethodKernelList, rpc.Typed(func(ctx context.Context, _ api.Empty) (*api.KernelList, error) {
		ks, err := d.kernels.store.List(ctx)
		if err != nil {
			return nil, err
		}
		if ks == nil {
			ks = []*model.Kernel{}
		}
		return &api.KernelList{Kernels: ks}, nil
	}))
	s.Handle(api.MethodKernelShow, rpc.Typed(func(ctx context.Context, p api.KernelName) (*model.Kernel, error) {
		return d.kernels.store.Get(ctx, p.Name)
	}))
	s.Handle(api.MethodKernelPull, rpc.Typed(func(ctx context.Context, p api.KernelPullParams) (*model.Kernel, error) {
		return d.pullKernel(ctx, p.Source, p.Name)
	}))
	s.Handle(api.MethodKernelImport, rpc.Typed(func(ctx context.Context, p api.KernelImportParams) (*model.Kernel, error) {
		if p.Name == "" {
			return nil, rpc.Errorf(rpc.CodeBadRequest, "a kernel name is required")
		}
		if (p.Deb == "") == (p.Vmlinux == "") {
			return nil, rpc.Errorf(rpc.CodeBadRequest, "give exactly one of --deb or --vmlinux")
		}
		ctx, op := d.ops.Begin(ctx, "kernel.import", p.Name)
		k, err := d.kernels.store.Import(ctx, p.Name, kernel.ImportSource{Deb: p.Deb, Vmlinux: p.Vmlinux, Initrd: p.Initrd, ModulesDir: p.ModulesDir})
		op.End(err)
		return k, err
	}))
	s.Handle(api.MethodKernelRemove, rpc.Typed(func(ctx context.Context, p api.KernelName) (api.Empty, error) {
		return api.Empty{}, d.kernels.store.Remove(ctx, p.Name, func(name string) (bool, string) {
			users, err := d.vmsUsing(ctx, func(vm *model.VM) bool { return vm.Kernel == name })
			if err != nil {
				return true, "cannot check VMs: " + err.Error()
			}
			if len(users) > 0 {
				return true, fmt.Sprintf("VM(s) %v", users)
			}
			imgs, err := d.images.List(ctx)
			if err != nil {
				return true, "cannot check images: " + err.Error()
			}
			var names []string
			for _, img := range imgs {
				if img.Kernel == name {
					names = append(names, img.Name)
				}
			}
			if len(names) > 0 {
				return true, fmt.Sprintf("image(s) %v", names)
			}
			return false, ""
		})
	}))
}
