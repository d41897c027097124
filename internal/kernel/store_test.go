package kernel

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/debmirror"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/progress"
)

// memCatalog is an in-memory Catalog honouring the interface contract.
type memCatalog struct {
	mu      sync.Mutex
	m       map[string]*model.Kernel
	puts    atomic.Int32
	failPut error
}

func newMemCatalog() *memCatalog { return &memCatalog{m: map[string]*model.Kernel{}} }

func (c *memCatalog) PutKernel(_ context.Context, k *model.Kernel) error {
	c.puts.Add(1)
	if c.failPut != nil {
		return c.failPut
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	cp := *k
	c.m[k.Name] = &cp
	return nil
}

func (c *memCatalog) GetKernel(_ context.Context, name string) (*model.Kernel, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k, ok := c.m[name]
	if !ok {
		return nil, fmt.Errorf("kernel %s: %w", name, model.ErrNotFound)
	}
	cp := *k
	return &cp, nil
}

func (c *memCatalog) ListKernels(context.Context) ([]*model.Kernel, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*model.Kernel
	for _, k := range c.m {
		cp := *k
		out = append(out, &cp)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (c *memCatalog) DeleteKernel(_ context.Context, name string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[name]; !ok {
		return model.ErrNotFound
	}
	delete(c.m, name)
	return nil
}

func testBusybox(t testing.TB) string {
	p := filepath.Join(t.TempDir(), "busybox")
	os.WriteFile(p, buildELF(elf.ET_EXEC, nil, []byte("busybox binary"), nil), 0o755)
	return p
}

// kernelDebEntries is a linux-image package: bzImage, config, modules.
func kernelDebEntries(t testing.TB) []tarEntry {
	vm := testVmlinux(true)
	bz := fakeBzImage(compressWith(t, "gzip", vm), len(vm), true)
	entries := []tarEntry{dir("./boot/"), file("./boot/vmlinuz-"+testKver, string(bz), 0o644), file("./boot/config-"+testKver, "CONFIG_VIRTIO_BLK=m\n", 0o644)}
	mods := testModules(t)
	filepath.Walk(mods, func(p string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() {
			rel, _ := filepath.Rel(mods, p)
			b, _ := os.ReadFile(p)
			entries = append(entries, file("./lib/modules/"+testKver+"/"+rel, string(b), 0o644))
		}
		return nil
	})
	return entries
}

func checkPublished(t *testing.T, s *Store, k *model.Kernel) {
	t.Helper()
	if !strings.HasPrefix(k.Dir, s.Dir+"/") || !strings.HasSuffix(k.Dir, "-"+k.Name) {
		t.Errorf("kernel dir %s not <hash>-%s under %s", k.Dir, k.Name, s.Dir)
	}
	data, err := os.ReadFile(filepath.Join(k.Dir, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	var man Manifest
	if err := json.Unmarshal(data, &man); err != nil {
		t.Fatal(err)
	}
	if man.Name != k.Name || man.Version != k.Version || man.Source != k.Source || man.ImportedAt.IsZero() {
		t.Errorf("manifest %+v does not match record %+v", man, k)
	}
	for rel, want := range man.Files {
		var got string
		if strings.HasPrefix(rel, DirModules+"/") {
			got, err = TreeHash(filepath.Join(k.Dir, rel))
		} else {
			got, err = fileSHA256(filepath.Join(k.Dir, rel))
		}
		if err != nil || got != want {
			t.Errorf("manifest hash of %s = %s, file has %s (%v)", rel, want, got, err)
		}
	}
	if b, _ := os.ReadFile(k.Vmlinux); !validELF(b) {
		t.Error("stored vmlinux is not an ELF")
	}
	ents, _ := os.ReadDir(s.Dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".tmp-") {
			t.Errorf("temporary dir left behind: %s", e.Name())
		}
	}
}

func TestImportDebListShowRemove(t *testing.T) {
	cat := newMemCatalog()
	s := &Store{Dir: t.TempDir(), Catalog: cat, Busybox: testBusybox(t), Now: func() time.Time { return time.Unix(1700000000, 0) }}
	deb := filepath.Join(t.TempDir(), "linux.deb")
	os.WriteFile(deb, makeDeb(t, "xz", kernelDebEntries(t)), 0o644)
	ctx := context.Background()
	k, err := s.Import(ctx, "mine", ImportSource{Deb: deb})
	if err != nil {
		t.Fatal(err)
	}
	if k.Version != testKver || k.Initrd == "" || k.BzImage == "" || k.ModulesDir == "" || k.Source != "deb:linux.deb" {
		t.Fatalf("record %+v", k)
	}
	checkPublished(t, s, k)
	names, err := ListInitramfs(k.Initrd)
	if err != nil || !strings.Contains(strings.Join(names, " "), "virtio_blk.ko") {
		t.Fatalf("initramfs lacks virtio_blk: %v %v", names, err)
	}
	if _, err := os.Stat(filepath.Join(k.ModulesDir, "modules.dep")); err != nil {
		t.Error("modules.dep not generated in the store")
	}
	if man, err := s.Manifest(ctx, "mine"); err != nil || !man.PVH {
		t.Errorf("manifest %+v, %v: want PVH", man, err)
	}

	if _, err := s.Import(ctx, "mine", ImportSource{Deb: deb}); !errors.Is(err, model.ErrAlreadyExists) {
		t.Errorf("second import: err = %v, want ErrAlreadyExists", err)
	}
	list, _ := s.List(ctx)
	if len(list) != 1 || list[0].Name != "mine" {
		t.Errorf("List = %v", list)
	}
	err = s.Remove(ctx, "mine", func(name string) (bool, string) { return true, "vm devbox" })
	if !errors.Is(err, model.ErrInUse) || !strings.Contains(err.Error(), "vm devbox") {
		t.Fatalf("Remove in use: err = %v", err)
	}
	if _, err := os.Stat(k.Dir); err != nil {
		t.Fatal("refused remove deleted files")
	}
	if err := s.Remove(ctx, "mine", func(string) (bool, string) { return false, "" }); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(k.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Error("kernel dir still there after Remove")
	}
	if _, err := s.Get(ctx, "mine"); !errors.Is(err, model.ErrNotFound) {
		t.Errorf("Get after Remove: %v", err)
	}
	if err := s.Remove(ctx, "mine", nil); !errors.Is(err, model.ErrNotFound) {
		t.Errorf("Remove unknown: %v", err)
	}
}

func TestImportFiles(t *testing.T) {
	ctx := context.Background()
	vm := testVmlinux(false)
	vmPath := filepath.Join(t.TempDir(), "vmlinux")
	os.WriteFile(vmPath, vm, 0o644)
	bzPath := filepath.Join(t.TempDir(), "bzImage")
	os.WriteFile(bzPath, fakeBzImage(compressWith(t, "zstd", vm), len(vm), true), 0o644)
	initrd := filepath.Join(t.TempDir(), "my-initrd")
	os.WriteFile(initrd, []byte("user initrd"), 0o644)

	t.Run("elf only", func(t *testing.T) {
		s := &Store{Dir: t.TempDir(), Catalog: newMemCatalog()}
		k, err := s.Import(ctx, "plain", ImportSource{Vmlinux: vmPath})
		if err != nil {
			t.Fatal(err)
		}
		if k.BzImage != "" || k.Initrd != "" || k.ModulesDir != "" || k.Version != "6.1.0-test-amd64" {
			t.Errorf("record %+v", k)
		}
		checkPublished(t, s, k)
	})
	t.Run("bzImage with initrd", func(t *testing.T) {
		s := &Store{Dir: t.TempDir(), Catalog: newMemCatalog()}
		k, err := s.Import(ctx, "bz", ImportSource{Vmlinux: bzPath, Initrd: initrd})
		if err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(k.Vmlinux); !bytes.Equal(b, vm) {
			t.Error("vmlinux not extracted from the bzImage")
		}
		if b, _ := os.ReadFile(k.Initrd); string(b) != "user initrd" {
			t.Error("given initrd not stored as is")
		}
		checkPublished(t, s, k)
	})
	t.Run("modules build an initramfs", func(t *testing.T) {
		s := &Store{Dir: t.TempDir(), Catalog: newMemCatalog(), Busybox: testBusybox(t)}
		k, err := s.Import(ctx, "mods", ImportSource{Vmlinux: vmPath, ModulesDir: testModules(t)})
		if err != nil {
			t.Fatal(err)
		}
		if k.Initrd == "" || filepath.Base(k.ModulesDir) != testKver {
			t.Fatalf("record %+v", k)
		}
		checkPublished(t, s, k)
	})
	t.Run("bad input leaves nothing", func(t *testing.T) {
		cat := newMemCatalog()
		s := &Store{Dir: t.TempDir(), Catalog: cat}
		junk := filepath.Join(t.TempDir(), "junk")
		os.WriteFile(junk, []byte("not a kernel at all"), 0o644)
		for _, src := range []ImportSource{{Vmlinux: junk}, {Vmlinux: "/nonexistent"}, {}, {Deb: junk, Vmlinux: vmPath}, {Deb: junk}, {Deb: junk, Initrd: initrd}} {
			if _, err := s.Import(ctx, "bad", src); err == nil {
				t.Errorf("Import(%+v) succeeded", src)
			}
		}
		if _, err := s.Import(ctx, "Bad Name!", ImportSource{Vmlinux: vmPath}); err == nil {
			t.Error("invalid name accepted")
		}
		ents, _ := os.ReadDir(s.Dir)
		if len(ents) != 0 || len(cat.m) != 0 {
			t.Errorf("left behind: %v, catalog %v", ents, cat.m)
		}
	})
	t.Run("catalog failure unpublishes", func(t *testing.T) {
		cat := newMemCatalog()
		cat.failPut = errors.New("disk full")
		s := &Store{Dir: t.TempDir(), Catalog: cat}
		if _, err := s.Import(ctx, "x", ImportSource{Vmlinux: vmPath}); err == nil || !strings.Contains(err.Error(), "disk full") {
			t.Fatalf("err = %v", err)
		}
		if ents, _ := os.ReadDir(s.Dir); len(ents) != 0 {
			t.Errorf("left behind: %v", ents)
		}
	})
}

// testArchive serves a signed-by-fake-verifier Debian archive with a kernel
// meta package, the versioned kernel and busybox-static.
type testArchive struct {
	srv      *httptest.Server
	mu       sync.Mutex
	files    map[string][]byte
	debGets  atomic.Int32
	kernelFn string
}

type okVerifier struct{}

func (okVerifier) Verify(_ context.Context, b []byte) ([]byte, error) { return b, nil }

func newTestArchive(t *testing.T, kernelDeb, busyboxDeb []byte) *testArchive {
	a := &testArchive{files: map[string][]byte{}}
	hash := func(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }
	a.kernelFn = "pool/main/l/linux/linux-image-" + testKver + "_1_amd64.deb"
	a.files[a.kernelFn] = kernelDeb
	a.files["pool/main/b/busybox/busybox-static_1_amd64.deb"] = busyboxDeb
	pk := fmt.Sprintf("Package: linux-image-cloud-amd64\nVersion: 1\nDepends: linux-image-%s (= 1)\nFilename: pool/main/l/linux/meta.deb\nSize: 1\nSHA256: %s\n\n", testKver, hash([]byte("x"))) +
		fmt.Sprintf("Package: linux-image-%s\nVersion: 1\nDepends: kmod, initramfs-tools | linux-initramfs-tool\nFilename: %s\nSize: %d\nSHA256: %s\n\n", testKver, a.kernelFn, len(kernelDeb), hash(kernelDeb)) +
		fmt.Sprintf("Package: busybox-static\nVersion: 1\nFilename: pool/main/b/busybox/busybox-static_1_amd64.deb\nSize: %d\nSHA256: %s\n", len(busyboxDeb), hash(busyboxDeb))
	var gz bytes.Buffer
	w := gzip.NewWriter(&gz)
	w.Write([]byte(pk))
	w.Close()
	a.files["dists/bookworm/main/binary-amd64/Packages.gz"] = gz.Bytes()
	a.files["dists/bookworm/InRelease"] = []byte(fmt.Sprintf("Suite: stable\nCodename: bookworm\nDate: Sat, 05 Dec 2026 00:00:00 UTC\nSHA256:\n %s %d main/binary-amd64/Packages.gz\n", hash(gz.Bytes()), gz.Len()))
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		body, ok := a.files[strings.TrimPrefix(r.URL.Path, "/")]
		a.mu.Unlock()
		if strings.HasSuffix(r.URL.Path, ".deb") {
			a.debGets.Add(1)
		}
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Write(body)
	}))
	t.Cleanup(a.srv.Close)
	return a
}

func TestPull(t *testing.T) {
	kdeb := makeDeb(t, "xz", kernelDebEntries(t))
	bdeb := makeDeb(t, "xz", []tarEntry{dir("./bin/"), file("./bin/busybox", string(buildELF(elf.ET_EXEC, nil, []byte("bb"), nil)), 0o755)})
	a := newTestArchive(t, kdeb, bdeb)
	cat := newMemCatalog()
	s := &Store{Dir: t.TempDir(), Catalog: cat, Mirror: &debmirror.Mirror{URL: a.srv.URL, Suite: "bookworm", Verifier: okVerifier{}, CacheDir: t.TempDir()}}

	var stages sync.Map
	ctx := progress.WithSink(context.Background(), func(e progress.Event) { stages.Store(e.Stage, true) })
	// Four concurrent pulls share one download and one publish.
	var wg sync.WaitGroup
	results := make([]*model.Kernel, 4)
	errs := make([]error, 4)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = s.Pull(ctx, "debian")
		}()
	}
	wg.Wait()
	for i := range results {
		if errs[i] != nil {
			t.Fatalf("pull %d: %v", i, errs[i])
		}
		if results[i].Dir != results[0].Dir {
			t.Errorf("pull %d got %s, pull 0 got %s", i, results[i].Dir, results[0].Dir)
		}
	}
	if n := a.debGets.Load(); n != 2 {
		t.Errorf("%d .deb downloads for 4 concurrent pulls, want 2 (kernel + busybox)", n)
	}
	if n := cat.puts.Load(); n != 1 {
		t.Errorf("%d catalog writes, want 1", n)
	}
	k := results[0]
	if k.Source != "debian:linux-image-"+testKver+"=1" || k.Version != testKver || k.Initrd == "" {
		t.Errorf("record %+v", k)
	}
	checkPublished(t, s, k)
	for _, st := range []string{"resolve", "download", "extract", "vmlinux", "initramfs", "publish"} {
		if _, ok := stages.Load(st); !ok {
			t.Errorf("no progress stage %q", st)
		}
	}
	// Pulling again is a no-op.
	k2, err := s.Pull(context.Background(), "debian")
	if err != nil || k2.Dir != k.Dir || cat.puts.Load() != 1 {
		t.Errorf("re-pull: %+v, %v, puts %d", k2, err, cat.puts.Load())
	}
	if _, err := s.Pull(context.Background(), "fedora"); err == nil {
		t.Error("unknown source accepted")
	}
}

