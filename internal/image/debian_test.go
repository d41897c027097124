package image

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/ext4"
	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/progress"
	"github.com/bangerdev/banger/internal/testreq"
)

func TestHostMirror(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "sources.list.d"), 0o755)
	os.WriteFile(filepath.Join(dir, "sources.list.d", "debian.sources"), []byte(`Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main

Types: deb
# comment
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main
`), 0o644)
	if m, err := HostMirror(dir); err != nil || m != "http://mirror.example/debian" {
		t.Errorf("deb822: %q %v", m, err)
	}
	dir2 := t.TempDir()
	os.WriteFile(filepath.Join(dir2, "sources.list"), []byte("# x\ndeb [signed-by=/k.gpg arch=amd64] http://m.example/debian bookworm main\n"), 0o644)
	if m, err := HostMirror(dir2); err != nil || m != "http://m.example/debian" {
		t.Errorf("sources.list: %q %v", m, err)
	}
	if _, err := HostMirror(t.TempDir()); err == nil {
		t.Error("no sources: no error")
	}
}

func TestBuildOptionsValidation(t *testing.T) {
	for name, o := range map[string]BuildOptions{
		"recipe":  {Recipe: "fedora", Mirror: "http://m/debian"},
		"variant": {Variant: "huge", Mirror: "http://m/debian"},
		"size":    {SizeMiB: 10, Mirror: "http://m/debian"},
		"package": {Packages: []string{"ok", "bad;rm -rf"}, Mirror: "http://m/debian"},
		"name":    {Name: "Bad_Name", Mirror: "http://m/debian"},
		"mirror":  {Mirror: "ftp://m/debian"},
	} {
		if err := o.defaults(""); err == nil {
			t.Errorf("%s: accepted %+v", name, o)
		}
	}
	a := BuildOptions{Mirror: "http://m/debian", Variant: "minbase", Packages: []string{"sudo"}}
	b := BuildOptions{Mirror: "http://m/debian", Variant: "minbase", Packages: []string{"sudo", "kmod"}} // kmod is in minbase already
	if err := a.defaults(""); err != nil {
		t.Fatal(err)
	}
	b.defaults("")
	if a.RecipeHash() != b.RecipeHash() {
		t.Error("same package set hashed differently")
	}
	c := a
	c.Packages = []string{"curl"}
	if c.RecipeHash() == a.RecipeHash() {
		t.Error("different package sets hashed the same")
	}
}

