package kernel

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/bangerdev/banger/internal/atomicfile"
	"github.com/bangerdev/banger/internal/debmirror"
	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/progress"
)

// Catalog is where kernel records live (the SQLite store implements it).
// Contract: GetKernel and DeleteKernel wrap model.ErrNotFound for unknown
// names; PutKernel inserts or replaces the record of k.Name; ListKernels
// returns records sorted by name. All methods are safe for concurrent use.
type Catalog interface {
	PutKernel(ctx context.Context, k *model.Kernel) error
	GetKernel(ctx context.Context, name string) (*model.Kernel, error)
	ListKernels(ctx context.Context) ([]*model.Kernel, error)
	DeleteKernel(ctx context.Context, name string) error
}

// Store keeps kernels under Dir, one directory per kernel named
// "<sha256 prefix of vmlinux>-<name>" holding vmlinux, vmlinuz (when
// known), initrd.img (when needed), config, modules/<version>/ and a
// manifest.json. Directories are built in Dir/.tmp-* and renamed into
// place only when complete, so a crash or error never leaves a half
// kernel visible.
type Store struct {
	Dir     string
	Catalog Catalog
	Mirror  *debmirror.Mirror // for Pull and for busybox when an initramfs is needed
	Runner  hostexec.Runner   // host decompressors (nil = pure Go)
	// Busybox is a static busybox binary to use instead of fetching the
	// mirror's busybox-static (tests, offline imports). Optional.
	Busybox string
	Now     func() time.Time // nil = time.Now

	mu        sync.Mutex
	flights   map[string]*flight   // running pulls, by name
	nameLocks map[string]*nameLock // serializes pull/import/remove of one name
}

type nameLock struct {
	mu   sync.Mutex
	refs int
}

// lockName serializes all writers of one kernel name.
func (s *Store) lockName(name string) func() {
	s.mu.Lock()
	if s.nameLocks == nil {
		s.nameLocks = map[string]*nameLock{}
	}
	l := s.nameLocks[name]
	if l == nil {
		l = &nameLock{}
		s.nameLocks[name] = l
	}
	l.refs++
	s.mu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		s.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(s.nameLocks, name)
		}
		s.mu.Unlock()
	}
}

type flight struct {
	done chan struct{}
	k    *model.Kernel
	err  error
}

// Manifest is Dir/<kernel>/manifest.json.
type Manifest struct {
	Name       string            `json:"name"`
	Version    string            `json:"version"`
	Source     string            `json:"source"`
	Files      map[string]string `json:"files"` // relative path -> sha256 ("modules/<v>" -> tree hash, see TreeHash)
	PVH        bool              `json:"pvh"`
	ImportedAt time.Time         `json:"imported_at"`
}

// ImportSource names local files for Import: either Deb, or Vmlinux (an
// ELF vmlinux or a bzImage) with optional Initrd and ModulesDir (a
// /lib/modules/<version> directory).
type ImportSource struct {
	Deb        string
	Vmlinux    string
	Initrd     string
	ModulesDir string
}

// Sources maps the names Pull accepts to the Debian meta package pulled.
var pullSources = map[string]string{"debian": DebianMetaPackage}

