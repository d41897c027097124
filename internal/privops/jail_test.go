package privops

// Tests of PrepareJail and RemoveJail (jail.go) against a hostile owner
// (uid 4242): the chroot base is root's, every source is opened once below
// a managed root, and nothing the owner planted is ever followed. They need
// root.

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/bangerdev/banger/internal/testreq"
)

// jailFixture: a managed root of the hostile owner with a kernel in it, a
// victim outside, and root's jail base.
type jailFixture struct {
	l      *Local
	root   string // managed root (the owner's)
	victim string // root's file outside
	base   string // jailer chroot base (root's)
	kernel string // the owner's file below root
}

func newJailFixture(t *testing.T) *jailFixture {
	t.Helper()
	testreq.Root(t)
	root, victim := managedRoot(t)
	f := &jailFixture{root: root, victim: victim, base: filepath.Join(filepath.Dir(root), "banger-jail"),
		kernel: filepath.Join(root, "kernels", "vmlinux")}
	if err := os.MkdirAll(filepath.Dir(f.kernel), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.kernel, []byte("kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{filepath.Dir(f.kernel), f.kernel} {
		if err := os.Chown(p, hostileUID, hostileUID); err != nil {
			t.Fatal(err)
		}
	}
	f.l = helperLocal(root)
	f.l.JailerChrootBase = f.base
	return f
}

func (f *jailFixture) spec() JailSpec {
	return JailSpec{ExecName: "firecracker", ID: "vm-1", UID: hostileUID, GID: hostileUID,
		Files: []JailFile{{Name: "vmlinux", Source: f.kernel}}, Create: []string{"serial.log"}}
}

func (f *jailFixture) idDir() string { return filepath.Join(f.base, "firecracker", "vm-1") }

func statOwner(t *testing.T, p string) (uid uint32, mode uint32) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	return st.Uid, st.Mode & 0o7777
}

