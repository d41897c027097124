package image

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/ext4"
	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/testreq"
)

// TestBootBatchWritesTheBootPath applies BootBatch to a fresh ext4 and
// checks every file and link it leaves, byte for byte: these units decide
// the order of a guest's boot, so any change to them must be deliberate.
func TestBootBatchWritesTheBootPath(t *testing.T) {
	testreq.Tools(t, "mkfs.ext4", "debugfs")
	ctx := context.Background()
	r := hostexec.Real{}
	src := t.TempDir()
	// An image built before the boot path: an older ssh drop-in, network
	// unit and enablement link that BootBatch must replace.
	sd := filepath.Join(src, "etc/systemd/system")
	for _, d := range []string{"ssh.service.d", "multi-user.target.wants"} {
		if err := os.MkdirAll(filepath.Join(sd, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(sd, "ssh.service.d/banger.conf"), []byte("[Unit]\nAfter=root.mount\n"), 0o644)
	os.WriteFile(filepath.Join(sd, "banger-network.service"), []byte("[Unit]\nAfter=systemd-udevd.service\n"), 0o644)
	os.Symlink("/etc/systemd/system/banger-network.service", filepath.Join(sd, "multi-user.target.wants/banger-network.service"))
	img := filepath.Join(t.TempDir(), "root.ext4")
	if err := ext4.Build(ctx, r, ext4.BuildOptions{SourceDir: src, Out: img, SizeBytes: 16 << 20}); err != nil {
		t.Fatal(err)
	}
	b := &ext4.Batch{}
	BootBatch(b)
	if err := ext4.Apply(ctx, r, img, b); err != nil {
		t.Fatal(err)
	}
	// Applying it again (every boot) must work on its own output.
	b = &ext4.Batch{}
	BootBatch(b)
	if err := ext4.Apply(ctx, r, img, b); err != nil {
		t.Fatalf("second apply: %v", err)
	}
	files := map[string]struct {
		mode os.FileMode
		data string
	}{
		"/usr/lib/banger/banger-workdisk": {0o755, workDiskScript},
		"/etc/systemd/system/banger-workdisk.service": {0o644, `[Unit]
Description=banger: mount the work disk on /root (straight from devtmpfs, no udev wait)
DefaultDependencies=no
ConditionPathIsMountPoint=!/root
After=systemd-journald.socket
Before=local-fs.target ssh.service shutdown.target
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/lib/banger/banger-workdisk

[Install]
WantedBy=local-fs.target
`},
		"/etc/systemd/system/ssh.service.d/banger.conf": {0o644, `[Unit]
DefaultDependencies=no
Wants=banger-network.service banger-hostkeys.service banger-workdisk.service
After=banger-network.service banger-hostkeys.service banger-workdisk.service root.mount systemd-tmpfiles-setup.service
Before=shutdown.target
Conflicts=shutdown.target

[Service]
ExecStartPre=
`},
		"/etc/systemd/system/modprobe@.service.d/banger.conf":            {0o644, "# banger: nothing to load without modules for the running kernel.\n[Unit]\nConditionPathExists=/lib/modules/%v/modules.dep\n"},
		"/etc/systemd/system/systemd-modules-load.service.d/banger.conf": {0o644, "# banger: nothing to load without modules for the running kernel.\n[Unit]\nConditionPathExists=/lib/modules/%v/modules.dep\n"},
		"/etc/systemd/system/systemd-udevd.service.d/banger.conf":        {0o644, "# banger: udev is off the path to ssh; let it use the idle time.\n[Service]\nNice=19\n"},
		"/etc/systemd/system/banger-network.service": {0o644, `[Unit]
Description=banger guest network (static address from /etc/banger/network.env)
DefaultDependencies=no
After=systemd-journald.socket
Before=network-pre.target network.target ssh.service shutdown.target
Wants=network.target
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/lib/banger/banger-network

[Install]
WantedBy=multi-user.target
`},
	}
	for p, want := range files {
		fi, err := ext4.Stat(ctx, r, img, p)
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		if fi.Mode.Perm() != want.mode || fi.UID != 0 || fi.GID != 0 {
			t.Errorf("%s: mode %v owner %d:%d, want %v root", p, fi.Mode, fi.UID, fi.GID, want.mode)
		}
		data, err := ext4.ReadFile(ctx, r, img, p)
		if err != nil || string(data) != want.data {
			t.Errorf("%s = %q (%v), want %q", p, data, err, want.data)
		}
	}
	links := map[string]string{
		"/etc/systemd/system/local-fs.target.wants/banger-workdisk.service":  GuestWorkDiskUnit,
		"/etc/systemd/system/multi-user.target.wants/banger-network.service": "/etc/systemd/system/banger-network.service",
		"/etc/tmpfiles.d/systemd-nologin.conf":                               "/dev/null",
	}
	for _, u := range BootMasks {
		links["/etc/systemd/system/"+u] = "/dev/null"
	}
	for _, g := range BootGeneratorMasks {
		links["/etc/systemd/system-generators/"+g] = "/dev/null"
	}
	for _, u := range []string{"root.mount", "getty-static.service", "systemd-update-utmp.service", "sys-kernel-debug.mount"} {
		if links["/etc/systemd/system/"+u] != "/dev/null" {
			t.Errorf("%s is not in BootMasks", u)
		}
	}
	for p, target := range links {
		if fi, err := ext4.Stat(ctx, r, img, p); err != nil || fi.Target != target {
			t.Errorf("%s -> %q (%v), want -> %s", p, fi.Target, err, target)
		}
	}
}

// TestBootPathKeepsWhatBangerNeeds guards the masks against units a banger
// guest cannot boot or be reached without.
func TestBootPathKeepsWhatBangerNeeds(t *testing.T) {
	for _, g := range BootGeneratorMasks {
		for _, keep := range []string{"systemd-fstab-generator", "systemd-sysv-generator", "systemd-rc-local-generator", "systemd-run-generator", "systemd-debug-generator"} {
			if g == keep {
				t.Errorf("generator %s serves the user's configuration and must not be masked", g)
			}
		}
	}
	for _, u := range BootMasks {
		for _, keep := range []string{"ssh", "banger-", "serial-getty", "systemd-journald", "systemd-tmpfiles-setup", "dev-mqueue", "-.mount"} {
			if strings.HasPrefix(u, keep) {
				t.Errorf("%s must not be masked", u)
			}
		}
	}
	if !strings.Contains(workDiskScript, "[ ! -b /dev/vdb ]") || !strings.Contains(workDiskScript, "exit 0") {
		t.Error("the work disk script must keep nofail: no disk, no failure")
	}
}

// TestWorkDiskScript checks the work disk script parses and, on a host
// without /dev/vdb, takes the nofail path: it succeeds, says /root stays
// on the root disk, and runs no mount.
func TestWorkDiskScript(t *testing.T) {
	testreq.Tools(t, "sh")
	dir := t.TempDir()
	p := filepath.Join(dir, "banger-workdisk")
	if err := os.WriteFile(p, []byte(workDiskScript), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := (hostexec.Real{}).Run(ctx, hostexec.Cmd{Name: "sh", Args: []string{"-n", p}}); err != nil {
		t.Fatalf("sh -n: %v", err)
	}
	if _, err := os.Stat("/dev/vdb"); err == nil {
		t.Skip("this host has a /dev/vdb: the nofail path cannot be run here")
	}
	// A mount that records being called; the script's PATH comes first
	// in its own list, so put the fake where it looks first.
	script := strings.Replace(workDiskScript, "PATH=/usr/local/sbin:", "PATH="+dir+":/usr/local/sbin:", 1)
	os.WriteFile(p, []byte(script), 0o755)
	os.WriteFile(filepath.Join(dir, "mount"), []byte("#!/bin/sh\ntouch "+dir+"/mounted\n"), 0o755)
	out, err := (hostexec.Real{}).Run(ctx, hostexec.Cmd{Name: "sh", Args: []string{p}})
	if err != nil || !strings.Contains(string(out.Stdout), "no /dev/vdb; /root stays on the root disk") {
		t.Fatalf("no work disk: %v %q", err, out.Stdout)
	}
	if _, err := os.Stat(filepath.Join(dir, "mounted")); err == nil {
		t.Error("mount ran without a work disk")
	}
}
