package image

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/bangerdev/banger/internal/ext4"
	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/testreq"
)

// tarEntry describes one entry of a test layer.
type tarEntry struct {
	name     string
	typ      byte
	mode     int64
	uid, gid int
	body     string
	link     string
	pax      map[string]string
}

func mkTar(t testing.TB, entries []tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		typ := e.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		mode := e.mode
		if mode == 0 {
			mode = 0o644
			if typ == tar.TypeDir {
				mode = 0o755
			}
		}
		h := &tar.Header{Name: e.name, Typeflag: typ, Mode: mode, Uid: e.uid, Gid: e.gid, Linkname: e.link,
			ModTime: time.Unix(1700000000, 0), PAXRecords: e.pax, Format: tar.FormatPAX}
		if typ == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if typ == tar.TypeChar {
			h.Devmajor, h.Devminor = 1, 3
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("tar header %s: %v", e.name, err)
		}
		if typ == tar.TypeReg {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func mkImage(t testing.TB, layers ...[]tarEntry) v1.Image {
	t.Helper()
	var ls []v1.Layer
	for _, entries := range layers {
		data := mkTar(t, entries)
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
	}
	img, err := mutate.AppendLayers(empty.Image, ls...)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf.OS, cf.Architecture = "linux", "amd64"
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// testRegistry is an in-process registry whose requests can be counted
// and intercepted.
type testRegistry struct {
	srv       *httptest.Server
	host      string
	mu        sync.Mutex
	blobGets  map[string]int
	intercept func(w http.ResponseWriter, r *http.Request) bool // true = handled
}

func newTestRegistry(t testing.TB) *testRegistry {
	tr := &testRegistry{blobGets: map[string]int{}}
	reg := registry.New(registry.Logger(log0()))
	tr.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:") {
			tr.mu.Lock()
			tr.blobGets[r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]]++
			tr.mu.Unlock()
		}
		tr.mu.Lock()
		ic := tr.intercept
		tr.mu.Unlock()
		if ic != nil && ic(w, r) {
			return
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(tr.srv.Close)
	tr.host = strings.TrimPrefix(tr.srv.URL, "http://")
	return tr
}

func (tr *testRegistry) push(t testing.TB, repoTag string, img v1.Image) string {
	t.Helper()
	ref, err := name.ParseReference(tr.host+"/"+repoTag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	return ref.String()
}

func (tr *testRegistry) gets() map[string]int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	out := map[string]int{}
	for k, v := range tr.blobGets {
		out[k] = v
	}
	return out
}

func (tr *testRegistry) reset() {
	tr.mu.Lock()
	tr.blobGets = map[string]int{}
	tr.mu.Unlock()
}

func log0() *log.Logger { return log.New(io.Discard, "", 0) }

func newTestStore(t testing.TB) *Store {
	d := t.TempDir()
	return &Store{Dir: filepath.Join(d, "images"), CacheDir: filepath.Join(d, "cache"), Catalog: &MemCatalog{}, Runner: hostexec.Real{}}
}

func pullTools(t *testing.T) {
	testreq.Root(t)
	testreq.Tools(t, "mkfs.ext4", "debugfs", "e2fsck")
}

// assertNothingHalfDone checks that no image file, temp file or partial
// download is left and that the catalog has no entry for name.
func assertNothingHalfDone(t *testing.T, s *Store, name string) {
	t.Helper()
	if _, err := s.Get(context.Background(), name); !errors.Is(err, model.ErrNotFound) {
		t.Errorf("catalog entry for %q after failure: %v", name, err)
	}
	for _, dir := range []string{filepath.Join(s.Dir, "sha256"), filepath.Join(s.Dir, "tmp")} {
		entries, _ := os.ReadDir(dir)
		if len(entries) > 0 {
			t.Errorf("%s not empty after failure: %v", dir, entries)
		}
	}
	m, _ := filepath.Glob(filepath.Join(s.CacheDir, "blobs", "sha256", "*.part-*"))
	if len(m) > 0 {
		t.Errorf("partial downloads left: %v", m)
	}
}

func TestPullFlattensLayers(t *testing.T) {
	pullTools(t)
	ctx := context.Background()
	hostMarker := fmt.Sprintf("banger-pull-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	t.Cleanup(func() { os.Remove("/etc/" + hostMarker); os.Remove("/tmp/" + hostMarker) })

	base := []tarEntry{
		{name: "etc/", typ: tar.TypeDir},
		{name: "etc/os-release", body: "ID=testos\n"},
		{name: "etc/shadow", mode: 0o640, gid: 42, body: "root:*:19000:0:99999:7:::\n"},
		{name: "usr/", typ: tar.TypeDir},
		{name: "usr/bin/", typ: tar.TypeDir},
		{name: "usr/bin/sudo", mode: 0o4755, body: "sudo-binary"},
		{name: "usr/bin/sudo-hard", typ: tar.TypeLink, link: "usr/bin/sudo"},
		{name: "usr/bin/ping", mode: 0o755, body: "ping", pax: map[string]string{
			"SCHILY.xattr.security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"}},
		{name: "home/user/", typ: tar.TypeDir, uid: 1000, gid: 1000, mode: 0o750},
		{name: "home/user/notes", uid: 1000, gid: 1000, mode: 0o600, body: "mine"},
		{name: "data/keep", body: "keep"},
		{name: "data/gone", body: "gone"},
		{name: "data/gonedir/x", body: "x"},
		{name: "opq/", typ: tar.TypeDir},
		{name: "opq/old", body: "old"},
		{name: "opq/sub/old2", body: "old2"},
		{name: "tmp/", typ: tar.TypeDir, mode: 0o1777},
		{name: "escape", typ: tar.TypeSymlink, link: "../../../../../../../../etc"},
		{name: "abs", typ: tar.TypeSymlink, link: "/etc"},
		{name: "out", typ: tar.TypeSymlink, link: "/tmp/" + hostMarker},
		{name: "dev/", typ: tar.TypeDir},
		{name: "dev/null", typ: tar.TypeChar, mode: 0o666},
		{name: "run/fifo", typ: tar.TypeFifo, mode: 0o600},
		{name: "root/", typ: tar.TypeDir, mode: 0o700},
		{name: "root/.profile", body: "PS1=x\n"},
	}
	top := []tarEntry{
		{name: "data/.wh.gone"},
		{name: "data/.wh.gonedir"},
		{name: "opq/", typ: tar.TypeDir},
		{name: "opq/.wh..wh..opq"},
		{name: "opq/new", body: "new"},
		{name: "escape/" + hostMarker, body: "must stay inside"},
		{name: "abs/viaabs", body: "via abs symlink"},
		{name: "/etc/absolute-name", body: "abs name"},
		{name: "./usr/bin/sudo", mode: 0o4711, body: "sudo-v2"},
	}
	reg := newTestRegistry(t)
	ref := reg.push(t, "test/flat:v1", mkImage(t, base, top))
	s := newTestStore(t)
	img, err := s.Pull(ctx, ref, PullOptions{Name: "flat", Insecure: true, SizeMiB: 64})
	if err != nil {
		t.Fatal(err)
	}
	if img.Name != "flat" || !strings.HasPrefix(img.Source, "oci:") || img.SizeBytes != 64<<20 || len(img.SHA256) != 64 {
		t.Errorf("image record: %+v", img)
	}
	if img.Path != filepath.Join(s.Dir, "sha256", img.SHA256+".ext4") {
		t.Errorf("path %s is not content addressed", img.Path)
	}
	if _, err := os.Stat("/etc/" + hostMarker); err == nil {
		t.Fatal("a layer wrote through a symlink into the host's /etc")
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
	gone := func(p string) {
		t.Helper()
		if _, err := ext4.Stat(ctx, r, img.Path, p); err == nil {
			t.Errorf("%s should not exist", p)
		}
	}
	read := func(p string) string {
		t.Helper()
		data, err := ext4.ReadFile(ctx, r, img.Path, p)
		if err != nil {
			t.Fatalf("read %s: %v", p, err)
		}
		return string(data)
	}
	if fi := stat("/etc/shadow"); fi.Mode != 0o640 || fi.UID != 0 || fi.GID != 42 {
		t.Errorf("/etc/shadow: %+v", fi)
	}
	sudo, hard := stat("/usr/bin/sudo"), stat("/usr/bin/sudo-hard")
	if sudo.Mode != 0o711|os.ModeSetuid || read("/usr/bin/sudo") != "sudo-v2" {
		t.Errorf("sudo (replaced by the top layer): %+v", sudo)
	}
	if hard.Mode != 0o755|os.ModeSetuid || read("/usr/bin/sudo-hard") != "sudo-binary" || hard.Links != 1 {
		// the top layer replaced sudo: the old inode keeps living as sudo-hard
		t.Errorf("hard link: %+v", hard)
	}
	if fi := stat("/home/user"); fi.UID != 1000 || fi.GID != 1000 || fi.Mode != os.ModeDir|0o750 {
		t.Errorf("/home/user: %+v", fi)
	}
	if fi := stat("/home/user/notes"); fi.UID != 1000 || fi.Mode != 0o600 {
		t.Errorf("/home/user/notes: %+v", fi)
	}
	if fi := stat("/tmp"); fi.Mode != os.ModeDir|os.ModeSticky|0o777 {
		t.Errorf("/tmp: %v", fi.Mode)
	}
	read("/data/keep")
	gone("/data/gone")
	gone("/data/gonedir")
	gone("/opq/old")
	gone("/opq/sub")
	if read("/opq/new") != "new" {
		t.Error("opaque dir lost the new file")
	}
	if fi := stat("/escape"); fi.Target != "../../../../../../../../etc" {
		t.Errorf("escape symlink target changed: %q", fi.Target)
	}
	if fi := stat("/out"); fi.Target != "/tmp/"+hostMarker {
		t.Errorf("out symlink: %+v", fi)
	}
	if read("/etc/"+hostMarker) != "must stay inside" {
		t.Error("write through the escaping symlink did not land inside the image")
	}
	if read("/etc/viaabs") != "via abs symlink" || read("/etc/absolute-name") != "abs name" {
		t.Error("absolute symlink / absolute entry name not resolved inside the root")
	}
	gone("/dev/null")
	if fi := stat("/run/fifo"); fi.Mode&os.ModeNamedPipe == 0 {
		t.Errorf("fifo: %+v", fi)
	}
	// guest pieces for an image without sshd and without systemd
	if fi := stat("/usr/lib/banger/install-sshd"); fi.Mode != 0o755 {
		t.Errorf("install-sshd: %+v", fi)
	}
	env := read("/etc/banger/image.env")
	if !strings.Contains(env, "SSHD=first-boot") || !strings.Contains(env, "INIT=/usr/lib/banger/init") {
		t.Errorf("image.env: %q", env)
	}
	if read(GuestWorkSeed+"/.profile") != "PS1=x\n" {
		t.Error("work seed lacks /root/.profile")
	}
	if !strings.Contains(read("/etc/fstab"), "/dev/vdb /root ext4 defaults,nofail,x-systemd.device-timeout=120s 0 2") {
		t.Error("fstab lacks the /root line with a 120 s device timeout")
	}
	if !strings.Contains(read("/etc/ssh/sshd_config.d/banger.conf"), "PermitRootLogin prohibit-password") {
		t.Error("sshd drop-in missing")
	}
	// the file capability survived chown/chmod
	res, err := r.Run(ctx, hostexec.Cmd{Name: "debugfs", Args: []string{"-R", "ea_list /usr/bin/ping", img.Path}})
	if err != nil || !strings.Contains(string(res.Stdout), "security.capability") {
		t.Errorf("ping lost its capability xattr: %s %v", res.Stdout, err)
	}
}

func TestPullConcurrentFetchesEachBlobOnce(t *testing.T) {
	pullTools(t)
	ctx := context.Background()
	reg := newTestRegistry(t)
	img := mkImage(t,
		[]tarEntry{{name: "a/", typ: tar.TypeDir}, {name: "a/one", body: strings.Repeat("1", 100000)}},
		[]tarEntry{{name: "b/two", body: strings.Repeat("2", 100000)}},
	)
	ref := reg.push(t, "test/conc:latest", img)
	reg.reset()
	s := newTestStore(t)
	var wg sync.WaitGroup
	results := make([]*model.Image, 4)
	errs := make([]error, 4)
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = s.Pull(ctx, ref, PullOptions{Insecure: true, SizeMiB: 32})
		}()
	}
	wg.Wait()
	for i := range 4 {
		if errs[i] != nil {
			t.Fatalf("pull %d: %v", i, errs[i])
		}
		if results[i].SHA256 != results[0].SHA256 || results[i].Name != "conc" {
			t.Errorf("pull %d got %+v, pull 0 got %+v", i, results[i], results[0])
		}
	}
	gets := reg.gets()
	m, _ := img.Manifest()
	want := []v1.Hash{m.Config.Digest}
	for _, l := range m.Layers {
		want = append(want, l.Digest)
	}
	for _, d := range want {
		if gets[d.String()] != 1 {
			t.Errorf("blob %s fetched %d times, want 1 (all: %v)", d, gets[d.String()], gets)
		}
	}
	if len(gets) != len(want) {
		t.Errorf("unexpected blob requests: %v", gets)
	}

	// A second pull under another name is served from the blob cache.
	reg.reset()
	if _, err := s.Pull(ctx, ref, PullOptions{Name: "conc-again", Insecure: true, SizeMiB: 32}); err != nil {
		t.Fatal(err)
	}
	if g := reg.gets(); len(g) != 0 {
		t.Errorf("cached pull fetched blobs: %v", g)
	}
	// Same name, same content again: a no-op that returns the image
	// already there (a pull that just missed a concurrent identical one).
	reg.reset()
	first, err := s.Catalog.GetImage(ctx, "conc")
	if err != nil {
		t.Fatal(err)
	}
	again, err := s.Pull(ctx, ref, PullOptions{Name: "conc", Insecure: true, SizeMiB: 32})
	if err != nil {
		t.Fatalf("pull of the same content again: %v", err)
	}
	if again.SHA256 != first.SHA256 || again.Path != first.Path || !again.CreatedAt.Equal(first.CreatedAt) {
		t.Errorf("repeated pull made a new image: %+v, was %+v", again, first)
	}
	if g := reg.gets(); len(g) != 0 {
		t.Errorf("repeated pull fetched blobs: %v", g)
	}
	// Same name with anything else different without Replace: refused.
	if _, err := s.Pull(ctx, ref, PullOptions{Name: "conc", Insecure: true, SizeMiB: 64}); !errors.Is(err, model.ErrAlreadyExists) {
		t.Errorf("pull of another size over an existing name: %v", err)
	}
	if _, err := s.Pull(ctx, ref, PullOptions{Name: "conc", Insecure: true, SizeMiB: 32, Kernel: "other"}); !errors.Is(err, model.ErrAlreadyExists) {
		t.Errorf("pull with another kernel over an existing name: %v", err)
	}
	// The same tag moved to other content: refused too.
	other := reg.push(t, "test/conc:latest", mkImage(t, []tarEntry{{name: "c", body: "3"}}))
	if _, err := s.Pull(ctx, other, PullOptions{Name: "conc", Insecure: true, SizeMiB: 32}); !errors.Is(err, model.ErrAlreadyExists) {
		t.Errorf("pull of other content over an existing name: %v", err)
	}

	// Prune keeps blobs of existing images, drops them once both are gone.
	rep, err := s.PruneCache(ctx, false)
	if err != nil || len(rep.Removed) != 0 {
		t.Errorf("prune with images present removed %v (%v)", rep.Removed, err)
	}
	for _, n := range []string{"conc", "conc-again"} {
		if err := s.Delete(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	if entries, _ := os.ReadDir(filepath.Join(s.Dir, "sha256")); len(entries) != 0 {
		t.Errorf("image files left after delete: %v", entries)
	}
	rep, err = s.PruneCache(ctx, true)
	if err != nil || len(rep.Removed) < len(want) || rep.FreedBytes <= 0 {
		t.Errorf("dry-run prune: %+v %v", rep, err)
	}
	if blobs, _ := os.ReadDir(filepath.Join(s.CacheDir, "blobs", "sha256")); len(blobs) != len(want) {
		t.Errorf("dry run removed blobs: %v", blobs)
	}
	if _, err := s.PruneCache(ctx, false); err != nil {
		t.Fatal(err)
	}
	if blobs, _ := os.ReadDir(filepath.Join(s.CacheDir, "blobs", "sha256")); len(blobs) != 0 {
		t.Errorf("prune left blobs: %v", blobs)
	}
}

func TestPullRejectsTraversal(t *testing.T) {
	pullTools(t)
	ctx := context.Background()
	reg := newTestRegistry(t)
	for name, entries := range map[string][]tarEntry{
		"dotdot":   {{name: "etc/", typ: tar.TypeDir}, {name: "../evil", body: "x"}},
		"inner":    {{name: "a/../../evil", body: "x"}},
		"hardlink": {{name: "x", typ: tar.TypeLink, link: "../../etc/passwd"}},
		"newline":  {{name: "bad\nname", body: "x"}},
	} {
		t.Run(name, func(t *testing.T) {
			ref := reg.push(t, "test/evil-"+name+":v1", mkImage(t, entries))
			s := newTestStore(t)
			_, err := s.Pull(ctx, ref, PullOptions{Name: "evil", Insecure: true, SizeMiB: 32})
			if !errors.Is(err, ErrUnsafeEntry) {
				t.Fatalf("error = %v, want ErrUnsafeEntry", err)
			}
			assertNothingHalfDone(t, s, "evil")
		})
	}
}

type basicKeychain struct{}

func (basicKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	return &authn.Basic{Username: "user", Password: "wrong"}, nil
}

func TestPullBadInput(t *testing.T) {
	pullTools(t)
	ctx := context.Background()
	reg := newTestRegistry(t)
	img := mkImage(t, []tarEntry{{name: "f", body: strings.Repeat("data", 50000)}})
	ref := reg.push(t, "test/bad:v1", img)
	m, _ := img.Manifest()
	layer := m.Layers[0].Digest.String()

	t.Run("unknown ref", func(t *testing.T) {
		s := newTestStore(t)
		_, err := s.Pull(ctx, reg.host+"/test/bad:nope", PullOptions{Name: "x", Insecure: true})
		if !errors.Is(err, ErrRefNotFound) || !errors.Is(err, model.ErrNotFound) {
			t.Fatalf("error = %v", err)
		}
		assertNothingHalfDone(t, s, "x")
	})
	t.Run("auth failure", func(t *testing.T) {
		reg.mu.Lock()
		reg.intercept = func(w http.ResponseWriter, r *http.Request) bool {
			if u, p, ok := r.BasicAuth(); ok && u == "user" && p == "right" {
				return false
			}
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			w.WriteHeader(http.StatusUnauthorized)
			return true
		}
		reg.mu.Unlock()
		defer func() { reg.mu.Lock(); reg.intercept = nil; reg.mu.Unlock() }()
		s := newTestStore(t)
		_, err := s.Pull(ctx, ref, PullOptions{Name: "x", Insecure: true, Keychain: basicKeychain{}})
		if !errors.Is(err, ErrAuth) {
			t.Fatalf("error = %v, want ErrAuth", err)
		}
		assertNothingHalfDone(t, s, "x")
	})
	t.Run("corrupt blob", func(t *testing.T) {
		reg.mu.Lock()
		reg.intercept = func(w http.ResponseWriter, r *http.Request) bool {
			if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, layer) {
				return false
			}
			body := mkCorrupt(t, img)
			w.Header().Set("Content-Length", fmt.Sprint(len(body)))
			w.WriteHeader(http.StatusOK)
			w.Write(body)
			return true
		}
		reg.mu.Unlock()
		defer func() { reg.mu.Lock(); reg.intercept = nil; reg.mu.Unlock() }()
		s := newTestStore(t)
		_, err := s.Pull(ctx, ref, PullOptions{Name: "x", Insecure: true})
		if !errors.Is(err, ErrCorruptBlob) {
			t.Fatalf("error = %v, want ErrCorruptBlob", err)
		}
		assertNothingHalfDone(t, s, "x")
		if _, err := os.Stat(s.blobPath(m.Layers[0].Digest.Hex)); err == nil {
			t.Error("corrupt blob was cached")
		}
	})
	t.Run("interrupted", func(t *testing.T) {
		started := make(chan struct{}, 1)
		reg.mu.Lock()
		reg.intercept = func(w http.ResponseWriter, r *http.Request) bool {
			if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, layer) {
				return false
			}
			w.Header().Set("Content-Length", fmt.Sprint(m.Layers[0].Size))
			w.WriteHeader(http.StatusOK)
			w.Write(make([]byte, 1000))
			w.(http.Flusher).Flush()
			select {
			case started <- struct{}{}:
			default:
			}
			<-r.Context().Done() // hang until the client goes away
			return true
		}
		reg.mu.Unlock()
		defer func() { reg.mu.Lock(); reg.intercept = nil; reg.mu.Unlock() }()
		s := newTestStore(t)
		cctx, cancel := context.WithCancel(ctx)
		go func() { <-started; cancel() }()
		_, err := s.Pull(cctx, ref, PullOptions{Name: "x", Insecure: true})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("error = %v, want context.Canceled", err)
		}
		// the flight ends asynchronously after its last waiter left
		deadline := time.Now().Add(5 * time.Second)
		for {
			s.mu.Lock()
			n := len(s.flights)
			s.mu.Unlock()
			if n == 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		assertNothingHalfDone(t, s, "x")
	})
}

// mkCorrupt returns the image's first compressed layer with one byte
// flipped (same length, wrong digest).
func mkCorrupt(t testing.TB, img v1.Image) []byte {
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := ls[0].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	data, _ := io.ReadAll(rc)
	data[len(data)/2] ^= 0xff
	return data
}

// TestPullUnprivilegedStaging exercises the path of a daemon that is not
// root: the staging tree has the daemon's ownership and relaxed modes, and
// the layers' real ownership and modes are set in the ext4 with debugfs.
func TestPullUnprivilegedStaging(t *testing.T) {
	pullTools(t)
	ctx := context.Background()
	reg := newTestRegistry(t)
	ref := reg.push(t, "test/unpriv:v1", mkImage(t, []tarEntry{
		{name: "etc/", typ: tar.TypeDir},
		{name: "etc/shadow", mode: 0o640, gid: 42, body: "s"},
		{name: "usr/bin/sudo", mode: 0o4755, body: "sudo"},
		{name: "ro/", typ: tar.TypeDir, mode: 0o555, uid: 5, gid: 6},
		{name: "ro/f", mode: 0o400, uid: 1000, gid: 1000, body: "f"},
		{name: "ro/l", typ: tar.TypeSymlink, link: "f", uid: 7, gid: 7},
		{name: "root/", typ: tar.TypeDir, mode: 0o700},
		{name: "root/.profile", mode: 0o600, body: "p"},
	}))
	s := newTestStore(t)
	s.unprivileged = true
	img, err := s.Pull(ctx, ref, PullOptions{Name: "unpriv", Insecure: true, SizeMiB: 32})
	if err != nil {
		t.Fatal(err)
	}
	r := hostexec.Real{}
	if err := ext4.Check(ctx, r, img.Path); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]ext4.FileInfo{
		"/etc/shadow":               {Mode: 0o640, GID: 42},
		"/usr/bin/sudo":             {Mode: 0o755 | os.ModeSetuid},
		"/usr/bin":                  {Mode: os.ModeDir | 0o755},
		"/ro":                       {Mode: os.ModeDir | 0o555, UID: 5, GID: 6},
		"/ro/f":                     {Mode: 0o400, UID: 1000, GID: 1000},
		"/ro/l":                     {Mode: os.ModeSymlink | 0o777, UID: 7, GID: 7},
		GuestWorkSeed + "/.profile": {Mode: 0o600},
	} {
		fi, err := ext4.Stat(ctx, r, img.Path, p)
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		if fi.Mode != want.Mode || fi.UID != want.UID || fi.GID != want.GID {
			t.Errorf("%s: mode %v %d:%d, want %v %d:%d", p, fi.Mode, fi.UID, fi.GID, want.Mode, want.UID, want.GID)
		}
	}
}
