// Package testguest gives tests ready-to-boot guest artifacts (kernel,
// vmlinux, banger initramfs), built once per recipe with the production
// code of internal/kernel and internal/debmirror and cached between runs in
// testreq.CacheDir.
package testguest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bangerdev/banger/internal/debmirror"
	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/kernel"
	"github.com/bangerdev/banger/internal/progress"
	"github.com/bangerdev/banger/internal/testreq"
)

// Artifacts are cached, ready-to-boot test guest files. Treat them as
// read-only: they are shared by every test and test binary.
type Artifacts struct {
	Vmlinuz    string // bzImage as shipped by Debian
	Vmlinux    string // uncompressed ELF (Firecracker)
	Initrd     string // banger initramfs (see internal/kernel/initramfs.go for the /init contract)
	Version    string // kernel release, e.g. 6.1.0-50-cloud-amd64
	ModulesDir string // /lib/modules/<Version> tree (with modules.dep)
	PVH        bool   // Vmlinux carries the PVH entry note
}

const manifestName = "artifacts.json"

// Kernel returns the Debian cloud kernel artifacts, building them on first
// use from the host's apt mirror (InRelease verified with gpgv, packages
// verified by SHA256) into testreq.CacheDir(t, "kernel-<recipe hash>").
// A file lock makes parallel test binaries build once. It needs gpgv and
// network access to the mirror only when the cache is empty; an unreachable
// mirror fails the test with the reason.
func Kernel(t testing.TB) *Artifacts {
	t.Helper()
	dir := testreq.CacheDir(t, "kernel-"+kernel.RecipeHash())
	if a, err := load(dir); err == nil {
		return a
	}
	unlock, err := lockDir(dir)
	if err != nil {
		t.Fatalf("testguest: lock %s: %v", dir, err)
	}
	defer unlock()
	if a, err := load(dir); err == nil { // built by another process meanwhile
		return a
	}
	testreq.Tools(t, "gpgv")
	m, err := debmirror.FromHost("", hostexec.Real{}, testreq.CacheDir(t, "debmirror"))
	if err != nil {
		t.Fatalf("testguest: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	last, lastStage := start, ""
	ctx = progress.WithSink(ctx, func(e progress.Event) {
		if e.Fraction < 0 || lastStage == "" {
			if lastStage != "" {
				t.Logf("testguest: stage %-14s %6s", lastStage, e.Time.Sub(last).Round(time.Millisecond))
			}
			last, lastStage = e.Time, e.Stage+" "+e.Message
		}
	})
	a, err := build(ctx, m, dir)
	if err != nil {
		t.Fatalf("testguest: building kernel artifacts from %s failed: %v", m.URL, err)
	}
	t.Logf("testguest: built kernel %s artifacts in %s (cached in %s)", a.Version, time.Since(start).Round(time.Millisecond), dir)
	return a
}

func build(ctx context.Context, m *debmirror.Mirror, dir string) (*Artifacts, error) {
	work, err := os.MkdirTemp(dir, ".build-*")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	pkgs, err := kernel.FetchDebian(ctx, m, "", filepath.Join(work, "debs"))
	if err != nil {
		return nil, err
	}
	bb := filepath.Join(work, "busybox")
	if err := kernel.ExtractBusybox(ctx, hostexec.Real{}, pkgs.BusyboxDeb, bb); err != nil {
		return nil, err
	}
	out := filepath.Join(work, "out")
	b, err := kernel.BuildFromDeb(ctx, hostexec.Real{}, pkgs.KernelDeb, bb, out)
	if err != nil {
		return nil, err
	}
	if len(b.Missing) > 0 {
		return nil, fmt.Errorf("kernel %s lacks modules %v", b.Version, b.Missing)
	}
	final := filepath.Join(dir, "artifacts")
	os.RemoveAll(final)
	if err := os.Rename(out, final); err != nil {
		return nil, err
	}
	rel := func(p string) string {
		r, _ := filepath.Rel(out, p)
		return r
	}
	man := map[string]any{
		"version": b.Version, "vmlinuz": rel(b.Vmlinuz), "vmlinux": rel(b.Vmlinux),
		"initrd": rel(b.Initrd), "modules_dir": rel(b.ModulesDir), "pvh": b.PVH,
		"package": pkgs.Kernel.Name + " " + pkgs.Kernel.Version, "busybox": pkgs.Busybox.Version,
	}
	data, _ := json.MarshalIndent(man, "", "  ")
	tmp := filepath.Join(dir, manifestName+".tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, filepath.Join(dir, manifestName)); err != nil {
		return nil, err
	}
	return load(dir)
}

func load(dir string) (*Artifacts, error) {
	data, err := os.ReadFile(filepath.Join(dir, manifestName))
	if err != nil {
		return nil, err
	}
	var man struct {
		Version    string `json:"version"`
		Vmlinuz    string `json:"vmlinuz"`
		Vmlinux    string `json:"vmlinux"`
		Initrd     string `json:"initrd"`
		ModulesDir string `json:"modules_dir"`
		PVH        bool   `json:"pvh"`
	}
	if err := json.Unmarshal(data, &man); err != nil {
		return nil, err
	}
	base := filepath.Join(dir, "artifacts")
	a := &Artifacts{
		Vmlinuz: filepath.Join(base, man.Vmlinuz), Vmlinux: filepath.Join(base, man.Vmlinux),
		Initrd: filepath.Join(base, man.Initrd), ModulesDir: filepath.Join(base, man.ModulesDir),
		Version: man.Version, PVH: man.PVH,
	}
	for _, p := range []string{a.Vmlinuz, a.Vmlinux, a.Initrd, a.ModulesDir} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("cached artifacts incomplete: %w", err)
		}
	}
	if man.Version == "" {
		return nil, errors.New("cached artifacts: no version")
	}
	return a, nil
}

// lockDir takes an exclusive flock on dir/.lock (released by the returned func).
func lockDir(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
}
