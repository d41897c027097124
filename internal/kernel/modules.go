package kernel

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/bangerdev/banger/internal/atomicfile"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// ModuleIndex maps kernel module names to their files and dependencies
// inside one /lib/modules/<version> directory.
type ModuleIndex struct {
	Dir     string              // the /lib/modules/<version> directory
	Files   map[string]string   // module name (dashes as underscores) -> path relative to Dir
	Deps    map[string][]string // module name -> direct and indirect deps as listed
	Builtin map[string]bool     // modules compiled into the kernel (modules.builtin)
}

// NormalizeModule turns a module name or file name into the kernel's
// canonical module name: base name without .ko[.xz|.zst|.gz], dashes as
// underscores.
func NormalizeModule(name string) string {
	name = filepath.Base(name)
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		name = strings.TrimSuffix(name, ext)
	}
	name = strings.TrimSuffix(name, ".ko")
	return strings.ReplaceAll(name, "-", "_")
}

// LoadModuleIndex reads Dir/modules.dep (and modules.builtin). When the
// package shipped no modules.dep (Debian runs depmod at install time), the
// dependencies are read from each module's .modinfo "depends=" field
// instead; WriteModulesDep can persist the result.
func LoadModuleIndex(dir string) (*ModuleIndex, error) {
	idx := &ModuleIndex{Dir: dir, Files: map[string]string{}, Deps: map[string][]string{}, Builtin: map[string]bool{}}
	if b, err := os.ReadFile(filepath.Join(dir, "modules.builtin")); err == nil {
		for _, l := range strings.Fields(string(b)) {
			idx.Builtin[NormalizeModule(l)] = true
		}
	}
	dep, err := os.Open(filepath.Join(dir, "modules.dep"))
	if err == nil {
		defer dep.Close()
		sc := bufio.NewScanner(dep)
		sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
		for sc.Scan() {
			file, deps, ok := strings.Cut(sc.Text(), ":")
			if !ok {
				continue
			}
			name := NormalizeModule(file)
			idx.Files[name] = filepath.Clean(file)
			for _, d := range strings.Fields(deps) {
				idx.Deps[name] = append(idx.Deps[name], NormalizeModule(d))
				if _, ok := idx.Files[NormalizeModule(d)]; !ok {
					idx.Files[NormalizeModule(d)] = filepath.Clean(d)
				}
			}
		}
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("read modules.dep: %w", err)
		}
		return idx, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read modules.dep: %w", err)
	}
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !isModuleFile(d.Name()) {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		name := NormalizeModule(rel)
		idx.Files[name] = rel
		deps, err := moduleDepends(p)
		if err != nil {
			return fmt.Errorf("module %s: %w", rel, err)
		}
		idx.Deps[name] = deps
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("index modules in %s: %w", dir, err)
	}
	if len(idx.Files) == 0 {
		return nil, fmt.Errorf("no kernel modules under %s", dir)
	}
	// modules.dep lists the transitive closure; do the same.
	closure := map[string][]string{}
	for name := range idx.Files {
		order, err := idx.resolve([]string{name}, nil)
		if err != nil {
			return nil, err
		}
		closure[name] = reverseWithout(order, name)
	}
	idx.Deps = closure
	return idx, nil
}

func reverseWithout(order []string, self string) []string {
	var out []string
	for i := len(order) - 1; i >= 0; i-- {
		if order[i] != self {
			out = append(out, order[i])
		}
	}
	return out
}

func isModuleFile(n string) bool {
	for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		if strings.HasSuffix(n, ext) {
			return true
		}
	}
	return false
}