func TestPrepareJailLayout(t *testing.T) {
	f := newJailFixture(t)
	ctx := context.Background()
	chroot, err := f.l.PrepareJail(ctx, f.spec())
	if err != nil {
		t.Fatal(err)
	}
	if chroot != filepath.Join(f.idDir(), "root") {
		t.Fatalf("chroot %s", chroot)
	}
	for p, want := range map[string][2]uint32{
		f.base:                              {0, 0o711},
		filepath.Dir(f.idDir()):             {0, 0o711},
		f.idDir():                           {0, 0o711},
		chroot:                              {0, 0o755},
		filepath.Join(chroot, "run"):        {hostileUID, 0o700},
		filepath.Join(chroot, "serial.log"): {hostileUID, 0o640},
	} {
		if uid, mode := statOwner(t, p); uid != want[0] || mode != want[1] {
			t.Errorf("%s: uid %d mode %04o, want %d %04o", p, uid, mode, want[0], want[1])
		}
	}
	var k, j unix.Stat_t
	unix.Stat(f.kernel, &k)
	unix.Stat(filepath.Join(chroot, "vmlinux"), &j)
	if k.Ino != j.Ino {
		t.Error("kernel not hard-linked into the jail")
	}
	// A second start replaces the stale jail.
	if _, err := f.l.PrepareJail(ctx, f.spec()); err != nil {
		t.Fatalf("prepare over a stale jail: %v", err)
	}
	if err := f.l.RemoveJail(ctx, JailSpec{ExecName: "firecracker", ID: "vm-1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(f.idDir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("jail left behind: %v", err)
	}
	if _, err := os.Stat(f.kernel); err != nil {
		t.Errorf("RemoveJail removed the kernel: %v", err)
	}
	if err := f.l.RemoveJail(ctx, JailSpec{ExecName: "firecracker", ID: "vm-1"}); err != nil {
		t.Errorf("RemoveJail of a missing jail: %v", err)
	}
}

// #15.7: the chroot base lay in the owner's state directory. A base the
// owner can write (here: owned by it) is refused before anything is
// created in it, so a symlink the owner plants there is never followed.
func TestPrepareJailRefusesOwnerWritableBase(t *testing.T) {
	f := newJailFixture(t)
	victimDir := filepath.Join(filepath.Dir(f.victim), "victim-dir")
	if err := os.Mkdir(victimDir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, base := range []string{filepath.Join(f.root, "jail"), f.base} {
		if err := os.MkdirAll(base, 0o755); err != nil {
			t.Fatal(err)
		}
		os.Chown(base, hostileUID, hostileUID)
		// the owner plants <base>/firecracker -> a directory of root's
		os.Symlink(victimDir, filepath.Join(base, "firecracker"))
		f.l.JailerChrootBase = base
		if _, err := f.l.PrepareJail(context.Background(), f.spec()); !errors.Is(err, ErrUnsafePath) {
			t.Errorf("jail base %s owned by the owner: %v, want ErrUnsafePath", base, err)
		}
		if err := f.l.RemoveJail(context.Background(), JailSpec{ExecName: "firecracker", ID: "vm-1"}); !errors.Is(err, ErrUnsafePath) {
			t.Errorf("remove below an owner's base %s: %v, want ErrUnsafePath", base, err)
		}
	}
	if ents, _ := os.ReadDir(victimDir); len(ents) != 0 {
		t.Errorf("root created %v in %s through the planted symlink", ents, victimDir)
	}
	// A symlink at <base>/<exec> in root's base (planted by a mistake of
	// root's) is not followed either.
	os.Chown(f.base, 0, 0)
	os.Chmod(f.base, 0o711)
	if _, err := f.l.PrepareJail(context.Background(), f.spec()); err == nil || !strings.Contains(err.Error(), "firecracker") {
		t.Errorf("exec dir is a symlink: %v", err)
	}
	if ents, _ := os.ReadDir(victimDir); len(ents) != 0 {
		t.Errorf("root created %v in %s through the planted symlink", ents, victimDir)
	}
}

// Sources are opened once below a managed root without symlinks and must be
// the owner's (or root's).
func TestPrepareJailSources(t *testing.T) {
	f := newJailFixture(t)
	ctx := context.Background()
	link := filepath.Join(f.root, "kernels", "shadow")
	os.Symlink(f.victim, link)
	evil := filepath.Join(f.root, "evil")
	os.Symlink(filepath.Dir(f.victim), evil)
	foreign := filepath.Join(f.root, "kernels", "foreign")
	os.WriteFile(foreign, []byte("x"), 0o644)
	os.Chown(foreign, 5555, 5555)
	for name, src := range map[string]string{
		"symlinked file": link,
		"symlinked dir":  filepath.Join(evil, filepath.Base(f.victim)),
		"outside roots":  f.victim,
		"traversal":      f.root + "/../" + filepath.Base(f.victim),
		"another user's": foreign,
		"directory":      filepath.Dir(f.kernel),
	} {
		s := f.spec()
		s.Files[0].Source = src
		if _, err := f.l.PrepareJail(ctx, s); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%s: %v, want ErrInvalidArgument", name, err)
		}
		if _, err := os.Lstat(f.idDir()); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: a failed prepare left %s", name, f.idDir())
		}
	}
	assertVictim(t, f.victim)
	var st unix.Stat_t
	unix.Stat(f.victim, &st)
	if st.Nlink != 1 {
		t.Errorf("victim got %d links", st.Nlink)
	}
}

// The owner can write run/ in the jail: whatever it plants there
// (symlinks to root's files and directories, deep trees) is removed, never
// followed, by RemoveJail and by the next PrepareJail.
func TestRemoveJailNeverFollowsPlantedSymlinks(t *testing.T) {
	f := newJailFixture(t)
	ctx := context.Background()
	victimDir := filepath.Join(filepath.Dir(f.victim), "victim-dir")
	os.Mkdir(victimDir, 0o755)
	keep := filepath.Join(victimDir, "keep")
	os.WriteFile(keep, []byte("keep"), 0o644)
	plant := func() {
		chroot, err := f.l.PrepareJail(ctx, f.spec())
		if err != nil {
			t.Fatal(err)
		}
		run := filepath.Join(chroot, "run")
		os.Symlink(victimDir, filepath.Join(run, "dir-link"))
		os.Symlink(f.victim, filepath.Join(run, "file-link"))
		os.MkdirAll(filepath.Join(run, "a", "b"), 0o755)
		os.Symlink(victimDir, filepath.Join(run, "a", "b", "c"))
		os.Link(f.victim, filepath.Join(run, "hard")) // as root here; the owner could with protected_hardlinks=0
	}
	plant()
	if err := f.l.RemoveJail(ctx, JailSpec{ExecName: "firecracker", ID: "vm-1"}); err != nil {
		t.Fatal(err)
	}
	plant()
	if _, err := f.l.PrepareJail(ctx, f.spec()); err != nil { // removes the stale jail
		t.Fatal(err)
	}
	if err := f.l.RemoveJail(ctx, JailSpec{ExecName: "firecracker", ID: "vm-1"}); err != nil {
		t.Fatal(err)
	}
	assertVictim(t, f.victim)
	if b, err := os.ReadFile(keep); err != nil || string(b) != "keep" {
		t.Errorf("%s removed through a planted symlink: %v", keep, err)
	}
	if _, err := os.Lstat(f.idDir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("jail left behind: %v", err)
	}
}