func TestPullTamperedKernelRejected(t *testing.T) {
	kdeb := makeDeb(t, "xz", kernelDebEntries(t))
	bdeb := makeDeb(t, "xz", []tarEntry{file("./bin/busybox", string(buildELF(elf.ET_EXEC, nil, []byte("bb"), nil)), 0o755)})
	a := newTestArchive(t, kdeb, bdeb)
	evil := bytes.Clone(kdeb)
	evil[len(evil)-10] ^= 0xff
	a.files[a.kernelFn] = evil
	cat := newMemCatalog()
	s := &Store{Dir: t.TempDir(), Catalog: cat, Mirror: &debmirror.Mirror{URL: a.srv.URL, Suite: "bookworm", Verifier: okVerifier{}}}
	_, err := s.Pull(context.Background(), "debian")
	if !errors.Is(err, debmirror.ErrVerify) {
		t.Fatalf("err = %v, want debmirror.ErrVerify", err)
	}
	if ents, _ := os.ReadDir(s.Dir); len(ents) != 0 || len(cat.m) != 0 {
		t.Errorf("left behind after rejected pull: %v", ents)
	}
}

func TestConcurrentImportsOfOneName(t *testing.T) {
	vmPath := filepath.Join(t.TempDir(), "vmlinux")
	os.WriteFile(vmPath, testVmlinux(false), 0o644)
	cat := newMemCatalog()
	s := &Store{Dir: t.TempDir(), Catalog: cat}
	var wg sync.WaitGroup
	var ok, exists atomic.Int32
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.Import(context.Background(), "k", ImportSource{Vmlinux: vmPath})
			switch {
			case err == nil:
				ok.Add(1)
			case errors.Is(err, model.ErrAlreadyExists):
				exists.Add(1)
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if ok.Load() != 1 || exists.Load() != 3 || cat.puts.Load() != 1 {
		t.Fatalf("ok=%d exists=%d puts=%d; want 1, 3, 1", ok.Load(), exists.Load(), cat.puts.Load())
	}
	if len(s.nameLocks) != 0 {
		t.Errorf("name locks leak: %v", s.nameLocks)
	}
}