// ReadModule returns the uncompressed bytes of a module file (.ko, .ko.xz,
// .ko.zst or .ko.gz); busybox insmod needs them uncompressed.
func ReadModule(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var r io.Reader = f
	switch {
	case strings.HasSuffix(path, ".xz"):
		x, err := xz.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("decompress %s: %w", path, err)
		}
		r = x
	case strings.HasSuffix(path, ".zst"):
		z, err := zstd.NewReader(f, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, fmt.Errorf("decompress %s: %w", path, err)
		}
		defer z.Close()
		r = z
	case strings.HasSuffix(path, ".gz"):
		g, err := gzip.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("decompress %s: %w", path, err)
		}
		defer g.Close()
		r = g
	}
	b, err := io.ReadAll(io.LimitReader(r, 256<<20))
	if err != nil {
		return nil, fmt.Errorf("read module %s: %w", path, err)
	}
	return b, nil
}

// moduleDepends reads the "depends=" entry of a module's .modinfo section.
func moduleDepends(path string) ([]string, error) {
	var r io.ReaderAt
	if strings.HasSuffix(path, ".ko") { // read only the headers and .modinfo
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	} else {
		b, err := ReadModule(path)
		if err != nil {
			return nil, err
		}
		r = bytes.NewReader(b)
	}
	info, err := modinfo(r)
	if err != nil {
		return nil, err
	}
	var deps []string
	for _, d := range strings.Split(info["depends"], ",") {
		if d = strings.TrimSpace(d); d != "" {
			deps = append(deps, NormalizeModule(d))
		}
	}
	return deps, nil
}

func modinfo(ko io.ReaderAt) (map[string]string, error) {
	ef, err := elf.NewFile(ko)
	if err != nil {
		return nil, fmt.Errorf("not an ELF module: %w", err)
	}
	defer ef.Close()
	s := ef.Section(".modinfo")
	if s == nil {
		return map[string]string{}, nil
	}
	data, err := s.Data()
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, kv := range bytes.Split(data, []byte{0}) {
		k, v, ok := strings.Cut(string(kv), "=")
		if ok {
			if _, dup := out[k]; !dup {
				out[k] = v
			}
		}
	}
	return out, nil
}

// Resolve returns the module names to load for the requested ones, each
// after its dependencies, without duplicates. Built-in modules are dropped.
// Requested modules the index does not know and the kernel does not build in
// are returned in missing (the caller decides whether that is fatal).
func (idx *ModuleIndex) Resolve(names []string) (order, missing []string, err error) {
	var miss []string
	order, err = idx.resolve(names, &miss)
	return order, miss, err
}

func (idx *ModuleIndex) resolve(names []string, missing *[]string) ([]string, error) {
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(n string, depth int) error
	visit = func(n string, depth int) error {
		n = NormalizeModule(n)
		switch state[n] {
		case 2:
			return nil
		case 1:
			return fmt.Errorf("module dependency cycle through %s", n)
		}
		if _, ok := idx.Files[n]; !ok {
			if !idx.Builtin[n] && missing != nil && depth == 0 {
				*missing = append(*missing, n)
			}
			state[n] = 2
			return nil
		}
		state[n] = 1
		deps := idx.Deps[n]
		// modules.dep lists the module loaded last first; visit in reverse.
		for i := len(deps) - 1; i >= 0; i-- {
			if err := visit(deps[i], depth+1); err != nil {
				return err
			}
		}
		state[n] = 2
		order = append(order, n)
		return nil
	}
	for _, n := range names {
		if err := visit(n, 0); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// WriteModulesDep writes Dir/modules.dep in depmod's text format from the
// index (so busybox modprobe works in a guest without depmod).
func (idx *ModuleIndex) WriteModulesDep() error {
	names := make([]string, 0, len(idx.Files))
	for n := range idx.Files {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool { return idx.Files[names[i]] < idx.Files[names[j]] })
	var buf bytes.Buffer
	for _, n := range names {
		buf.WriteString(idx.Files[n])
		buf.WriteString(":")
		for _, d := range idx.Deps[n] {
			if f, ok := idx.Files[d]; ok {
				buf.WriteString(" " + f)
			}
		}
		buf.WriteString("\n")
	}
	return atomicfile.Write(filepath.Join(idx.Dir, "modules.dep"), buf.Bytes(), 0o644)
}
