package daemon

import (
	"context"
	"fmt"
	"os"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/image"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/rpc"
)

func (d *Daemon) newImageStore() *image.Store {
	st := &image.Store{
		Dir:      d.layout.ImagesDir(),
		CacheDir: d.layout.CacheDir,
		Catalog:  d.store,
		Runner:   d.runner,
		Mirror:   d.cfg.Images.Mirror,
		// Pulled images without `ip` (most container images) configure
		// their network with it.
		Busybox: image.HostBusybox(image.HostBusyboxPaths),
	}
	if st.Busybox == "" {
		d.logger.Warn("no static busybox on this host: pulled images without `ip` get no network (install busybox-static)")
	}
	if os.Geteuid() != 0 {
		// debootstrap needs root: the root helper builds the file.
		st.Rootfs = helperRootfs{c: rpc.NewClient(d.layout.HelperSocket())}
	}
	return st
}

func (d *Daemon) registerImages() {
	s := d.srv
	s.Handle(api.MethodImageList, rpc.Typed(func(ctx context.Context, _ api.Empty) (*api.ImageList, error) {
		imgs, err := d.images.List(ctx)
		if err != nil {
			return nil, err
		}
		if imgs == nil {
			imgs = []*model.Image{}
		}
		return &api.ImageList{Images: imgs}, nil
	}))
	s.Handle(api.MethodImageShow, rpc.Typed(func(ctx context.Context, p api.ImageName) (*model.Image, error) {
		return d.images.Get(ctx, p.Name)
	}))
	s.Handle(api.MethodImageBuild, rpc.Typed(func(ctx context.Context, p api.ImageBuildParams) (*model.Image, error) {
		if p.Recipe != image.RecipeDebianBookworm {
			return nil, rpc.Errorf(rpc.CodeBadRequest, "unknown recipe %q: the only recipe is %s", p.Recipe, image.RecipeDebianBookworm)
		}
		name := p.Name
		if name == "" {
			name = p.Recipe
		}
		ctx, op := d.ops.Begin(ctx, "image.build", name)
		img, err := d.images.Build(ctx, image.BuildOptions{
			Name: p.Name, Recipe: p.Recipe, Mirror: p.Mirror, Packages: p.Packages, Variant: p.Variant,
			SizeMiB: p.SizeMiB, Kernel: p.Kernel, Replace: p.Replace,
		})
		op.End(err)
		return img, err
	}))
	s.Handle(api.MethodImagePull, rpc.Typed(func(ctx context.Context, p api.ImagePullParams) (*model.Image, error) {
		if p.Ref == "" {
			return nil, rpc.Errorf(rpc.CodeBadRequest, "no image reference given (e.g. docker.io/library/debian:bookworm)")
		}
		ctx, op := d.ops.Begin(ctx, "image.pull", p.Ref)
		img, err := d.images.Pull(ctx, p.Ref, image.PullOptions{
			Name: p.Name, SizeMiB: p.SizeMiB, Kernel: p.Kernel, Insecure: p.Insecure, Replace: p.Replace,
		})
		op.End(err)
		return img, err
	}))
	s.Handle(api.MethodImageRegister, rpc.Typed(func(ctx context.Context, p api.ImageRegisterParams) (*model.Image, error) {
		ctx, op := d.ops.Begin(ctx, "image.register", p.Name)
		img, err := d.images.Register(ctx, p.Name, p.Rootfs, p.Kernel)
		op.End(err)
		return img, err
	}))
	s.Handle(api.MethodImageDelete, rpc.Typed(func(ctx context.Context, p api.ImageName) (api.Empty, error) {
		if users, err := d.vmsUsing(ctx, func(vm *model.VM) bool { return vm.Image == p.Name }); err != nil {
			return api.Empty{}, err
		} else if len(users) > 0 {
			return api.Empty{}, rpc.Errorf(rpc.CodeInUse, "image %s is used by VM(s) %v: delete them first", p.Name, users)
		}
		if err := d.images.Delete(ctx, p.Name); err != nil {
			return api.Empty{}, err
		}
		d.removeImageTemplates(p.Name)
		return api.Empty{}, nil
	}))
	s.Handle(api.MethodImagePrune, rpc.Typed(func(ctx context.Context, p api.PruneParams) (image.PruneReport, error) {
		if n := d.ops.Running(); n > 0 {
			return image.PruneReport{}, rpc.Errorf(rpc.CodeInUse, "%d operation(s) in flight; prune the cache when they are done (`banger daemon operations`)", n)
		}
		return d.images.PruneCache(ctx, p.DryRun)
	}))
	d.registerTemplates()
}

// vmsUsing lists the names of VMs for which match is true. Standby VMs
// for which it is true are destroyed instead (they are the daemon's, made
// ahead of need: they never keep an image or kernel in use).
func (d *Daemon) vmsUsing(ctx context.Context, match func(*model.VM) bool) ([]string, error) {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return nil, fmt.Errorf("list vms: %w", err)
	}
	var names []string
	for _, vm := range vms {
		switch {
		case !match(vm):
		case vm.Runtime.Standby:
			d.dropStandby(ctx, vm.ID)
		default:
			names = append(names, vm.Name)
		}
	}
	return names, nil
}