func TestPrepareJailWithoutBase(t *testing.T) {
	l := NewLocal(nil, nil)
	_, err := l.PrepareJail(context.Background(), JailSpec{ExecName: "firecracker", ID: "a", UID: 1, GID: 1})
	if !errors.Is(err, ErrNoJailBase) {
		t.Errorf("prepare without a base: %v", err)
	}
}

func TestValidateJailSpec(t *testing.T) {
	good := JailSpec{ExecName: "firecracker", ID: "vm-1", UID: 1, GID: 1,
		Files: []JailFile{{Name: "vmlinux", Source: "/s/k"}, {Name: "drive-root", Source: "/dev/mapper/banger-x"}}, Create: []string{"serial.log"}}
	if err := ValidateJailSpec(good); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*JailSpec){
		"exec qemu":    func(s *JailSpec) { s.ExecName = "qemu-system-x86_64" },
		"exec path":    func(s *JailSpec) { s.ExecName = "/usr/bin/firecracker" },
		"id dot-dot":   func(s *JailSpec) { s.ID = ".." },
		"id slash":     func(s *JailSpec) { s.ID = "a/b" },
		"id long":      func(s *JailSpec) { s.ID = strings.Repeat("a", 65) },
		"uid -1":       func(s *JailSpec) { s.UID = -1 },
		"name slash":   func(s *JailSpec) { s.Files[0].Name = "a/b" },
		"name dot":     func(s *JailSpec) { s.Files[0].Name = "." },
		"name run":     func(s *JailSpec) { s.Create[0] = "run" },
		"name exec":    func(s *JailSpec) { s.Files[0].Name = "firecracker" },
		"name pid":     func(s *JailSpec) { s.Create[0] = "firecracker.pid" },
		"duplicate":    func(s *JailSpec) { s.Create[0] = "vmlinux" },
		"relative src": func(s *JailSpec) { s.Files[0].Source = "k" },
		"unclean src":  func(s *JailSpec) { s.Files[0].Source = "/s/../k" },
		"host dm":      func(s *JailSpec) { s.Files[1].Source = "/dev/mapper/vg0-root" },
		"dm dot-dot":   func(s *JailSpec) { s.Files[1].Source = "/dev/mapper/banger-x/../../sda" },
		"too many": func(s *JailSpec) {
			for i := 0; i < maxJailFiles; i++ {
				s.Create = append(s.Create, "f"+strings.Repeat("x", i))
			}
		},
	} {
		s := good
		s.Files = append([]JailFile(nil), good.Files...)
		s.Create = append([]string(nil), good.Create...)
		mut(&s)
		wantInvalid(t, name, ValidateJailSpec(s), "jail.")
	}
}

// A source on another mount than the jail base (systemd's ReadWritePaths=
// are separate bind mounts of one filesystem: link(2) fails with EXDEV) is
// bind-mounted into the jail, and RemoveJail unmounts it.
func TestPrepareJailAcrossMounts(t *testing.T) {
	f := newJailFixture(t)
	if err := unix.Mount(f.root, f.root, "", unix.MS_BIND, ""); err != nil {
		t.Skipf("cannot bind-mount here: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(f.root, unix.MNT_DETACH) })
	ctx := context.Background()
	chroot, err := f.l.PrepareJail(ctx, f.spec())
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(chroot, "vmlinux")
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, dst, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_TYPE, &stx); err != nil || stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT == 0 {
		t.Fatalf("%s is not a bind mount (%v)", dst, err)
	}
	if b, err := os.ReadFile(dst); err != nil || string(b) != "kernel" {
		t.Fatalf("jailed kernel reads %q, %v", b, err)
	}
	if err := f.l.RemoveJail(ctx, JailSpec{ExecName: "firecracker", ID: "vm-1"}); err != nil {
		t.Fatal(err)
	}
	if mi, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mi), f.base) {
		t.Errorf("a mount below %s is left", f.base)
	}
	if _, err := os.Lstat(f.idDir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("jail left behind: %v", err)
	}
	if b, err := os.ReadFile(f.kernel); err != nil || string(b) != "kernel" {
		t.Errorf("kernel after RemoveJail: %q %v", b, err)
	}
}
