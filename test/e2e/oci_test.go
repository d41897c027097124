package e2e

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/bangerdev/banger/internal/image"
	"github.com/bangerdev/banger/internal/testreq"
)

// ociRepoDir is where the test image carries its local apt repository.
const ociRepoDir = "/opt/banger-test-repo"

// ociRecipe versions the cached sshd-less tree and its repository.
const ociRecipe = "oci-nosshd-v1"

// ociTree returns a cached Debian minbase tree without sshd (what a
// container image looks like) and a flat apt repository holding
// openssh-server and the packages it needs that the tree lacks. The guest
// has no route to a mirror, so the image's apt sources name only that
// repository: the first-boot path (install-sshd: apt-get update && apt-get
// install openssh-server) runs as it would with --nat.
func ociTree(t testing.TB) (tree, repo string) {
	t.Helper()
	testreq.Tools(t, "debootstrap", "dpkg-deb")
	mirror, err := image.HostMirror("/etc/apt")
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(ociRecipe + "\x00bookworm\x00" + mirror))
	dir := filepath.Join(testreq.CacheDir(t, "oci-tree"), hex.EncodeToString(sum[:])[:24])
	tree, repo = filepath.Join(dir, "rootfs"), filepath.Join(dir, "repo")
	if _, err := os.Stat(filepath.Join(dir, "complete")); err == nil {
		return tree, repo
	}
	work, err := os.MkdirTemp(filepath.Dir(dir), filepath.Base(dir)+".tmp-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(work) })
	start := time.Now()
	run(t, "debootstrap", "--variant=minbase", "bookworm", filepath.Join(work, "rootfs"), mirror)
	run(t, "debootstrap", "--download-only", "--variant=minbase", "--include=openssh-server", "bookworm", filepath.Join(work, "dl"), mirror)
	installed := dpkgInstalled(t, filepath.Join(work, "rootfs"))
	debs, _ := filepath.Glob(filepath.Join(work, "dl", "var/cache/apt/archives/*.deb"))
	if err := os.MkdirAll(filepath.Join(work, "repo"), 0o755); err != nil {
		t.Fatal(err)
	}
	var index strings.Builder
	for _, deb := range debs {
		pkg, _, _ := strings.Cut(filepath.Base(deb), "_")
		if installed[pkg] {
			continue
		}
		data, err := os.ReadFile(deb)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(work, "repo", filepath.Base(deb)), data, 0o644); err != nil {
			t.Fatal(err)
		}
		control := strings.TrimRight(run(t, "dpkg-deb", "-f", deb), "\n")
		h := sha256.Sum256(data)
		fmt.Fprintf(&index, "%s\nFilename: ./%s\nSize: %d\nSHA256: %s\n\n", control, filepath.Base(deb), len(data), hex.EncodeToString(h[:]))
	}
	if !strings.Contains(index.String(), "Package: openssh-server\n") {
		t.Fatalf("the download of openssh-server left no openssh-server package (%d debs)", len(debs))
	}
	pk := []byte(index.String())
	ph := sha256.Sum256(pk)
	release := fmt.Sprintf("Origin: banger-test\nLabel: banger-test\nSuite: stable\nCodename: banger-test\nArchitectures: amd64\nDate: %s\nSHA256:\n %s %d Packages\n",
		time.Now().UTC().Format(time.RFC1123), hex.EncodeToString(ph[:]), len(pk))
	if err := os.WriteFile(filepath.Join(work, "repo", "Packages"), pk, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(work, "repo", "Release"), []byte(release), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, g := range []string{"rootfs/var/cache/apt/archives/*.deb", "rootfs/var/lib/apt/lists/*_*"} {
		m, _ := filepath.Glob(filepath.Join(work, g))
		for _, f := range m {
			_ = os.Remove(f)
		}
	}
	if err := os.RemoveAll(filepath.Join(work, "dl")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(work, "rootfs/usr/sbin/sshd")); err == nil {
		t.Fatal("the minbase tree has sshd")
	}
	if err := os.WriteFile(filepath.Join(work, "complete"), []byte(time.Since(start).String()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "complete")); err == nil {
		return tree, repo // another run finished first
	}
	_ = os.RemoveAll(dir) // an incomplete leftover
	if err := os.Rename(work, dir); err != nil {
		t.Fatal(err)
	}
	t.Logf("built the sshd-less tree and its apt repository in %s", time.Since(start).Round(time.Second))
	return tree, repo
}