// TestGuestScriptsParse checks the shell scripts baked into images.
func TestGuestScriptsParse(t *testing.T) {
	testreq.Tools(t, "sh")
	for name, script := range map[string]string{"network": networkScript, "hostkeys": hostkeysScript,
		"install-sshd": installSSHDScript, "init": initScript, "poweroff": poweroffScript, "shutdown": shutdownHook} {
		p := filepath.Join(t.TempDir(), name)
		os.WriteFile(p, []byte(script), 0o755)
		if _, err := (hostexec.Real{}).Run(context.Background(), hostexec.Cmd{Name: "sh", Args: []string{"-n", p}}); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestIntegrationDebianMinbase builds the minbase variant for real
// (debootstrap from the host's mirror, cached by recipe hash) and checks
// ownership, modes and banger's guest pieces in the ext4.
func TestIntegrationDebianMinbase(t *testing.T) {
	testreq.Root(t)
	testreq.Tools(t, "debootstrap", "mkfs.ext4", "debugfs", "e2fsck")
	mirror, err := HostMirror("/etc/apt")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	var mu sync.Mutex
	stages := map[string]bool{}
	ctx = progress.WithSink(ctx, func(e progress.Event) {
		mu.Lock()
		stages[e.Stage] = true
		mu.Unlock()
	})
	d := t.TempDir()
	s := &Store{Dir: filepath.Join(d, "images"), CacheDir: testreq.CacheDir(t, "image"), Catalog: &MemCatalog{}, Runner: hostexec.Real{}, Mirror: mirror}
	start := time.Now()
	img, err := s.Build(ctx, BuildOptions{Name: "debian-minbase", Variant: "minbase", Packages: []string{"sudo"}, SizeMiB: 1024, Kernel: "debian"})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("build took %s: %+v", time.Since(start).Round(time.Millisecond), img)
	for _, st := range []string{"debootstrap", "mkfs", "guest", "hash", "publish"} {
		if !stages[st] {
			t.Errorf("no progress for stage %q (saw %v)", st, stages)
		}
	}
	if img.Kernel != "debian" || img.SizeBytes != 1024<<20 || !strings.HasPrefix(img.Source, "debootstrap:bookworm:minbase") {
		t.Errorf("record: %+v", img)
	}
	r := hostexec.Real{}
	if err := ext4.Check(ctx, r, img.Path); err != nil {
		t.Fatal(err)
	}
	stat := func(p string) ext4.FileInfo {
		t.Helper()
		fi, err := ext4.Stat(ctx, r, img.Path, p)
		if err != nil {
			t.Fatalf("stat %s: %v", p, err)
		}
		return fi
	}
	read := func(p string) string {
		t.Helper()
		data, err := ext4.ReadFile(ctx, r, img.Path, p)
		if err != nil {
			t.Fatalf("read %s: %v", p, err)
		}
		return string(data)
	}
	shadowGID := -1
	for _, l := range strings.Split(read("/etc/group"), "\n") {
		if f := strings.Split(l, ":"); len(f) > 2 && f[0] == "shadow" {
			shadowGID, _ = strconv.Atoi(f[2])
		}
	}
	if fi := stat("/etc/shadow"); fi.UID != 0 || fi.GID != shadowGID || fi.Mode != 0o640 {
		t.Errorf("/etc/shadow: %+v (shadow gid %d)", fi, shadowGID)
	}
	if fi := stat("/usr/bin/sudo"); fi.UID != 0 || fi.Mode&os.ModeSetuid == 0 {
		t.Errorf("/usr/bin/sudo: %+v", fi)
	}
	if fi := stat("/root"); fi.Mode != os.ModeDir|0o700 || fi.UID != 0 {
		t.Errorf("/root: %+v", fi)
	}
	for _, k := range []string{"rsa", "ecdsa", "ed25519"} {
		if _, err := ext4.Stat(ctx, r, img.Path, "/etc/ssh/ssh_host_"+k+"_key"); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("host key %s baked into the image: %v", k, err)
		}
	}
	conf := read("/etc/ssh/sshd_config.d/banger.conf")
	for _, want := range []string{"PermitRootLogin prohibit-password", "PasswordAuthentication no", "AuthorizedKeysFile .ssh/authorized_keys /etc/ssh/banger_authorized_keys", "UseDNS no", "ClientAliveInterval"} {
		if !strings.Contains(conf, want) {
			t.Errorf("sshd drop-in lacks %q", want)
		}
	}
	if !strings.Contains(read("/etc/fstab"), "/dev/vdb /root ext4 defaults,nofail,x-systemd.device-timeout=120s 0 2") {
		t.Error("fstab lacks the /root line")
	}
	if read("/etc/hostname") != "banger\n" {
		t.Error("hostname")
	}
	sd := "/etc/systemd/system/"
	if fi := stat(sd + "multi-user.target.wants/banger-network.service"); fi.Target != sd+"banger-network.service" {
		t.Errorf("banger-network not enabled: %+v", fi)
	}
	if !strings.Contains(read(sd+"banger-network.service"), "Before=network-pre.target network.target ssh.service") {
		t.Error("banger-network.service ordering")
	}
	if fi := stat(sd + "getty.target.wants/serial-getty@ttyS0.service"); fi.Target == "" {
		t.Error("serial getty not enabled")
	}
	for _, u := range []string{"apt-daily.timer", "systemd-timesyncd.service", "getty@tty1.service", "systemd-networkd-wait-online.service", "e2scrub_reap.service"} {
		if fi := stat(sd + u); fi.Target != "/dev/null" {
			t.Errorf("%s not masked: %+v", u, fi)
		}
	}
	if fi := stat("/usr/lib/banger/banger-network"); fi.Mode != 0o755 || fi.UID != 0 {
		t.Errorf("banger-network script: %+v", fi)
	}
	if _, err := ext4.Stat(ctx, r, img.Path, "/usr/lib/banger/install-sshd"); !errors.Is(err, fs.ErrNotExist) {
		t.Error("install-sshd added to an image that has sshd")
	}
	if !strings.Contains(read("/etc/banger/image.env"), "SYSTEMD=1\nSSHD=present") {
		t.Error("image.env")
	}
	if read(GuestWorkSeed+"/.bashrc") == "" {
		t.Error("work seed lacks .bashrc")
	}
	if fi := stat(GuestWorkSeed); fi.Mode != os.ModeDir|0o700 {
		t.Errorf("work seed dir: %+v", fi)
	}
	if read("/etc/machine-id") != "" {
		t.Error("machine-id baked into the image")
	}
	// Register the built file under a second name: copied and checked.
	reg, err := s.Register(ctx, "registered", img.Path, "")
	if err != nil {
		t.Fatal(err)
	}
	if reg.SHA256 != img.SHA256 || reg.Path != img.Path {
		t.Errorf("register of identical content: %+v vs %+v", reg, img)
	}
	if err := s.Delete(ctx, "registered"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(img.Path); err != nil {
		t.Errorf("deleting one of two names removed the shared file: %v", err)
	}
}