func (s *Store) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// coalesce runs fn once per name at a time; concurrent pulls of the same
// name wait for the running one and share its result.
func (s *Store) coalesce(ctx context.Context, name string, fn func() (*model.Kernel, error)) (*model.Kernel, error) {
	s.mu.Lock()
	if s.flights == nil {
		s.flights = map[string]*flight{}
	}
	if f, ok := s.flights[name]; ok {
		s.mu.Unlock()
		select {
		case <-f.done:
			return f.k, f.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	f := &flight{done: make(chan struct{})}
	s.flights[name] = f
	s.mu.Unlock()
	f.k, f.err = fn()
	s.mu.Lock()
	delete(s.flights, name)
	s.mu.Unlock()
	close(f.done)
	return f.k, f.err
}

// Pull fetches a kernel by source name ("debian": the versioned package
// linux-image-cloud-amd64 depends on) from the mirror, verifying the
// InRelease signature, the Packages hash and the .deb hash, and stores it
// under that name with its vmlinux, modules and initramfs. Pulling a
// version already stored returns the existing record. Concurrent pulls of
// one name share one download.
func (s *Store) Pull(ctx context.Context, name string) (*model.Kernel, error) {
	meta, ok := pullSources[name]
	if !ok {
		return nil, fmt.Errorf("unknown kernel source %q: `kernel pull` knows only \"debian\"; use `kernel import` for other kernels", name)
	}
	if s.Mirror == nil {
		return nil, errors.New("kernel pull: no Debian mirror configured (set the mirror in banger's config)")
	}
	return s.coalesce(ctx, name, func() (*model.Kernel, error) {
		defer s.lockName(name)()
		tmp, err := s.tempDir()
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(tmp)
		pkgs, err := FetchDebian(ctx, s.Mirror, meta, filepath.Join(tmp, ".debs"))
		if err != nil {
			return nil, fmt.Errorf("kernel pull %s: %w", name, err)
		}
		source := fmt.Sprintf("debian:%s=%s", pkgs.Kernel.Name, pkgs.Kernel.Version)
		if old, err := s.Catalog.GetKernel(ctx, name); err == nil && old.Source == source {
			if _, err := os.Stat(old.Vmlinux); err == nil {
				progress.Stage(ctx, "done", "already up to date: "+old.Version)
				return old, nil
			}
		}
		bb := filepath.Join(tmp, ".busybox")
		if err := ExtractBusybox(ctx, s.Runner, pkgs.BusyboxDeb, bb); err != nil {
			return nil, fmt.Errorf("kernel pull %s: %w", name, err)
		}
		out := filepath.Join(tmp, "k")
		b, err := BuildFromDeb(ctx, s.Runner, pkgs.KernelDeb, bb, out)
		if err != nil {
			return nil, fmt.Errorf("kernel pull %s: %w", name, err)
		}
		if len(b.Missing) > 0 {
			progress.Stage(ctx, "initramfs", "kernel has neither built in nor as modules: "+strings.Join(b.Missing, ", "))
		}
		return s.publish(ctx, name, source, b.Version, b.PVH, out)
	})
}

// Import stores a kernel from local files under name.
func (s *Store) Import(ctx context.Context, name string, src ImportSource) (*model.Kernel, error) {
	if err := model.ValidateName(name); err != nil {
		return nil, err
	}
	if (src.Deb == "") == (src.Vmlinux == "") {
		return nil, errors.New("kernel import: give exactly one of --deb or --vmlinux")
	}
	if src.Deb != "" && (src.Initrd != "" || src.ModulesDir != "") {
		return nil, errors.New("kernel import: --initrd and --modules go with --vmlinux, not --deb")
	}
	unlock := s.lockName(name)
	defer unlock()
	return func() (*model.Kernel, error) {
		if _, err := s.Catalog.GetKernel(ctx, name); err == nil {
			return nil, fmt.Errorf("kernel %s: %w (remove it first with `banger kernel rm %s`)", name, model.ErrAlreadyExists, name)
		}
		tmp, err := s.tempDir()
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(tmp)
		out := filepath.Join(tmp, "k")
		if src.Deb != "" {
			return s.importDeb(ctx, name, src.Deb, tmp, out)
		}
		return s.importFiles(ctx, name, src, tmp, out)
	}()
}

func (s *Store) importDeb(ctx context.Context, name, deb, tmp, out string) (*model.Kernel, error) {
	bb, err := s.busybox(ctx, tmp)
	if err != nil {
		return nil, err
	}
	b, err := BuildFromDeb(ctx, s.Runner, deb, bb, out)
	if err != nil {
		return nil, fmt.Errorf("kernel import %s: %w", name, err)
	}
	return s.publish(ctx, name, "deb:"+filepath.Base(deb), b.Version, b.PVH, out)
}

func (s *Store) importFiles(ctx context.Context, name string, src ImportSource, tmp, out string) (*model.Kernel, error) {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return nil, err
	}
	progress.Stage(ctx, "import", src.Vmlinux)
	img, err := os.ReadFile(src.Vmlinux)
	if err != nil {
		return nil, fmt.Errorf("kernel import %s: %w", name, err)
	}
	elfImg := img
	if !isELF(img) {
		if err := copyFile(src.Vmlinux, filepath.Join(out, FileVmlinuz)); err != nil {
			return nil, err
		}
		if elfImg, err = ExtractVmlinux(img); err != nil {
			return nil, fmt.Errorf("kernel import %s: %s is neither an ELF vmlinux nor a bzImage we can unpack: %w", name, src.Vmlinux, err)
		}
	} else if !validELF(img) {
		return nil, fmt.Errorf("kernel import %s: %s is a truncated or invalid ELF file", name, src.Vmlinux)
	}
	if err := atomicfile.Write(filepath.Join(out, FileVmlinux), elfImg, 0o644); err != nil {
		return nil, err
	}
	version := KernelVersion(img)
	if version == "" && src.ModulesDir != "" {
		version = filepath.Base(filepath.Clean(src.ModulesDir))
	}
	if version == "" {
		version = "unknown"
	}
	var modDir string
	if src.ModulesDir != "" {
		modDir = filepath.Join(out, DirModules, filepath.Base(filepath.Clean(src.ModulesDir)))
		if err := copyTree(src.ModulesDir, modDir); err != nil {
			return nil, fmt.Errorf("kernel import %s: copy modules: %w", name, err)
		}
		if _, err := os.Stat(filepath.Join(modDir, "modules.dep")); errors.Is(err, os.ErrNotExist) {
			idx, err := LoadModuleIndex(modDir)
			if err != nil {
				return nil, fmt.Errorf("kernel import %s: %w", name, err)
			}
			if err := idx.WriteModulesDep(); err != nil {
				return nil, err
			}
		}
	}
	switch {
	case src.Initrd != "":
		if err := copyFile(src.Initrd, filepath.Join(out, FileInitrd)); err != nil {
			return nil, fmt.Errorf("kernel import %s: %w", name, err)
		}
	case modDir != "":
		idx, err := LoadModuleIndex(modDir)
		if err != nil {
			return nil, fmt.Errorf("kernel import %s: %w", name, err)
		}
		if NeedsInitramfs(idx) {
			bb, err := s.busybox(ctx, tmp)
			if err != nil {
				return nil, err
			}
			if _, err := BuildInitramfs(ctx, InitramfsOptions{Output: filepath.Join(out, FileInitrd), Busybox: bb, ModulesDir: modDir}); err != nil {
				return nil, fmt.Errorf("kernel import %s: %w", name, err)
			}
		}
	}
	return s.publish(ctx, name, "file:"+src.Vmlinux, version, HasPVHNote(elfImg), out)
}

// NeedsInitramfs reports whether the kernel has the drivers a banger guest
// boots from (virtio block and PCI/MMIO transport, ext4) only as modules.
func NeedsInitramfs(idx *ModuleIndex) bool {
	for _, m := range []string{"virtio_blk", "virtio_pci", "virtio_mmio", "ext4", "virtio_net"} {
		if _, ok := idx.Files[m]; ok {
			return true
		}
	}
	return false
}

// busybox returns a static busybox: Store.Busybox, else busybox-static from the mirror.
func (s *Store) busybox(ctx context.Context, tmp string) (string, error) {
	if s.Busybox != "" {
		return s.Busybox, nil
	}
	if s.Mirror == nil {
		return "", errors.New("an initramfs is needed but no Debian mirror is configured to fetch busybox-static from")
	}
	p, err := s.Mirror.Lookup(ctx, BusyboxPackage)
	if err != nil {
		return "", err
	}
	deb, err := s.Mirror.Download(ctx, p, filepath.Join(tmp, ".debs"))
	if err != nil {
		return "", err
	}
	bb := filepath.Join(tmp, ".busybox")
	if err := ExtractBusybox(ctx, s.Runner, deb, bb); err != nil {
		return "", err
	}
	return bb, nil
}

func (s *Store) tempDir() (string, error) {
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return "", fmt.Errorf("kernel store: %w", err)
	}
	d, err := os.MkdirTemp(s.Dir, ".tmp-")
	if err != nil {
		return "", fmt.Errorf("kernel store: %w", err)
	}
	return d, nil
}

