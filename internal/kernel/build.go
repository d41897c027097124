package kernel

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/bangerdev/banger/internal/atomicfile"
	"github.com/bangerdev/banger/internal/debmirror"
	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/progress"
)

// Debian package names Pull uses.
const (
	DebianMetaPackage = "linux-image-cloud-amd64" // depends on the versioned image package
	BusyboxPackage    = "busybox-static"
)

// File names inside a built kernel directory.
const (
	FileVmlinuz = "vmlinuz"    // the bzImage as shipped
	FileVmlinux = "vmlinux"    // uncompressed ELF
	FileInitrd  = "initrd.img" // banger initramfs
	FileConfig  = "config"     // kernel .config, when shipped
	DirModules  = "modules"    // modules/<version>/...
)

// Build describes the artifacts BuildFromDeb wrote into a directory.
type Build struct {
	Version    string // kernel release, e.g. 6.1.0-50-cloud-amd64
	Vmlinuz    string // absolute paths
	Vmlinux    string
	Initrd     string
	ModulesDir string   // .../modules/<version>
	PVH        bool     // vmlinux carries the Xen PVH entry note
	Modules    []string // modules /init loads, in order
	Missing    []string // requested modules the kernel has neither built in nor as a module
}

// RecipeHash identifies how BuildFromDeb turns packages into artifacts (the
// /init script and module list); caches of built artifacts key on it.
func RecipeHash() string {
	h := sha256.New()
	fmt.Fprintf(h, "banger-kernel-recipe-v1\n%s\n%s\n%s\n", DebianMetaPackage, strings.Join(DefaultModules, ","), initScript)
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// DebianPackages are the verified downloads FetchDebian produced.
type DebianPackages struct {
	Kernel     *debmirror.Package // the versioned linux-image-<ver> package
	KernelDeb  string
	Busybox    *debmirror.Package
	BusyboxDeb string
}

// FetchDebian resolves meta (DebianMetaPackage when "") to the versioned
// kernel image package it depends on (or meta itself when it depends on no
// linux-image-* package) and downloads it and busybox-static
// into dir, each verified against the mirror's signed index.
func FetchDebian(ctx context.Context, m *debmirror.Mirror, meta, dir string) (*DebianPackages, error) {
	if meta == "" {
		meta = DebianMetaPackage
	}
	progress.Stage(ctx, "resolve", meta)
	mp, err := m.Lookup(ctx, meta)
	if err != nil {
		return nil, err
	}
	var target string
	for _, group := range mp.Depends {
		for _, r := range group {
			if strings.HasPrefix(r.Name, "linux-image-") {
				target = r.Name
				break
			}
		}
		if target != "" {
			break
		}
	}
	if target == "" { // already a versioned image package
		target = meta
	}
	kp, err := m.Lookup(ctx, target)
	if err != nil {
		return nil, fmt.Errorf("resolve %s -> %s: %w", meta, target, err)
	}
	bp, err := m.Lookup(ctx, BusyboxPackage)
	if err != nil {
		return nil, err
	}
	kdeb, err := m.Download(ctx, kp, dir)
	if err != nil {
		return nil, err
	}
	bdeb, err := m.Download(ctx, bp, dir)
	if err != nil {
		return nil, err
	}
	return &DebianPackages{Kernel: kp, KernelDeb: kdeb, Busybox: bp, BusyboxDeb: bdeb}, nil
}

// ExtractBusybox unpacks a busybox-static .deb and moves its bin/busybox
// to dst (runner: see ExtractDebWith).
func ExtractBusybox(ctx context.Context, runner hostexec.Runner, deb, dst string) error {
	tmp, err := os.MkdirTemp(filepath.Dir(dst), ".busybox-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if err := ExtractDebWith(ctx, runner, deb, tmp); err != nil {
		return fmt.Errorf("extract %s: %w", filepath.Base(deb), err)
	}
	for _, p := range []string{"bin/busybox", "usr/bin/busybox"} {
		src := filepath.Join(tmp, p)
		if st, err := os.Lstat(src); err == nil && st.Mode().IsRegular() {
			return os.Rename(src, dst)
		}
	}
	return fmt.Errorf("%s has no bin/busybox", filepath.Base(deb))
}

// BuildFromDeb extracts a linux-image .deb into dir (which must be empty or
// missing) and writes the artifacts: vmlinuz, vmlinux (extracted ELF),
// modules/<version>/ (with a generated modules.dep when the package has
// none), config, and initrd.img built with the busybox binary. runner (may
// be nil) runs the host decompressor; see ExtractDebWith.
func BuildFromDeb(ctx context.Context, runner hostexec.Runner, kernelDeb, busybox, dir string) (*Build, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	x := filepath.Join(dir, ".extract")
	defer os.RemoveAll(x)
	progress.Stage(ctx, "extract", filepath.Base(kernelDeb))
	if err := ExtractDebWith(ctx, runner, kernelDeb, x); err != nil {
		return nil, fmt.Errorf("extract %s: %w", filepath.Base(kernelDeb), err)
	}
	vmlinuz, _ := filepath.Glob(filepath.Join(x, "boot", "vmlinuz-*"))
	if len(vmlinuz) != 1 {
		return nil, fmt.Errorf("%s: want exactly one boot/vmlinuz-*, found %d", filepath.Base(kernelDeb), len(vmlinuz))
	}
	version := strings.TrimPrefix(filepath.Base(vmlinuz[0]), "vmlinuz-")
	b := &Build{
		Version: version,
		Vmlinuz: filepath.Join(dir, FileVmlinuz),
		Vmlinux: filepath.Join(dir, FileVmlinux),
		Initrd:  filepath.Join(dir, FileInitrd),
	}
	if err := os.Rename(vmlinuz[0], b.Vmlinuz); err != nil {
		return nil, err
	}
	if err := os.Rename(filepath.Join(x, "boot", "config-"+version), filepath.Join(dir, FileConfig)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	modSrc := ""
	for _, base := range []string{"lib/modules", "usr/lib/modules"} {
		if st, err := os.Stat(filepath.Join(x, base, version)); err == nil && st.IsDir() {
			modSrc = filepath.Join(x, base, version)
			break
		}
	}
	if modSrc != "" {
		b.ModulesDir = filepath.Join(dir, DirModules, version)
		if err := os.MkdirAll(filepath.Dir(b.ModulesDir), 0o755); err != nil {
			return nil, err
		}
		if err := os.Rename(modSrc, b.ModulesDir); err != nil {
			return nil, err
		}
		if _, err := os.Stat(filepath.Join(b.ModulesDir, "modules.dep")); errors.Is(err, os.ErrNotExist) {
			progress.Stage(ctx, "modules", "generating modules.dep")
			idx, err := LoadModuleIndex(b.ModulesDir)
			if err != nil {
				return nil, err
			}
			if err := idx.WriteModulesDep(); err != nil {
				return nil, fmt.Errorf("write modules.dep: %w", err)
			}
		}
	}
	if err := WriteVmlinux(ctx, b.Vmlinuz, b.Vmlinux); err != nil {
		return nil, err
	}
	elfImg, err := os.ReadFile(b.Vmlinux)
	if err != nil {
		return nil, err
	}
	b.PVH = HasPVHNote(elfImg)
	res, err := BuildInitramfs(ctx, InitramfsOptions{Output: b.Initrd, Busybox: busybox, ModulesDir: b.ModulesDir})
	if err != nil {
		return nil, err
	}
	b.Modules, b.Missing = res.Modules, res.Missing
	return b, nil
}

// WriteVmlinux extracts the ELF kernel from the bzImage at src into dst.
func WriteVmlinux(ctx context.Context, src, dst string) error {
	progress.Stage(ctx, "vmlinux", "extracting the uncompressed kernel")
	img, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	elfImg, err := ExtractVmlinux(img)
	if err != nil {
		return fmt.Errorf("extract vmlinux from %s: %w", filepath.Base(src), err)
	}
	return atomicfile.Write(dst, elfImg, 0o644)
}
