package kernel

import (
	"bytes"
	"context"
	"debug/elf"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/testreq"
)

const testKver = "6.1.0-test-amd64"

// testModules lays out /lib/modules/<ver> like the Debian cloud kernel
// package: no modules.dep, ext4 built in, one compressed module.
func testModules(t testing.TB) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), testKver)
	mods := map[string][]string{
		"kernel/drivers/virtio/virtio_ring.ko":                      nil,
		"kernel/drivers/virtio/virtio.ko":                           {"virtio_ring"},
		"kernel/drivers/virtio/virtio_pci_legacy_dev.ko":            nil,
		"kernel/drivers/virtio/virtio_pci_modern_dev.ko":            nil,
		"kernel/drivers/virtio/virtio_pci.ko":                       {"virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio", "virtio_ring"},
		"kernel/drivers/virtio/virtio_mmio.ko":                      {"virtio", "virtio_ring"},
		"kernel/drivers/block/virtio_blk.ko":                        {"virtio", "virtio_ring"},
		"kernel/net/core/failover.ko":                               nil,
		"kernel/drivers/net/net_failover.ko":                        {"failover"},
		"kernel/drivers/net/virtio_net.ko.xz":                       {"net_failover", "virtio", "virtio_ring"},
		"kernel/drivers/char/hw_random/virtio-rng.ko":               {"virtio", "virtio_ring"},
		"kernel/drivers/char/virtio_console.ko":                     {"virtio", "virtio_ring"},
		"kernel/net/vmw_vsock/vsock.ko":                             nil,
		"kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko": {"vsock"},
		"kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko":        {"vmw_vsock_virtio_transport_common", "virtio", "virtio_ring", "vsock"},
		"kernel/lib/unrelated.ko":                                   nil,
	}
	for rel, deps := range mods {
		p := filepath.Join(root, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		data := testModule(NormalizeModule(rel), deps...)
		if strings.HasSuffix(rel, ".xz") {
			data = compressWith(t, "xz", data)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(root, "modules.builtin"), []byte("kernel/fs/ext4/ext4.ko\nkernel/crypto/crc32c_generic.ko\n"), 0o644)
	return root
}

func checkOrder(t *testing.T, idx *ModuleIndex, order []string) {
	t.Helper()
	pos := map[string]int{}
	for i, m := range order {
		if _, dup := pos[m]; dup {
			t.Fatalf("%s listed twice in %v", m, order)
		}
		pos[m] = i
	}
	for _, m := range order {
		for _, d := range idx.Deps[m] {
			if pd, ok := pos[d]; !ok || pd > pos[m] {
				t.Errorf("%s loads before its dependency %s: %v", m, d, order)
			}
		}
	}
}

func TestModuleResolve(t *testing.T) {
	dir := testModules(t)
	idx, err := LoadModuleIndex(dir)
	if err != nil {
		t.Fatal(err)
	}
	order, missing, err := idx.Resolve(append(slices.Clone(DefaultModules), "no_such_module"))
	if err != nil {
		t.Fatal(err)
	}
	checkOrder(t, idx, order)
	if !slices.Equal(missing, []string{"no_such_module"}) {
		t.Errorf("missing = %v, want [no_such_module] (ext4 and crc32c_generic are built in)", missing)
	}
	if len(order) != 15 || slices.Contains(order, "unrelated") || slices.Contains(order, "ext4") {
		t.Errorf("order = %v", order)
	}
	if slices.Index(order, "virtio_ring") > slices.Index(order, "virtio") {
		t.Error("virtio_ring must load before virtio")
	}
	// the generated closure is transitive
	if !slices.Contains(idx.Deps["net_failover"], "failover") || !slices.Contains(idx.Deps["virtio_net"], "failover") {
		t.Errorf("virtio_net deps %v lack failover", idx.Deps["virtio_net"])
	}

	// Round trip through modules.dep gives the same plan.
	if err := idx.WriteModulesDep(); err != nil {
		t.Fatal(err)
	}
	dep, _ := os.ReadFile(filepath.Join(dir, "modules.dep"))
	if !strings.Contains(string(dep), "kernel/drivers/net/virtio_net.ko.xz: ") {
		t.Errorf("modules.dep:\n%s", dep)
	}
	idx2, err := LoadModuleIndex(dir)
	if err != nil {
		t.Fatal(err)
	}
	order2, _, err := idx2.Resolve(DefaultModules)
	if err != nil {
		t.Fatal(err)
	}
	checkOrder(t, idx2, order2)
	if len(order2) != len(order) {
		t.Errorf("after modules.dep round trip: %v, before %v", order2, order)
	}
}

func TestModuleCycle(t *testing.T) {
	idx := &ModuleIndex{Files: map[string]string{"a": "a.ko", "b": "b.ko"}, Deps: map[string][]string{"a": {"b"}, "b": {"a"}}}
	if _, _, err := idx.Resolve([]string{"a"}); err == nil {
		t.Fatal("cycle not reported")
	}
}

func TestBuildInitramfs(t *testing.T) {
	mods := testModules(t)
	bb := filepath.Join(t.TempDir(), "busybox")
	os.WriteFile(bb, buildELF(elf.ET_EXEC, nil, []byte("busybox"), nil), 0o755)
	out := filepath.Join(t.TempDir(), "initrd.img")
	res, err := BuildInitramfs(context.Background(), InitramfsOptions{Output: out, Busybox: bb, ModulesDir: mods})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Missing) != 0 || len(res.Modules) != 15 {
		t.Fatalf("result %+v", res)
	}
	entries := map[string]CpioEntry{}
	var names []string
	err = WalkInitramfs(out, func(e CpioEntry) error {
		entries[e.Name] = e
		names = append(names, e.Name)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// parents come before children (the kernel needs that)
	seen := map[string]bool{}
	for _, n := range names {
		if d := filepath.Dir(n); d != "." && !seen[d] {
			t.Errorf("%s precedes its directory %s", n, d)
		}
		seen[n] = true
	}
	if e := entries["init"]; e.Mode != 0o100755 || string(e.Data) != initScript {
		t.Errorf("init entry mode %o", e.Mode)
	}
	if e := entries["bin/sh"]; e.Mode&0o170000 != 0o120000 || string(e.Data) != "busybox" {
		t.Errorf("bin/sh = %+v", e)
	}
	if e, ok := entries["dev/console"]; !ok || e.Mode != 0o020600 {
		t.Errorf("dev/console = %+v", e)
	}
	vnet := "lib/modules/" + testKver + "/kernel/drivers/net/virtio_net.ko"
	if e, ok := entries[vnet]; !ok || !bytes.HasPrefix(e.Data, elfMagic) {
		t.Errorf("%s missing or still compressed", vnet)
	}
	list := strings.Fields(string(entries["etc/banger/modules"].Data))
	if len(list) != len(res.Modules) {
		t.Fatalf("etc/banger/modules has %d lines, want %d", len(list), len(res.Modules))
	}
	for i, p := range list {
		if NormalizeModule(p) != res.Modules[i] {
			t.Errorf("line %d = %s, want module %s", i, p, res.Modules[i])
		}
		if _, ok := entries[strings.TrimPrefix(p, "/")]; !ok {
			t.Errorf("listed module %s not in archive", p)
		}
	}
	listed, err := ListInitramfs(out)
	if err != nil || !slices.Equal(listed, names) {
		t.Errorf("ListInitramfs = %v, %v", listed, err)
	}
}

// TestInitramfsWithHostBusybox cross-checks the archive with another
// implementation (busybox cpio) and the /init script with busybox sh -n.
func TestInitramfsWithHostBusybox(t *testing.T) {
	testreq.Tools(t, "busybox")
	mods := testModules(t)
	bbPath, err := hostBusybox()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "initrd.img")
	if _, err := BuildInitramfs(context.Background(), InitramfsOptions{Output: out, Busybox: bbPath, ModulesDir: mods}); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(out)
	r := hostexec.Real{}
	res, err := r.Run(context.Background(), hostexec.Cmd{Name: "busybox", Args: []string{"zcat"}, Stdin: bytes.NewReader(raw)})
	if err != nil {
		t.Fatal(err)
	}
	res, err = r.Run(context.Background(), hostexec.Cmd{Name: "busybox", Args: []string{"cpio", "-t"}, Stdin: bytes.NewReader(res.Stdout)})
	if err != nil {
		t.Fatal(err)
	}
	listed := strings.Fields(string(res.Stdout))
	ours, _ := ListInitramfs(out)
	if !slices.Equal(listed, ours) {
		t.Errorf("busybox cpio lists\n%v\nwe list\n%v", listed, ours)
	}
	if _, err := r.Run(context.Background(), hostexec.Cmd{Name: "busybox", Args: []string{"sh", "-n"}, Stdin: strings.NewReader(initScript)}); err != nil {
		t.Errorf("/init has a shell syntax error: %v", err)
	}
}

func hostBusybox() (string, error) {
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", os.ErrNotExist
}

func TestBuildInitramfsErrors(t *testing.T) {
	bb := filepath.Join(t.TempDir(), "busybox")
	os.WriteFile(bb, []byte("#!/bin/sh\n"), 0o755)
	out := filepath.Join(t.TempDir(), "initrd.img")
	if _, err := BuildInitramfs(context.Background(), InitramfsOptions{Output: out, Busybox: bb}); err == nil {
		t.Error("a non-ELF busybox was accepted")
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("output written despite the error")
	}
	if _, err := BuildInitramfs(context.Background(), InitramfsOptions{Output: out, Busybox: bb, ModulesDir: t.TempDir()}); err == nil {
		t.Error("an empty modules dir was accepted")
	}
}

func FuzzReadCpio(f *testing.F) {
	var b bytes.Buffer
	cw := &cpioWriter{w: &b}
	cw.Dir("bin", 0o755)
	cw.File("bin/x", 0o755, []byte("abc"))
	cw.Symlink("l", "x")
	cw.Close()
	f.Add(b.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		_ = readCpio(bytes.NewReader(data), func(CpioEntry) error { return nil })
	})
}