// publish hashes the built directory, writes its manifest, fsyncs it and
// renames it into place, then records it in the catalog (replacing and
// removing an older directory of the same name).
func (s *Store) publish(ctx context.Context, name, source, version string, pvh bool, out string) (*model.Kernel, error) {
	progress.Stage(ctx, "publish", name)
	files := map[string]string{}
	for _, f := range []string{FileVmlinux, FileVmlinuz, FileInitrd, FileConfig} {
		h, err := fileSHA256(filepath.Join(out, f))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		files[f] = h
	}
	modRel := ""
	if ents, err := os.ReadDir(filepath.Join(out, DirModules)); err == nil && len(ents) == 1 && ents[0].IsDir() {
		modRel = filepath.Join(DirModules, ents[0].Name())
		h, err := TreeHash(filepath.Join(out, modRel))
		if err != nil {
			return nil, err
		}
		files[modRel] = h
	}
	man := Manifest{Name: name, Version: version, Source: source, Files: files, PVH: pvh, ImportedAt: s.now().UTC()}
	data, err := json.MarshalIndent(man, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := atomicfile.Write(filepath.Join(out, "manifest.json"), data, 0o644); err != nil {
		return nil, err
	}
	if err := syncTree(out); err != nil {
		return nil, fmt.Errorf("kernel store: fsync: %w", err)
	}
	final := filepath.Join(s.Dir, contentKey(files)+"-"+name)
	if same, _ := sameManifest(final, files); same {
		// identical content already published (e.g. re-import after a crash)
		man.ImportedAt = readImportedAt(final, man.ImportedAt)
	} else {
		if err := os.RemoveAll(final); err != nil {
			return nil, err
		}
		if err := os.Rename(out, final); err != nil {
			return nil, fmt.Errorf("kernel store: publish: %w", err)
		}
		syncDir(s.Dir)
	}
	k := &model.Kernel{
		Name: name, Version: version, Source: source, Dir: final,
		Vmlinux: filepath.Join(final, FileVmlinux), Files: files, ImportedAt: man.ImportedAt,
	}
	if _, ok := files[FileVmlinuz]; ok {
		k.BzImage = filepath.Join(final, FileVmlinuz)
	}
	if _, ok := files[FileInitrd]; ok {
		k.Initrd = filepath.Join(final, FileInitrd)
	}
	if modRel != "" {
		k.ModulesDir = filepath.Join(final, modRel)
	}
	old, _ := s.Catalog.GetKernel(ctx, name)
	if err := s.Catalog.PutKernel(ctx, k); err != nil {
		if old == nil || old.Dir != final {
			os.RemoveAll(final)
		}
		return nil, fmt.Errorf("kernel store: record %s: %w", name, err)
	}
	if old != nil && old.Dir != final && strings.HasPrefix(old.Dir, filepath.Clean(s.Dir)+string(os.PathSeparator)) {
		os.RemoveAll(old.Dir)
	}
	return k, nil
}

// contentKey is the directory prefix: a hash over all file hashes.
func contentKey(files map[string]string) string {
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	h := sha256.New()
	for _, n := range names {
		fmt.Fprintf(h, "%s %s\n", n, files[n])
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

func sameManifest(dir string, files map[string]string) (bool, error) {
	data, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		return false, err
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return false, err
	}
	if len(m.Files) != len(files) {
		return false, nil
	}
	for k, v := range files {
		if m.Files[k] != v {
			return false, nil
		}
	}
	return true, nil
}

func readImportedAt(dir string, def time.Time) time.Time {
	data, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		return def
	}
	var m Manifest
	if json.Unmarshal(data, &m) != nil || m.ImportedAt.IsZero() {
		return def
	}
	return m.ImportedAt
}

// List returns all stored kernels.
func (s *Store) List(ctx context.Context) ([]*model.Kernel, error) {
	return s.Catalog.ListKernels(ctx)
}

// Get returns one kernel; unknown names wrap model.ErrNotFound.
func (s *Store) Get(ctx context.Context, name string) (*model.Kernel, error) {
	k, err := s.Catalog.GetKernel(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", name, err)
	}
	return k, nil
}

// Manifest reads the manifest.json of a stored kernel.
func (s *Store) Manifest(ctx context.Context, name string) (*Manifest, error) {
	k, err := s.Get(ctx, name)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(filepath.Join(k.Dir, "manifest.json"))
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", name, err)
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("kernel %s: manifest: %w", name, err)
	}
	return &m, nil
}

