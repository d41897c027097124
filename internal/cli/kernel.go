package cli

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"time"

	"github.com/spf13/cobra"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/model"
)

func (a *app) kernelCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "kernel",
		Short: "Pull, import and manage guest kernels",
		Long: `Guest kernels live in banger's kernel store with an uncompressed vmlinux
(what Firecracker boots), the bzImage as shipped, the modules and, when the
kernel lacks built-in virtio drivers, a generated initramfs that loads them.
Each file's sha256 is recorded in a manifest.`,
		Example: `  banger kernel pull debian
  banger kernel import mykernel --vmlinux ./vmlinux
  banger kernel list`,
	}
	cmd.AddCommand(a.kernelPullCmd(), a.kernelImportCmd(), a.kernelListCmd(), a.kernelShowCmd(), a.kernelRmCmd())
	return cmd
}

func (a *app) printKernel(k *model.Kernel, asJSON bool) error {
	if asJSON {
		return printJSON(a.env.Stdout, k)
	}
	fmt.Fprintf(a.env.Stdout, "%s %s sha256:%s\n", k.Name, k.Version, shortHash(k.Files["vmlinux"]))
	return nil
}

func (a *app) kernelPullCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "pull SOURCE",
		Short: "Pull a kernel from a known source (debian)",
		Long: `Pull a guest kernel. "debian" fetches linux-image-cloud-amd64 (the
versioned package it depends on) from the Debian mirror in this host's apt
sources (or [images] mirror in config.toml), verified the way apt does it:
InRelease signature with the Debian archive keyring, then the Packages index
hash, then the .deb's SHA256. The kernel is stored as "debian".`,
		Example: "  banger kernel pull debian",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var k model.Kernel
			if err := a.callWithStages(cmd.Context(), api.MethodKernelPull, api.KernelPullParams{Source: args[0]}, &k); err != nil {
				return err
			}
			return a.printKernel(&k, asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the kernel as JSON")
	return cmd
}

func (a *app) kernelImportCmd() *cobra.Command {
	var p api.KernelImportParams
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "import NAME (--deb FILE | --vmlinux FILE [--initrd FILE] [--modules DIR])",
		Short: "Import a kernel from local files",
		Long: `Import a kernel from a Debian package (--deb) or from a kernel image
(--vmlinux: an ELF vmlinux or a bzImage, from which the vmlinux is
extracted) with an optional initrd and modules directory
(/lib/modules/<version>). Without an initrd, one is generated when the
kernel needs modules for virtio and ext4.`,
		Example: `  banger kernel import custom --vmlinux ./vmlinux
  banger kernel import bookworm --deb ./linux-image-6.1.0-28-cloud-amd64_6.1.119-1_amd64.deb
  banger kernel import k2 --vmlinux ./bzImage --modules ./lib/modules/6.1.0`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p.Name = args[0]
			if (p.Deb == "") == (p.Vmlinux == "") {
				return fmt.Errorf("give exactly one of --deb or --vmlinux")
			}
			for _, f := range []*string{&p.Deb, &p.Vmlinux, &p.Initrd, &p.ModulesDir} {
				if *f != "" {
					abs, err := filepath.Abs(*f)
					if err != nil {
						return err
					}
					*f = abs
				}
			}
			var k model.Kernel
			if err := a.callWithStages(cmd.Context(), api.MethodKernelImport, p, &k); err != nil {
				return err
			}
			return a.printKernel(&k, asJSON)
		},
	}
	cmd.Flags().StringVar(&p.Deb, "deb", "", "a linux-image .deb")
	cmd.Flags().StringVar(&p.Vmlinux, "vmlinux", "", "an ELF vmlinux or a bzImage")
	cmd.Flags().StringVar(&p.Initrd, "initrd", "", "an initrd to use as is")
	cmd.Flags().StringVar(&p.ModulesDir, "modules", "", "the kernel's /lib/modules/<version> directory")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the kernel as JSON")
	return cmd
}

func (a *app) kernelListCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List kernels",
		Long:    "List kernels with their version, source and vmlinux hash.",
		Example: `  banger kernel list
  banger kernel list --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var res api.KernelList
			if err := a.call(cmd.Context(), api.MethodKernelList, nil, &res); err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.env.Stdout, res.Kernels)
			}
			if len(res.Kernels) == 0 {
				fmt.Fprintln(a.env.Stderr, "no kernels (pull the default one with `banger kernel pull debian`)")
				return nil
			}
			now := time.Now()
			t := newTable(a.env.Stdout, "NAME", "VERSION", "VMLINUX SHA256", "INITRD", "SOURCE", "IMPORTED")
			for _, k := range res.Kernels {
				initrd := "-"
				if k.Initrd != "" {
					initrd = "yes"
				}
				t.row(k.Name, k.Version, shortHash(k.Files["vmlinux"]), initrd, truncateRunes(k.Source, 50), ago(now, k.ImportedAt))
			}
			t.flush()
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}

func (a *app) kernelShowCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "show NAME",
		Short:   "Show a kernel",
		Long:    "Show a kernel's record: version, source, files and their sha256.",
		Example: "  banger kernel show debian --json",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var k model.Kernel
			if err := a.call(cmd.Context(), api.MethodKernelShow, api.KernelName{Name: args[0]}, &k); err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.env.Stdout, k)
			}
			t := newTable(a.env.Stdout, "Name:", k.Name)
			t.row("Version:", k.Version)
			t.row("Source:", k.Source)
			t.row("Dir:", k.Dir)
			t.row("vmlinux:", k.Vmlinux)
			t.row("bzImage:", orDash(k.BzImage))
			t.row("initrd:", orDash(k.Initrd))
			t.row("Imported:", k.ImportedAt.Local().Format(time.RFC3339))
			files := make([]string, 0, len(k.Files))
			for f := range k.Files {
				files = append(files, f)
			}
			sort.Strings(files)
			for _, f := range files {
				t.row("  "+f, k.Files[f])
			}
			t.flush()
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}

func (a *app) kernelRmCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "rm NAME...",
		Aliases: []string{"delete"},
		Short:   "Remove kernels no image or VM uses",
		Long:    "Remove kernels from the store; refused while an image or VM uses the kernel.",
		Example: "  banger kernel rm custom",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, names []string) error {
			return a.eachRef(cmd.Context(), names, func(ctx context.Context, name string) (string, error) {
				if err := a.call(ctx, api.MethodKernelRemove, api.KernelName{Name: name}, nil); err != nil {
					return "", err
				}
				return name + " removed", nil
			})
		},
	}
}
