package cli

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/model"
)

func (a *app) imageCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Build, pull and manage root images",
		Long: `Root images are read-only ext4 filesystems that VM root disks are
copy-on-write clones of. The default image (debian-bookworm) is built locally
from the Debian mirror; any OCI/Docker image can be pulled.`,
		Example: `  banger image build debian-bookworm
  banger image pull docker.io/library/alpine:3.20
  banger image list`,
	}
	cmd.AddCommand(a.imageBuildCmd(), a.imagePullCmd(), a.imageListCmd(), a.imageShowCmd(),
		a.imageDeleteCmd(), a.imageRegisterCmd(), a.imageCacheCmd(), a.imageWarmCmd(), a.imageTemplatesCmd())
	return cmd
}

func sizeFlag(cmd *cobra.Command, flag, value string, dst *int64) error {
	if !cmd.Flags().Changed(flag) {
		return nil
	}
	n, err := model.ParseSizeMiB(value)
	if err != nil {
		return fmt.Errorf("--%s: %w", flag, err)
	}
	*dst = n
	return nil
}

func (a *app) printImage(img *model.Image, asJSON bool) error {
	if asJSON {
		return printJSON(a.env.Stdout, img)
	}
	fmt.Fprintf(a.env.Stdout, "%s %s sha256:%s\n", img.Name, humanBytes(img.SizeBytes), shortHash(img.SHA256))
	return nil
}

func shortHash(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func (a *app) imageBuildCmd() *cobra.Command {
	var p api.ImageBuildParams
	var size string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "build RECIPE",
		Short: "Build an image from a recipe (debian-bookworm)",
		Long: `Build a root image locally. The debian-bookworm recipe runs debootstrap
from the Debian mirror (default: the one in this host's apt sources) with
systemd, sshd, udev, dbus, iproute2, git, curl, make, ca-certificates and
sudo plus banger's guest pieces, and writes an ext4 with mkfs.ext4 -d (never
mounted). Needs root. Takes one to a few minutes; stages are shown live.`,
		Example: `  banger image build debian-bookworm
  banger image build debian-bookworm --name dev-tools --packages build-essential,python3
  banger image build debian-bookworm --size 8G --replace`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p.Recipe = args[0]
			if err := sizeFlag(cmd, "size", size, &p.SizeMiB); err != nil {
				return err
			}
			var img model.Image
			if err := a.callWithStages(cmd.Context(), api.MethodImageBuild, p, &img); err != nil {
				return err
			}
			return a.printImage(&img, asJSON)
		},
	}
	cmd.Flags().StringVar(&p.Name, "name", "", "image name (default: the recipe name)")
	cmd.Flags().StringVar(&p.Mirror, "mirror", "", "Debian mirror URL (default: config, then the host's apt sources)")
	cmd.Flags().StringSliceVar(&p.Packages, "packages", nil, "extra packages, comma-separated")
	cmd.Flags().StringVar(&p.Variant, "variant", "", "default, or minbase (small, for tests)")
	cmd.Flags().StringVar(&size, "size", "", "apparent image size, e.g. 4G (default 4G)")
	cmd.Flags().StringVar(&p.Kernel, "kernel", "", "default kernel recorded with the image")
	cmd.Flags().BoolVar(&p.Replace, "replace", false, "replace an existing image of that name")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the image as JSON")
	return cmd
}

func (a *app) imagePullCmd() *cobra.Command {
	var p api.ImagePullParams
	var size string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "pull REF",
		Short: "Pull an OCI/Docker image and convert it to a root image",
		Long: `Pull any OCI or Docker image (linux/amd64) with anonymous or docker-config
credentials, flatten its layers (whiteouts, hard links, symlinks, setuid bits
and ownership preserved; path traversal rejected) and build an ext4 without
mounting. Images without sshd get a first-boot step that installs it (needs
--nat on the VM).`,
		Example: `  banger image pull docker.io/library/debian:bookworm
  banger image pull ghcr.io/me/devbox:latest --name devbox
  banger image pull localhost:5000/test:1 --insecure`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p.Ref = args[0]
			if err := sizeFlag(cmd, "size", size, &p.SizeMiB); err != nil {
				return err
			}
			var img model.Image
			if err := a.callWithStages(cmd.Context(), api.MethodImagePull, p, &img); err != nil {
				return err
			}
			return a.printImage(&img, asJSON)
		},
	}
	cmd.Flags().StringVar(&p.Name, "name", "", "image name (default derived from the reference)")
	cmd.Flags().StringVar(&size, "size", "", "apparent image size (default: content x1.5 + 512M, at least 1G)")
	cmd.Flags().StringVar(&p.Kernel, "kernel", "", "default kernel recorded with the image")
	cmd.Flags().BoolVar(&p.Insecure, "insecure", false, "allow a plain-http registry")
	cmd.Flags().BoolVar(&p.Replace, "replace", false, "replace an existing image of that name")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the image as JSON")
	return cmd
}

