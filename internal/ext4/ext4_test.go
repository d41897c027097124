package ext4

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/testreq"
)

func TestBuildCommandLine(t *testing.T) {
	rec := &hostexec.Recorder{}
	dir := t.TempDir()
	out := filepath.Join(dir, "img.ext4")
	err := Build(context.Background(), rec, BuildOptions{SourceDir: dir, Out: out, SizeBytes: 64 << 20, Label: "rootfs", Inodes: 5000})
	if err != nil {
		t.Fatal(err)
	}
	want := "mkfs.ext4 -F -q -t ext4 -b 4096 -d " + dir + " -L rootfs -N 5000 -E lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0 " + out + ".tmp"
	if got := rec.Lines(); len(got) != 1 || got[0] != want {
		t.Fatalf("command lines:\n got %q\nwant %q", got, want)
	}
	st, err := os.Stat(out)
	if err != nil || st.Size() != 64<<20 {
		t.Fatalf("published image: %v %v", st, err)
	}
	if _, err := os.Stat(out + ".tmp"); !os.IsNotExist(err) {
		t.Errorf("temporary file left behind: %v", err)
	}
}

func TestBuildFailureLeavesNothing(t *testing.T) {
	rec := &hostexec.Recorder{Respond: func(hostexec.Cmd) (hostexec.Result, error) {
		return hostexec.Result{ExitCode: 1}, &hostexec.ExitError{Cmd: "mkfs.ext4", ExitCode: 1, Stderr: "__populate_fs: Could not allocate block in ext2 filesystem while writing file \"big\""}
	}}
	dir := t.TempDir()
	out := filepath.Join(dir, "img.ext4")
	err := Build(context.Background(), rec, BuildOptions{SourceDir: dir, Out: out, SizeBytes: 8 << 20})
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("error = %v, want ErrNoSpace", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 0 {
		t.Errorf("left behind: %v", entries)
	}
}

func TestBuildValidation(t *testing.T) {
	rec := &hostexec.Recorder{}
	dir := t.TempDir()
	for name, o := range map[string]BuildOptions{
		"small":  {SourceDir: dir, Out: dir + "/x", SizeBytes: 1024},
		"label":  {SourceDir: dir, Out: dir + "/x", SizeBytes: 8 << 20, Label: strings.Repeat("l", 17)},
		"owner":  {SourceDir: dir, Out: dir + "/x", SizeBytes: 8 << 20, RootOwner: "root"},
		"source": {SourceDir: dir + "/missing", Out: dir + "/x", SizeBytes: 8 << 20},
	} {
		if err := Build(context.Background(), rec, o); err == nil {
			t.Errorf("%s: Build accepted %+v", name, o)
		}
	}
	if n := len(rec.Calls()); n != 0 {
		t.Errorf("invalid builds ran %d commands", n)
	}
}

func TestPlanRefusesBeforeWriting(t *testing.T) {
	state := map[string]probed{"/": {kind: kindDir}, "/etc": {kind: kindDir}, "/etc/passwd": {kind: kindFile}, "/nope": {kind: kindMissing}}
	cases := map[string]func(b *Batch){
		"missing parent":  func(b *Batch) { b.WriteFile("/nope/x", nil, 0o644, 0, 0) },
		"file as parent":  func(b *Batch) { b.WriteFile("/etc/passwd/x", nil, 0o644, 0, 0) },
		"dir overwritten": func(b *Batch) { b.WriteFile("/etc", nil, 0o644, 0, 0) },
		"mkdir over file": func(b *Batch) { b.Mkdir("/etc/passwd", 0o755, 0, 0) },
		"chown missing":   func(b *Batch) { b.Chown("/nope", 1, 1) },
	}
	for name, fill := range cases {
		b := &Batch{}
		fill(b)
		st := map[string]probed{}
		for k, v := range state {
			st[k] = v
		}
		if _, err := plan(b.ops, st, t.TempDir()); err == nil {
			t.Errorf("%s: plan accepted it", name)
		}
	}
	b := &Batch{}
	b.WriteFile("/a\nb", nil, 0o644, 0, 0)
	if err := Apply(context.Background(), &hostexec.Recorder{}, "/dev/null", b); !errors.Is(err, ErrUnrepresentable) {
		t.Errorf("newline path: %v", err)
	}
}

// integration: real e2fsprogs

func tools(t *testing.T) {
	testreq.Tools(t, "mkfs.ext4", "debugfs", "e2fsck", "resize2fs")
}

func TestIntegrationBuildAndInspect(t *testing.T) {
	tools(t)
	testreq.Root(t)
	ctx := context.Background()
	r := hostexec.Real{}
	src := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(src, "etc"), 0o755))
	must(os.WriteFile(filepath.Join(src, "etc/shadow"), []byte("root:*:1::::::\n"), 0o640))
	must(os.Chown(filepath.Join(src, "etc/shadow"), 0, 42))
	must(os.MkdirAll(filepath.Join(src, "usr/bin"), 0o755))
	must(os.WriteFile(filepath.Join(src, "usr/bin/sudo"), []byte("#!/bin/true\n"), 0o755))
	must(os.Chmod(filepath.Join(src, "usr/bin/sudo"), 0o4755|os.ModeSetuid))
	must(os.MkdirAll(filepath.Join(src, "home/user"), 0o750))
	must(os.Chown(filepath.Join(src, "home/user"), 1000, 1000))
	must(os.WriteFile(filepath.Join(src, "home/user/f"), bytes.Repeat([]byte("x"), 10000), 0o600))
	must(os.Chown(filepath.Join(src, "home/user/f"), 1000, 1000))
	must(os.Link(filepath.Join(src, "home/user/f"), filepath.Join(src, "home/user/hard")))
	must(os.Symlink("../../etc/shadow", filepath.Join(src, "home/user/link")))
	long := "/" + strings.Repeat("long/", 15) + "target"
	must(os.Symlink(long, filepath.Join(src, "slow-link")))
	must(os.WriteFile(filepath.Join(src, "a \"quoted\" ñame"), []byte("q"), 0o644))
	must(syscall.Mkfifo(filepath.Join(src, "fifo"), 0o600))

	img := filepath.Join(t.TempDir(), "root.ext4")
	must(Build(ctx, r, BuildOptions{SourceDir: src, Out: img, SizeBytes: 64 << 20, Label: "rootfs"}))
	must(Check(ctx, r, img))

	stat := func(p string) FileInfo {
		t.Helper()
		fi, err := Stat(ctx, r, img, p)
		if err != nil {
			t.Fatalf("stat %s: %v", p, err)
		}
		return fi
	}
	if fi := stat("/etc/shadow"); fi.Mode != 0o640 || fi.UID != 0 || fi.GID != 42 {
		t.Errorf("/etc/shadow: %+v", fi)
	}
	if fi := stat("/usr/bin/sudo"); fi.Mode != 0o755|os.ModeSetuid || fi.UID != 0 {
		t.Errorf("sudo: %+v", fi)
	}
	if fi := stat("/home/user"); fi.Mode != os.ModeDir|0o750 || fi.UID != 1000 || fi.GID != 1000 {
		t.Errorf("/home/user: %+v", fi)
	}
	f, h := stat("/home/user/f"), stat("/home/user/hard")
	if f.Inode != h.Inode || f.Links != 2 || f.Size != 10000 {
		t.Errorf("hard link: %+v vs %+v", f, h)
	}
	if fi := stat("/home/user/link"); fi.Mode&os.ModeSymlink == 0 || fi.Target != "../../etc/shadow" {
		t.Errorf("symlink: %+v", fi)
	}
	if fi := stat("/slow-link"); fi.Target != long {
		t.Errorf("slow symlink target %q want %q", fi.Target, long)
	}
	if fi := stat("/fifo"); fi.Mode&os.ModeNamedPipe == 0 {
		t.Errorf("fifo: %+v", fi)
	}
	if fi := stat("/"); fi.UID != 0 || !fi.IsDir() {
		t.Errorf("root: %+v", fi)
	}
	if data, err := ReadFile(ctx, r, img, "/a \"quoted\" ñame"); err != nil || string(data) != "q" {
		t.Errorf("read quoted name: %q %v", data, err)
	}
	if data, err := ReadFile(ctx, r, img, "/home/user/f"); err != nil || len(data) != 10000 {
		t.Errorf("read f: %d %v", len(data), err)
	}
	if _, err := Stat(ctx, r, img, "/missing"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing: %v", err)
	}
	if _, err := ReadFile(ctx, r, img, "/etc"); err == nil {
		t.Error("ReadFile of a directory succeeded")
	}

	dst := t.TempDir()
	must(Extract(ctx, r, img, "/home/user", dst))
	if data, err := os.ReadFile(filepath.Join(dst, "user/f")); err != nil || len(data) != 10000 {
		t.Errorf("extracted f: %d %v", len(data), err)
	}
	if st, err := os.Lstat(filepath.Join(dst, "user/f")); err != nil || st.Sys().(*syscall.Stat_t).Uid != 1000 {
		t.Errorf("extracted owner: %v", err)
	}
}

