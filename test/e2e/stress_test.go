package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
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

	"github.com/bangerdev/banger/internal/model"
)

// bangerCtx runs the CLI inside the netns; the command is killed when ctx
// ends.
func (e *env) bangerCtx(ctx context.Context, args ...string) (stdout, stderr string, err error) {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", e.ns, filepath.Join(e.bin, "banger")}, args...)...)
	cmd.Env = e.environ()
	var o, s bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &s
	err = cmd.Run()
	return o.String(), s.String(), err
}

// dumpDaemonStacks asks the daemon for its goroutines (SIGQUIT makes a Go
// program print them and exit) and returns the end of its log: the
// evidence of a deadlock.
func (e *env) dumpDaemonStacks() string {
	if pid := e.daemonPID(); pid > 0 {
		_ = syscall.Kill(pid, syscall.SIGQUIT)
		e.waitDaemonExit(10 * time.Second)
	}
	data, _ := os.ReadFile(filepath.Join(e.dir, "bangerd.log"))
	return tail(string(data), 40000)
}

// createDeleteCycle creates (and boots) a VM, reaches it over ssh and
// deletes it; it returns what failed, or "".
func (e *env) createDeleteCycle(ctx context.Context, name string) string {
	out, serr, err := e.bangerCtx(ctx, "vm", "create", "--name", name)
	if err != nil {
		vm := e.showQuiet(name)
		msg := fmt.Sprintf("create %s: %v\n%s%s", name, err, out, serr)
		if vm != nil {
			msg += "\nconsole tail:\n" + e.consoleTail(vm.ID, 2000)
		}
		_, _, _ = e.bangerCtx(ctx, "vm", "delete", name)
		return msg
	}
	vm := e.showQuiet(name)
	if vm == nil || vm.State != model.StateRunning {
		return fmt.Sprintf("create %s: not running after create: %+v", name, vm)
	}
	if out, err := e.ssh(vm.IP, "true"); err != nil {
		return fmt.Sprintf("ssh %s: %v %s", name, err, out)
	}
	if out, serr, err := e.bangerCtx(ctx, "vm", "delete", name); err != nil {
		return fmt.Sprintf("delete %s: %v %s%s", name, err, out, serr)
	}
	return ""
}

// showQuiet is show without failing the test (nil when absent).
func (e *env) showQuiet(ref string) *model.VM {
	out, _, err := e.banger("vm", "show", "--json", ref)
	if err != nil {
		return nil
	}
	var vm model.VM
	if json.Unmarshal([]byte(out), &vm) != nil {
		return nil
	}
	return &vm
}

// TestE2ECreateDeleteStress is defect 1's stress test: sequential
// create/delete cycles (each boots a guest and reaches it over ssh), then
// parallel ones, with 0 failures and no leaks. CI runs 3 sequential and 2
// parallel (every boot is a TCG boot); `make soak` runs 50 and 8
// (BANGER_STRESS_SEQ, BANGER_STRESS_PAR).
func TestE2ECreateDeleteStress(t *testing.T) {
	seq := envInt(t, "BANGER_STRESS_SEQ", 3)
	par := envInt(t, "BANGER_STRESS_PAR", 2)
	e := newEnv(t, envOptions{TapPool: 2})
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(seq+par+2)*3*time.Minute)
	defer cancel()

	var failures []string
	var took []time.Duration
	for i := 0; i < seq; i++ {
		start := time.Now()
		if f := e.createDeleteCycle(ctx, fmt.Sprintf("s%d", i)); f != "" {
			failures = append(failures, f)
			t.Errorf("sequential cycle %d: %s", i, f)
		}
		took = append(took, time.Since(start))
	}
	if seq > 0 {
		sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
		t.Logf("%d/%d sequential create/ssh/delete cycles passed; median %s, max %s", seq-len(failures), seq,
			took[len(took)/2].Round(100*time.Millisecond), took[len(took)-1].Round(100*time.Millisecond))
	}
	e.assertNoLeaks("after the sequential cycles")

	var mu sync.Mutex
	var wg sync.WaitGroup
	parFailures := 0
	start := time.Now()
	for i := 0; i < par; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if f := e.createDeleteCycle(ctx, fmt.Sprintf("p%d", i)); f != "" {
				mu.Lock()
				parFailures++
				mu.Unlock()
				t.Errorf("parallel cycle %d: %s", i, f)
			}
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		t.Fatalf("stress did not finish in time:\n%s", e.dumpDaemonStacks())
	}
	if par > 0 {
		t.Logf("%d/%d parallel create/ssh/delete cycles passed in %s", par-parFailures, par, time.Since(start).Round(100*time.Millisecond))
	}
	if vms := e.list(); len(vms) != 0 {
		t.Errorf("%d VMs left after the cycles", len(vms))
	}
	e.assertNoLeaks("after the parallel cycles")
}

// blobCounter is an in-process registry that counts blob GETs.
type blobCounter struct {
	mu   sync.Mutex
	gets map[string]int
}

func (b *blobCounter) counts() map[string]int {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := map[string]int{}
	for k, v := range b.gets {
		out[k] = v
	}
	return out
}

// serveCountingRegistry serves one in-process registry that counts blob
// GETs on the host's loopback (for the test to push) and on the netns's
// loopback (for the daemon to pull); it returns both addresses and the
// counter.
func (e *env) serveCountingRegistry(t *testing.T) (hostAddr, nsAddr string, bc *blobCounter) {
	t.Helper()
	nsLn, err := listenInNetns(e.ns)
	if err != nil {
		t.Fatal(err)
	}
	hostLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	bc = &blobCounter{gets: map[string]int{}}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:") {
			bc.mu.Lock()
			bc.gets[r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]]++
			bc.mu.Unlock()
		}
		reg.ServeHTTP(w, r)
	})
	for _, ln := range []net.Listener{hostLn, nsLn} {
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		t.Cleanup(func() { _ = srv.Close() })
	}
	return hostLn.Addr().String(), nsLn.Addr().String(), bc
}