func (a *app) imageListCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List images",
		Long:    "List root images with their size, hash, source and default kernel.",
		Example: `  banger image list
  banger image list --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var res api.ImageList
			if err := a.call(cmd.Context(), api.MethodImageList, nil, &res); err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.env.Stdout, res.Images)
			}
			if len(res.Images) == 0 {
				fmt.Fprintln(a.env.Stderr, "no images (build the default one with `banger image build debian-bookworm`)")
				return nil
			}
			now := time.Now()
			t := newTable(a.env.Stdout, "NAME", "SIZE", "SHA256", "KERNEL", "SOURCE", "CREATED")
			for _, img := range res.Images {
				t.row(img.Name, humanBytes(img.SizeBytes), shortHash(img.SHA256), orDash(img.Kernel), img.Source, ago(now, img.CreatedAt))
			}
			t.flush()
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}

func (a *app) imageShowCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "show NAME",
		Short:   "Show an image",
		Long:    "Show an image's record: file, size, sha256, source, default kernel.",
		Example: "  banger image show debian-bookworm --json",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var img model.Image
			if err := a.call(cmd.Context(), api.MethodImageShow, api.ImageName{Name: args[0]}, &img); err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.env.Stdout, img)
			}
			t := newTable(a.env.Stdout, "Name:", img.Name)
			t.row("Source:", img.Source)
			t.row("File:", img.Path)
			t.row("Size:", humanBytes(img.SizeBytes))
			t.row("SHA256:", img.SHA256)
			t.row("Kernel:", orDash(img.Kernel))
			t.row("Created:", img.CreatedAt.Local().Format(time.RFC3339))
			t.flush()
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}

func (a *app) imageDeleteCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "delete NAME...",
		Aliases: []string{"rm"},
		Short:   "Delete images",
		Long:    "Delete images that no VM uses. Cached layer blobs stay until `banger image cache prune`.",
		Example: "  banger image delete alpine-3-20",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, names []string) error {
			return a.eachRef(cmd.Context(), names, func(ctx context.Context, name string) (string, error) {
				if err := a.call(ctx, api.MethodImageDelete, api.ImageName{Name: name}, nil); err != nil {
					return "", err
				}
				return name + " deleted", nil
			})
		},
	}
}

func (a *app) imageRegisterCmd() *cobra.Command {
	var p api.ImageRegisterParams
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "register NAME --rootfs FILE",
		Short: "Register an existing ext4 file as an image",
		Long:  "Copy an existing ext4 root filesystem into the image store under NAME (checked with e2fsck).",
		Example: `  banger image register myimg --rootfs ./rootfs.ext4
  banger image register myimg --rootfs ./rootfs.ext4 --kernel debian`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p.Name = args[0]
			if p.Rootfs == "" {
				return fmt.Errorf("--rootfs is required: the ext4 file to register")
			}
			abs, err := filepath.Abs(p.Rootfs)
			if err != nil {
				return err
			}
			p.Rootfs = abs
			var img model.Image
			if err := a.callWithStages(cmd.Context(), api.MethodImageRegister, p, &img); err != nil {
				return err
			}
			return a.printImage(&img, asJSON)
		},
	}
	cmd.Flags().StringVar(&p.Rootfs, "rootfs", "", "the ext4 file")
	cmd.Flags().StringVar(&p.Kernel, "kernel", "", "default kernel for this image")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the image as JSON")
	return cmd
}

func (a *app) imageCacheCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "cache",
		Short:   "Manage the image blob cache",
		Long:    "The blob cache keeps downloaded OCI layers and debootstrap trees so repeated pulls and builds are fast.",
		Example: "  banger image cache prune --dry-run",
	}
	var dryRun, asJSON bool
	prune := &cobra.Command{
		Use:   "prune",
		Short: "Remove cached blobs no image needs",
		Long:  "Remove cached layer blobs, interrupted downloads and debootstrap trees that no existing image was made from, and print what was freed.",
		Example: `  banger image cache prune --dry-run
  banger image cache prune`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var rep struct {
				Removed    []string `json:"removed"`
				FreedBytes int64    `json:"freed_bytes"`
				DryRun     bool     `json:"dry_run"`
			}
			if err := a.call(cmd.Context(), api.MethodImagePrune, api.PruneParams{DryRun: dryRun}, &rep); err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.env.Stdout, rep)
			}
			for _, p := range rep.Removed {
				fmt.Fprintln(a.env.Stdout, p)
			}
			verb := "freed"
			if dryRun {
				verb = "would free"
			}
			fmt.Fprintf(a.env.Stdout, "%s %s in %d entries\n", verb, humanBytes(rep.FreedBytes), len(rep.Removed))
			return nil
		},
	}
	prune.Flags().BoolVar(&dryRun, "dry-run", false, "only list what would be removed")
	prune.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	cmd.AddCommand(prune)
	return cmd
}

func (a *app) imageWarmCmd() *cobra.Command {
	var p api.ImageWarmParams
	var memory string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "warm [IMAGE]",
		Short: "Make the VM template of an image now (or remove it with --rm)",
		Long: `Make the VM template of IMAGE (default: the configured default image) now:
boot a guest of the image with the configured kernel, vCPUs and memory, wait
until it is idle, then pause and save it with its disks. ` + "`vm create`" + ` and
` + "`vm run`" + ` restore VMs from it (seconds instead of a full boot) and give each
its own identity. Without warm, the template is made on first need.

A template matches one image digest, kernel, vCPU count, memory size,
guest contract, VMM driver and version; it is rebuilt when any of them
changes and removed with its image. --rm removes every template of IMAGE.
List templates with ` + "`banger image templates`" + `.`,
		Example: `  banger image warm                     # the default image
  banger image warm devbase --memory 2G # a template for 2 GiB VMs
  banger image warm --rm devbase        # remove devbase's templates`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				p.Image = args[0]
			}
			if err := sizeFlag(cmd, "memory", memory, &p.MemoryMiB); err != nil {
				return err
			}
			var res api.ImageWarmResult
			if p.Remove {
				if err := a.call(cmd.Context(), api.MethodImageWarm, p, &res); err != nil {
					return err
				}
				if asJSON {
					return printJSON(a.env.Stdout, res)
				}
				fmt.Fprintf(a.env.Stdout, "removed %d template(s)\n", res.Removed)
				return nil
			}
			if err := a.callWithStages(cmd.Context(), api.MethodImageWarm, p, &res); err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.env.Stdout, res)
			}
			t := res.Template
			if t == nil {
				return fmt.Errorf("the daemon returned no template")
			}
			verb := "template ready"
			if res.Made {
				verb = fmt.Sprintf("template made in %s", t.MakeTime.Round(100*time.Millisecond))
			}
			fmt.Fprintf(a.env.Stdout, "%s: %s (image %s, %d vCPU, %s, %s on disk)\n", verb, t.ID[:12], t.Key.Image,
				t.Key.VCPU, model.FormatMiB(t.Key.MemoryMiB), humanBytes(t.SizeBytes))
			return nil
		},
	}
	cmd.Flags().BoolVar(&p.Remove, "rm", false, "remove the image's templates instead of making one")
	cmd.Flags().IntVar(&p.VCPU, "vcpu", 0, "vCPUs of the VMs the template serves (default from config)")
	cmd.Flags().StringVar(&memory, "memory", "", "memory of the VMs the template serves, e.g. 2G (default from config)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}

func (a *app) imageTemplatesCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "templates",
		Short: "List VM templates",
		Long: `List VM templates (booted, saved guests that VMs are restored from):
image, kernel, vCPUs, memory, driver, size on disk, how long making it took,
when it was made, and how many standby VMs restored from it are ready for
the next create to claim. --json adds every key part (digests, guest
contract, VMM version).`,
		Example: `  banger image templates
  banger image templates --json | jq '.[].key'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var res api.TemplateList
			if err := a.call(cmd.Context(), api.MethodImageTemplates, nil, &res); err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.env.Stdout, res.Templates)
			}
			if len(res.Templates) == 0 {
				fmt.Fprintln(a.env.Stderr, "no templates (they are made on first need, or now with `banger image warm`)")
				return nil
			}
			now := time.Now()
			t := newTable(a.env.Stdout, "ID", "IMAGE", "KERNEL", "VCPU", "MEMORY", "DISK", "DRIVER", "SIZE", "MADE IN", "CREATED", "STANDBY")
			for _, tp := range res.Templates {
				t.row(tp.ID[:12], tp.Key.Image, orDash(tp.Key.Kernel), fmt.Sprint(tp.Key.VCPU), model.FormatMiB(tp.Key.MemoryMiB),
					model.FormatMiB(tp.Key.DiskMiB), tp.Key.Driver, humanBytes(tp.SizeBytes),
					tp.MakeTime.Round(100*time.Millisecond).String(), ago(now, tp.CreatedAt), fmt.Sprint(tp.Standby))
			}
			t.flush()
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}