// Remove deletes a kernel unless inUse (may be nil) reports a user; then
// it fails wrapping model.ErrInUse and naming the user.
func (s *Store) Remove(ctx context.Context, name string, inUse func(name string) (bool, string)) error {
	defer s.lockName(name)()
	k, err := s.Get(ctx, name)
	if err != nil {
		return err
	}
	if inUse != nil {
		if used, by := inUse(name); used {
			return fmt.Errorf("kernel %s is used by %s: %w (remove or change that first)", name, by, model.ErrInUse)
		}
	}
	if err := s.Catalog.DeleteKernel(ctx, name); err != nil {
		return fmt.Errorf("kernel %s: %w", name, err)
	}
	if strings.HasPrefix(k.Dir, filepath.Clean(s.Dir)+string(os.PathSeparator)) {
		if err := os.RemoveAll(k.Dir); err != nil {
			return fmt.Errorf("kernel %s: remove files: %w", name, err)
		}
	}
	return nil
}

// KernelVersion returns the kernel release string of a bzImage (from the
// boot header's kernel_version field) or of an ELF vmlinux (from its
// "Linux version " banner), or "" when none is found.
func KernelVersion(img []byte) string {
	if len(img) > 0x210 && string(img[0x202:0x206]) == "HdrS" {
		off := int(img[0x20e]) | int(img[0x20f])<<8
		if off != 0 && off+0x200 < len(img) {
			s := img[off+0x200:]
			if i := strings.IndexByte(string(s[:min(len(s), 256)]), ' '); i > 0 {
				return string(s[:i])
			}
		}
	}
	const banner = "Linux version "
	if i := strings.Index(string(img), banner); i >= 0 {
		rest := img[i+len(banner):]
		if j := strings.IndexByte(string(rest[:min(len(rest), 256)]), ' '); j > 0 {
			return string(rest[:j])
		}
	}
	return ""
}