func TestIntegrationBatch(t *testing.T) {
	tools(t)
	ctx := context.Background()
	r := hostexec.Real{}
	img := filepath.Join(t.TempDir(), "work.ext4")
	if err := Create(ctx, r, img, 32<<20, "work"); err != nil {
		t.Fatal(err)
	}
	names := []string{"plain", "with space", `quo"te`, "ünïcødé", "-dash", "<12>", "tab\there", `back\slash`, "#hash", "!bang"}
	b := &Batch{}
	b.Mkdir("/etc/ssh/sshd_config.d", 0o755, 0, 0)
	b.Mkdir("/root/.ssh", 0o700, 0, 0)
	b.WriteFile("/root/.ssh/authorized_keys", []byte("ssh-ed25519 AAAA test\n"), 0o600, 0, 0)
	b.WriteFile("/etc/shadow", []byte("root:*:1::::::\n"), 0o640, 0, 42)
	b.WriteFile("/etc/sudo", []byte("bin"), 0o755|os.ModeSetuid, 0, 0)
	b.Mkdir("/d", 0o755, 0, 0)
	for _, n := range names {
		b.WriteFile("/d/"+n, []byte(n), 0o644, 1000, 1001)
	}
	b.Mkdir("/d/sub dir", 0o2775, 5, 6)
	b.Symlink("/d/sub dir/link", "../target with \"quotes\"")
	b.WriteFile("/gone", []byte("x"), 0o644, 0, 0)
	b.Remove("/gone")
	b.Remove("/never-existed")
	if err := Apply(ctx, r, img, b); err != nil {
		t.Fatal(err)
	}
	if err := Check(ctx, r, img); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		fi, err := Stat(ctx, r, img, "/d/"+n)
		if err != nil || fi.UID != 1000 || fi.GID != 1001 || fi.Mode != 0o644 {
			t.Errorf("%q: %+v %v", n, fi, err)
			continue
		}
		if data, err := ReadFile(ctx, r, img, "/d/"+n); err != nil || string(data) != n {
			t.Errorf("%q content %q %v", n, data, err)
		}
	}
	if fi, err := Stat(ctx, r, img, "/etc/sudo"); err != nil || fi.Mode != 0o755|os.ModeSetuid {
		t.Errorf("setuid: %+v %v", fi, err)
	}
	if fi, err := Stat(ctx, r, img, "/d/sub dir"); err != nil || fi.Mode != os.ModeDir|os.ModeSetgid|0o775 || fi.UID != 5 {
		t.Errorf("setgid dir: %+v %v", fi, err)
	}
	if fi, err := Stat(ctx, r, img, "/d/sub dir/link"); err != nil || fi.Target != `../target with "quotes"` {
		t.Errorf("symlink: %+v %v", fi, err)
	}
	if _, err := Stat(ctx, r, img, "/gone"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("/gone still there: %v", err)
	}
	if fi, err := Stat(ctx, r, img, "/root/.ssh"); err != nil || fi.Mode != os.ModeDir|0o700 {
		t.Errorf("/root/.ssh: %+v %v", fi, err)
	}

	// Second batch: replace, re-mkdir (attributes only), chmod/chown, and a
	// refused batch that must not touch the image.
	b = &Batch{}
	b.WriteFile("/root/.ssh/authorized_keys", []byte("new\n"), 0o644, 0, 0)
	b.Mkdir("/root/.ssh", 0o750, 0, 0)
	b.Chown("/d/plain", 7, 8)
	b.Chmod("/d/plain", 0o4711)
	b.Symlink("/d/with space", "replaced")
	if err := Apply(ctx, r, img, b); err != nil {
		t.Fatal(err)
	}
	if data, _ := ReadFile(ctx, r, img, "/root/.ssh/authorized_keys"); string(data) != "new\n" {
		t.Errorf("replace: %q", data)
	}
	if fi, _ := Stat(ctx, r, img, "/root/.ssh"); fi.Mode != os.ModeDir|0o750 {
		t.Errorf("re-mkdir mode: %v", fi.Mode)
	}
	if fi, _ := Stat(ctx, r, img, "/d/plain"); fi.UID != 7 || fi.GID != 8 || fi.Mode != 0o711|os.ModeSetuid {
		t.Errorf("chown/chmod: %+v", fi)
	}
	if fi, _ := Stat(ctx, r, img, "/d/with space"); fi.Target != "replaced" {
		t.Errorf("symlink over file: %+v", fi)
	}
	before, _ := os.ReadFile(img)
	b = &Batch{}
	b.WriteFile("/ok", []byte("x"), 0o644, 0, 0)
	b.WriteFile("/no/such/dir/x", []byte("x"), 0o644, 0, 0)
	if err := Apply(ctx, r, img, b); err == nil {
		t.Fatal("batch with a missing parent was applied")
	}
	after, _ := os.ReadFile(img)
	if !bytes.Equal(before, after) {
		t.Error("refused batch modified the image")
	}
	b = &Batch{}
	b.Remove("/d") // not empty: debugfs itself reports it
	var ae *ApplyError
	if err := Apply(ctx, r, img, b); !errors.As(err, &ae) {
		t.Errorf("removing a non-empty dir: %v", err)
	}
	if err := Check(ctx, r, img); err != nil {
		t.Fatal(err)
	}
}

