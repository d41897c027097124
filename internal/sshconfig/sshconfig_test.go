package sshconfig

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/testreq"
)

func opts(dir string) Options {
	return Options{
		IdentityFile:   filepath.Join(dir, "state dir", "id_ed25519"),
		KnownHostsFile: filepath.Join(dir, "state dir", "known_hosts"),
		Hosts: []Host{
			{Name: "web", IP: netip.MustParseAddr("172.30.0.5")},
			{Name: "db", IP: netip.MustParseAddr("172.30.0.6")},
			{Name: "Bad Name", IP: netip.MustParseAddr("172.30.0.7")},
			{Name: "v6", IP: netip.MustParseAddr("fd00::1")},
		},
	}
}

func TestRender(t *testing.T) {
	got := Render(Options{IdentityFile: "/k/id", KnownHostsFile: "/s/known hosts", Hosts: []Host{{Name: "web", IP: netip.MustParseAddr("172.30.0.5")}}})
	want := "# Written by banger (`banger ssh-config`) and rewritten as VMs come and go. Do not edit.\n\n" +
		"Host web.vm\n    HostName 172.30.0.5\n    HostKeyAlias web.vm\n\n" +
		"Host *.vm\n" +
		"    User root\n" +
		"    IdentityFile /k/id\n" +
		"    IdentitiesOnly yes\n" +
		"    UserKnownHostsFile \"/s/known hosts\"\n" +
		"    StrictHostKeyChecking yes\n" +
		"    CheckHostIP no\n" +
		"    ServerAliveInterval 5\n" +
		"    ServerAliveCountMax 3\n" +
		"    ConnectTimeout 10\n"
	if got != want {
		t.Fatalf("Render:\n%s\nwant:\n%s", got, want)
	}
	out := Render(opts(t.TempDir()))
	if strings.Contains(out, "Bad Name") || strings.Contains(out, "fd00") {
		t.Fatalf("invalid hosts rendered:\n%s", out)
	}
	if strings.Index(out, "Host db.vm") > strings.Index(out, "Host web.vm") {
		t.Fatal("hosts not sorted")
	}
}

// sshG asks the real OpenSSH client how it would connect to host.
func sshG(t *testing.T, config, host string) map[string]string {
	t.Helper()
	out, err := exec.Command("ssh", "-F", config, "-G", host).CombinedOutput()
	if err != nil {
		t.Fatalf("ssh -G %s: %v\n%s", host, err, out)
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(line, " "); ok {
			if _, seen := m[k]; !seen {
				m[k] = v
			}
		}
	}
	return m
}

func TestOpenSSHUsesIt(t *testing.T) {
	testreq.Tools(t, "ssh")
	dir := t.TempDir()
	sshDir := filepath.Join(dir, ".ssh")
	include := filepath.Join(dir, "banger", "ssh_config")
	o := opts(dir)
	if err := Write(include, o); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(ConfigPath(sshDir)); !os.IsNotExist(err) {
		t.Fatal("Write touched ~/.ssh/config")
	}
	user := "Host *\n    User someone\n\nHost work\n    HostName 10.1.2.3\n"
	os.MkdirAll(sshDir, 0o700)
	os.WriteFile(ConfigPath(sshDir), []byte(user), 0o600)
	if _, err := Install(sshDir, include); err != nil {
		t.Fatal(err)
	}
	g := sshG(t, ConfigPath(sshDir), "web.vm")
	for k, want := range map[string]string{
		"hostname":              "172.30.0.5",
		"user":                  "root", // banger's block comes first, so it wins over Host *
		"hostkeyalias":          "web.vm",
		"identityfile":          o.IdentityFile,
		"userknownhostsfile":    o.KnownHostsFile,
		"stricthostkeychecking": "true",
		"serveraliveinterval":   "5",
		"connecttimeout":        "10",
	} {
		if g[k] != want {
			t.Errorf("ssh -G web.vm: %s = %q, want %q", k, g[k], want)
		}
	}
	// A VM not listed yet still gets the shared settings (DNS resolves it).
	if g := sshG(t, ConfigPath(sshDir), "new.vm"); g["hostname"] != "new.vm" || g["user"] != "root" {
		t.Errorf("ssh -G new.vm: %v", g)
	}
	// The user's own hosts are unaffected.
	if g := sshG(t, ConfigPath(sshDir), "work"); g["hostname"] != "10.1.2.3" || g["user"] != "someone" {
		t.Errorf("ssh -G work: hostname %q user %q", g["hostname"], g["user"])
	}
}