func isELF(b []byte) bool { return len(b) >= 4 && string(b[:4]) == string(elfMagic) }

// TreeHash is the sha256 over a directory tree: for each entry in lexical
// order its relative path, type/permission bits and content hash (or link
// target). The manifest records modules directories this way.
func TreeHash(dir string) (string, error) {
	h := sha256.New()
	var paths []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		paths = append(paths, p)
		return nil
	})
	if err != nil {
		return "", err
	}
	sort.Strings(paths)
	for _, p := range paths {
		rel, _ := filepath.Rel(dir, p)
		st, err := os.Lstat(p)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s\x00%o\x00", filepath.ToSlash(rel), st.Mode())
		switch {
		case st.Mode().IsRegular():
			fh, err := fileSHA256(p)
			if err != nil {
				return "", err
			}
			io.WriteString(h, fh)
		case st.Mode()&os.ModeSymlink != 0:
			t, _ := os.Readlink(p)
			io.WriteString(h, t)
		}
		io.WriteString(h, "\n")
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", src)
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// copyTree copies regular files, directories and symlinks (as links).
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(target, 0o755)
		case d.Type()&os.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(l, target)
		case d.Type().IsRegular():
			return copyFile(p, target)
		}
		return nil
	})
}

// syncTree fsyncs every file and directory under dir.
func syncTree(dir string) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type()&os.ModeSymlink != 0 {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		return f.Sync()
	})
}

func syncDir(dir string) {
	if f, err := os.Open(dir); err == nil {
		f.Sync()
		f.Close()
	}
}