func TestIntegrationGrowAndCheck(t *testing.T) {
	tools(t)
	ctx := context.Background()
	r := hostexec.Real{}
	img := filepath.Join(t.TempDir(), "g.ext4")
	if err := Create(ctx, r, img, 16<<20, "g"); err != nil {
		t.Fatal(err)
	}
	b := &Batch{}
	b.WriteFile("/keep", []byte("kept"), 0o644, 0, 0)
	if err := Apply(ctx, r, img, b); err != nil {
		t.Fatal(err)
	}
	if err := Grow(ctx, r, img, 64<<20); err != nil {
		t.Fatal(err)
	}
	if err := Check(ctx, r, img); err != nil {
		t.Fatal(err)
	}
	res, err := r.Run(ctx, hostexec.Cmd{Name: "dumpe2fs", Args: []string{"-h", img}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(res.Stdout), "Block count:              16384") {
		t.Errorf("filesystem not grown to 16384 4k blocks:\n%s", res.Stdout)
	}
	if data, _ := ReadFile(ctx, r, img, "/keep"); string(data) != "kept" {
		t.Errorf("content lost: %q", data)
	}
	if err := Grow(ctx, r, img, 8<<20); err == nil {
		t.Error("shrink accepted")
	}
	// corrupt the superblock magic: Check must fail
	f, err := os.OpenFile(img, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{0, 0}, 1024+56); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := Check(ctx, r, img); err == nil {
		t.Error("Check passed a corrupt image")
	}
}