func TestInstallTwiceUninstallRestores(t *testing.T) {
	originals := map[string]*string{
		"absent":          nil,
		"empty":           ptr(""),
		"hosts":           ptr("# mine\nHost *\n    ForwardAgent no\n\nHost x\n    HostName 10.0.0.1\n"),
		"no final eol":    ptr("Host y\n    User me"),
		"crlf":            ptr("Host z\r\n    User me\r\n"),
		"leading blank":   ptr("\n\nHost a\n"),
		"marker in value": ptr("Host a\n    # >>> banger ssh-config >>> is not at line start here\n"),
	}
	for name, orig := range originals {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			sshDir := filepath.Join(dir, ".ssh")
			path := ConfigPath(sshDir)
			if orig != nil {
				os.MkdirAll(sshDir, 0o700)
				if err := os.WriteFile(path, []byte(*orig), 0o640); err != nil {
					t.Fatal(err)
				}
			}
			include := filepath.Join(dir, "banger ssh", "config")
			changed, err := Install(sshDir, include)
			if err != nil || !changed {
				t.Fatalf("Install: %v %v", changed, err)
			}
			first, _ := os.ReadFile(path)
			changed, err = Install(sshDir, include)
			if err != nil || changed {
				t.Fatalf("second Install: changed=%v err=%v", changed, err)
			}
			second, _ := os.ReadFile(path)
			if string(first) != string(second) || strings.Count("\n"+string(second), "\n"+beginMarker) != 1 {
				t.Fatalf("second Install changed the file:\n%s", second)
			}
			if !strings.HasPrefix(string(second), beginMarker) || !strings.Contains(string(second), "Include \""+include+"\"\n") {
				t.Fatalf("block not at the top:\n%s", second)
			}
			if ok, _ := Installed(sshDir); !ok {
				t.Fatal("Installed = false")
			}
			fi, _ := os.Stat(path)
			wantMode := os.FileMode(0o600)
			if orig != nil {
				wantMode = 0o640
			}
			if fi.Mode().Perm() != wantMode {
				t.Fatalf("mode %v, want %v", fi.Mode().Perm(), wantMode)
			}

			changed, err = Uninstall(sshDir)
			if err != nil || !changed {
				t.Fatalf("Uninstall: %v %v", changed, err)
			}
			after, err := os.ReadFile(path)
			if orig == nil {
				if !os.IsNotExist(err) {
					t.Fatalf("file created by Install survived Uninstall: %q", after)
				}
			} else if string(after) != *orig {
				t.Fatalf("Uninstall did not restore the file:\n%q\nwant\n%q", after, *orig)
			}
			if changed, err := Uninstall(sshDir); err != nil || changed {
				t.Fatalf("second Uninstall: %v %v", changed, err)
			}
		})
	}
}

func TestInstallMovesStaleBlockToTopAndFollowsSymlink(t *testing.T) {
	dir := t.TempDir()
	sshDir := filepath.Join(dir, ".ssh")
	os.MkdirAll(sshDir, 0o700)
	real := filepath.Join(dir, "dotfiles", "ssh_config")
	os.MkdirAll(filepath.Dir(real), 0o755)
	user := "Host a\n    User me\n"
	stale := user + block("/old/path", false)
	os.WriteFile(real, []byte(stale), 0o600)
	if err := os.Symlink(real, ConfigPath(sshDir)); err != nil {
		t.Fatal(err)
	}
	if _, err := Install(sshDir, "/new/path"); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Lstat(ConfigPath(sshDir)); fi.Mode()&os.ModeSymlink == 0 {
		t.Fatal("Install replaced the symlink with a file")
	}
	got, _ := os.ReadFile(real)
	if want := block("/new/path", false) + user; string(got) != want {
		t.Fatalf("after Install:\n%s\nwant:\n%s", got, want)
	}
	if _, err := Uninstall(sshDir); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(real); string(got) != user {
		t.Fatalf("after Uninstall: %q", got)
	}
}

func TestUninstallWithoutInstallTouchesNothing(t *testing.T) {
	dir := t.TempDir()
	if changed, err := Uninstall(filepath.Join(dir, "nope")); err != nil || changed {
		t.Fatalf("missing dir: %v %v", changed, err)
	}
	sshDir := filepath.Join(dir, ".ssh")
	os.MkdirAll(sshDir, 0o700)
	os.WriteFile(ConfigPath(sshDir), []byte("Host a\n"), 0o600)
	fi1, _ := os.Stat(ConfigPath(sshDir))
	if changed, err := Uninstall(sshDir); err != nil || changed {
		t.Fatalf("no block: %v %v", changed, err)
	}
	fi2, _ := os.Stat(ConfigPath(sshDir))
	if !fi1.ModTime().Equal(fi2.ModTime()) || fi1.Size() != fi2.Size() {
		t.Fatal("file rewritten")
	}
	if _, err := Install(sshDir, "relative/path"); err == nil {
		t.Fatal("relative include accepted")
	}
}

func ptr(s string) *string { return &s }

func FuzzFindBlocks(f *testing.F) {
	f.Add("Host a\n", "/p")
	f.Add(block("/x", true)+"Host b\n"+block("/y", false), "/z")
	f.Fuzz(func(t *testing.T, content, include string) {
		if include == "" || include[0] != '/' || strings.ContainsAny(include, "\n\r") || strings.Contains(content, beginMarker) || strings.Contains(content, endMarker) {
			return
		}
		dir := t.TempDir()
		os.WriteFile(ConfigPath(dir), []byte(content), 0o600)
		if _, err := Install(dir, include); err != nil {
			t.Fatal(err)
		}
		if _, err := Uninstall(dir); err != nil {
			t.Fatal(err)
		}
		if got, _ := os.ReadFile(ConfigPath(dir)); string(got) != content {
			t.Fatalf("round trip changed %q into %q", content, got)
		}
	})
}