// pushTestImage pushes img as test/conc:latest to the registry at
// hostAddr and returns its reference at nsAddr (as the daemon sees it).
func pushTestImage(t *testing.T, hostAddr, nsAddr string, img v1.Image) string {
	t.Helper()
	ref, err := name.ParseReference(hostAddr+"/test/conc:latest", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	return nsAddr + "/test/conc:latest"
}

// testOCIImage is a small two-layer image (no sshd: it is pulled, not
// booted).
func testOCIImage(t *testing.T) v1.Image {
	t.Helper()
	var layers []v1.Layer
	for i, files := range []map[string]string{
		{"etc/hostname": "conc\n", "etc/os-release": "ID=test\n"},
		{"srv/data": strings.Repeat("x", 200000)},
	} {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		names := make([]string, 0, len(files))
		for n := range files {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			if err := tw.WriteHeader(&tar.Header{Name: n, Mode: 0o644, Size: int64(len(files[n])), Typeflag: tar.TypeReg}); err != nil {
				t.Fatal(err)
			}
			_, _ = tw.Write([]byte(files[n]))
		}
		_ = tw.Close()
		data := buf.Bytes()
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
		if err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
		layers = append(layers, l)
	}
	img, err := mutate.AppendLayers(empty.Image, layers...)
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

// TestE2EConcurrentCreatesPullsAndDeletes runs at once, against one
// daemon: 8 creates, 4 pulls of the same OCI image from an in-process
// registry inside the VM network namespace, 2 real starts, and deletes
// racing those starts and the creates. Everything must finish within a
// bound (a deadlock fails with the daemon's goroutine dump), each blob is
// fetched from the registry exactly once, every pull yields the same
// image, every VM ends settled (a started VM that survived answers ssh)
// and, once all are deleted, nothing leaks.
func TestE2EConcurrentCreatesPullsAndDeletes(t *testing.T) {
	e := newEnv(t, envOptions{TapPool: 2})
	hostAddr, nsAddr, blobs := e.serveCountingRegistry(t)
	img := testOCIImage(t)
	ref := pushTestImage(t, hostAddr, nsAddr, img)
	before := blobs.counts()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var mu sync.Mutex
	var wg sync.WaitGroup
	var problems []string
	fail := func(format string, args ...any) {
		mu.Lock()
		problems = append(problems, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	// 8 creates (records; two of them are then started for real).
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if out, serr, err := e.bangerCtx(ctx, "vm", "create", "--no-start", "--name", fmt.Sprintf("k%d", i)); err != nil {
				fail("create k%d: %v %s%s", i, err, out, serr)
			}
		}()
	}
	// 4 pulls of the same image.
	pulled := make([]string, 4)
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, serr, err := e.bangerCtx(ctx, "image", "pull", "--insecure", "--size", "64M", "--json", ref)
			if err != nil {
				fail("pull %d: %v %s%s", i, err, out, serr)
				return
			}
			var im model.Image
			if json.Unmarshal([]byte(out), &im) != nil {
				fail("pull %d printed %q", i, out)
				return
			}
			pulled[i] = im.Name + "@" + im.SHA256
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		t.Fatalf("creates and pulls did not finish within the bound:\n%s", e.dumpDaemonStacks())
	}
	for _, p := range problems {
		t.Error(p)
	}
	problems = nil
	for i := 1; i < 4; i++ {
		if pulled[i] != pulled[0] {
			t.Errorf("pull %d gave %s, pull 0 gave %s", i, pulled[i], pulled[0])
		}
	}
	after := blobs.counts()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	digests := []string{m.Config.Digest.String()}
	for _, l := range m.Layers {
		digests = append(digests, l.Digest.String())
	}
	for _, d := range digests {
		if n := after[d] - before[d]; n != 1 {
			t.Errorf("blob %s fetched %d times by 4 concurrent pulls, want 1", d, n)
		}
	}

	// Starts of k0 and k1 with deletes racing them (k1 is deleted while it
	// starts) and deleting the records that are not started.
	wg.Add(3)
	go func() {
		defer wg.Done()
		_, _, _ = e.bangerCtx(ctx, "vm", "start", "k0", "k1")
	}()
	go func() {
		defer wg.Done()
		time.Sleep(2 * time.Second)
		out, serr, err := e.bangerCtx(ctx, "vm", "delete", "k1")
		t.Logf("delete k1 during its start: %v %s%s", err, out, serr)
	}()
	go func() {
		defer wg.Done()
		if out, serr, err := e.bangerCtx(ctx, "vm", "delete", "k2", "k3", "k4", "k5", "k6", "k7"); err != nil {
			fail("delete k2..k7 during the starts: %v %s%s", err, out, serr)
		}
	}()
	wg.Wait()
	if ctx.Err() != nil {
		t.Fatalf("starts and deletes did not finish within the bound:\n%s", e.dumpDaemonStacks())
	}
	for _, p := range problems {
		t.Error(p)
	}
	e.assertSettled("after the racing starts and deletes", true)
	e.assertNoLeaks("after the racing starts and deletes")
	if k0 := e.showQuiet("k0"); k0 == nil || k0.State != model.StateRunning {
		t.Errorf("k0 (started, not deleted) is %+v", k0)
	}
	var left []string
	for _, v := range e.list() {
		left = append(left, v.Name)
	}
	if len(left) > 0 {
		e.must(append([]string{"vm", "delete"}, left...)...)
	}
	e.assertNoLeaks("after deleting all")
}