// dpkgInstalled lists the packages dpkg has installed in a tree.
func dpkgInstalled(t testing.TB, root string) map[string]bool {
	t.Helper()
	f, err := os.Open(filepath.Join(root, "var/lib/dpkg/status"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]bool{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	pkg := ""
	for sc.Scan() {
		l := sc.Text()
		switch {
		case strings.HasPrefix(l, "Package: "):
			pkg = strings.TrimPrefix(l, "Package: ")
		case strings.HasPrefix(l, "Status: ") && strings.HasSuffix(l, " installed"):
			out[pkg] = true
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// ociLayerFile writes the tree as one image layer (a tar file): device
// nodes and the contents of /dev, /proc and /sys left out, apt pointed at
// the repository, which is added under ociRepoDir.
func ociLayerFile(t testing.TB, tree, repo string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "layer.tar")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	add := func(root, prefix string, skip func(rel string) bool) {
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, path)
			if rel == "." {
				if prefix == "" {
					return nil
				}
				rel = ""
			}
			name := filepath.ToSlash(filepath.Join(prefix, rel))
			if skip != nil && skip(rel) {
				if d.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
			info, err := d.Info()
			if err != nil {
				return err
			}
			if info.Mode()&(fs.ModeDevice|fs.ModeCharDevice|fs.ModeSocket) != 0 {
				return nil
			}
			link := ""
			if info.Mode()&fs.ModeSymlink != 0 {
				if link, err = os.Readlink(path); err != nil {
					return err
				}
			}
			hdr, err := tar.FileInfoHeader(info, link)
			if err != nil {
				return err
			}
			hdr.Name = name
			if d.IsDir() {
				hdr.Name += "/"
			}
			if st, ok := info.Sys().(*syscall.Stat_t); ok {
				hdr.Uid, hdr.Gid = int(st.Uid), int(st.Gid)
			}
			hdr.Uname, hdr.Gname = "", ""
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			if info.Mode().IsRegular() {
				src, err := os.Open(path)
				if err != nil {
					return err
				}
				_, err = io.Copy(tw, src)
				src.Close()
				return err
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	add(tree, "", func(rel string) bool {
		for _, d := range []string{"dev/", "proc/", "sys/"} {
			if strings.HasPrefix(rel+"/", d) && rel+"/" != d {
				return true
			}
		}
		return rel == "etc/apt/sources.list"
	})
	add(repo, strings.TrimPrefix(ociRepoDir, "/"), nil)
	sources := []byte("deb [trusted=yes] file:" + ociRepoDir + " ./\n")
	if err := tw.WriteHeader(&tar.Header{Name: "etc/apt/sources.list", Mode: 0o644, Size: int64(len(sources)), Typeflag: tar.TypeReg, ModTime: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(sources); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

// serveRegistry serves one in-process registry on the host's loopback (for
// the test to push) and on the netns's loopback (for the daemon to pull);
// it returns both host:port addresses.
func (e *env) serveRegistry(t testing.TB) (hostAddr, nsAddr string) {
	t.Helper()
	h := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	hostLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nsLn, err := listenInNetns(e.ns)
	if err != nil {
		t.Fatal(err)
	}
	for _, ln := range []net.Listener{hostLn, nsLn} {
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		t.Cleanup(func() { _ = srv.Close() })
	}
	return hostLn.Addr().String(), nsLn.Addr().String()
}

// TestE2EOCIFixture checks the fixture TestE2EPulledImageBoots boots (and
// builds it into the cache without booting anything): the tree has no sshd
// and no `ip`, the repository offers openssh-server.
func TestE2EOCIFixture(t *testing.T) {
	testreq.E2E(t)
	tree, repo := ociTree(t)
	for _, p := range []string{"usr/sbin/sshd", "usr/bin/ip", "sbin/ip"} {
		if _, err := os.Lstat(filepath.Join(tree, p)); err == nil {
			t.Errorf("the tree has /%s", p)
		}
	}
	idx, err := os.ReadFile(filepath.Join(repo, "Packages"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(idx), "Package: openssh-server\n") {
		t.Errorf("the repository lacks openssh-server:\n%s", idx)
	}
}

// TestE2EPulledImageBoots builds an OCI image from a debootstrap tree
// without sshd or systemd's ssh unit (like a container image), serves it
// from an in-process registry, pulls it with `banger image pull`, boots it
// with `banger vm create` and reaches it over ssh: sshd comes from the
// first-boot path (install-sshd), installed from the image's own apt
// repository.
func TestE2EPulledImageBoots(t *testing.T) {
	e := newEnv(t, envOptions{TapPool: 1})
	tree, repo := ociTree(t)
	layerFile := ociLayerFile(t, tree, repo)
	layer, err := tarball.LayerFromFile(layerFile)
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.ConfigFile(img, &v1.ConfigFile{Architecture: "amd64", OS: "linux",
		Config: v1.Config{Cmd: []string{"/bin/bash"}, Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}}})
	if err != nil {
		t.Fatal(err)
	}
	hostAddr, nsAddr := e.serveRegistry(t)
	pushRef, err := name.ParseReference(hostAddr+"/banger-test/debian-nosshd:bookworm", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	t0 := time.Now()
	if err := remote.Write(pushRef, img, remote.WithContext(ctx)); err != nil {
		t.Fatalf("push: %v", err)
	}
	t.Logf("pushed the image (%s layer) in %s", sizeOf(layerFile), time.Since(t0).Round(time.Millisecond))

	t0 = time.Now()
	e.must("image", "pull", "--insecure", "--name", "nosshd", "--kernel", kernelName, nsAddr+"/banger-test/debian-nosshd:bookworm")
	t.Logf("banger image pull: %s", time.Since(t0).Round(time.Millisecond))

	t0 = time.Now()
	out, serr, err := e.banger("vm", "create", "--name", "p1", "--image", "nosshd")
	if err != nil {
		var console string
		if vms := e.list(); len(vms) == 1 {
			console = e.consoleTail(vms[0].ID, 60)
		}
		t.Fatalf("vm create from the pulled image: %v\n%s%s\n--- console ---\n%s\n--- daemon log ---\n%s", err, out, serr, console, e.daemonLog())
	}
	t.Logf("vm create (first boot installs sshd): %s", time.Since(t0).Round(time.Millisecond))
	v := e.show("p1")
	got := e.mustSSH(v.IP, "hostname; grep ^SSHD= /etc/banger/image.env; dpkg-query -W -f='${Status}\\n' openssh-server; test -d /run/systemd/system && echo systemd || echo banger-init; ls /etc/ssh/ssh_host_ed25519_key")
	for _, want := range []string{"p1\n", "SSHD=first-boot", "install ok installed", "/etc/ssh/ssh_host_ed25519_key"} {
		if !strings.Contains(got+"\n", want) {
			t.Errorf("guest lacks %q:\n%s", want, got)
		}
	}
	t.Logf("guest: %s", strings.ReplaceAll(got, "\n", " | "))
	// A second boot finds sshd installed and does not reinstall it.
	e.must("vm", "stop", "p1")
	t0 = time.Now()
	e.must("vm", "start", "p1")
	t.Logf("second boot: %s", time.Since(t0).Round(time.Millisecond))
	if got := e.mustSSH(v.IP, "hostname"); got != "p1" {
		t.Errorf("after restart: %q", got)
	}
	e.must("vm", "delete", "p1")
	e.assertNoLeaks("after delete")
}

func sizeOf(p string) string {
	fi, err := os.Stat(p)
	if err != nil {
		return "?"
	}
	return fmt.Sprintf("%.0f MiB", float64(fi.Size())/(1<<20))
}
