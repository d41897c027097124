package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/image"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/testreq"
)

// devImageName is the image the vm run / workspace tests use: the minbase
// recipe plus git and make, which workspaces and examples/hello need in the
// guest (the harness's minbase image has neither).
const devImageName = "devbase"

var (
	devOnce sync.Once
	devPath string
	devErr  error
)

// devImage returns the cached dev image (an ext4 file), building it on
// first use with the production recipe (debootstrap minbase + git, make).
func devImage(t testing.TB) string {
	t.Helper()
	devOnce.Do(func() {
		dir := testreq.CacheDir(t, "e2e-image")
		mirror, err := image.HostMirror("/etc/apt")
		if err != nil {
			devErr = err
			return
		}
		opts := image.BuildOptions{Name: devImageName, Recipe: image.RecipeDebianBookworm, Suite: "bookworm", Variant: "minbase",
			Mirror: mirror, Packages: []string{"sudo", "git", "make"}, SizeMiB: 1024}
		// Keyed by the build (recipe and what the build adds), so a changed
		// build makes a new image (from the cached debootstrap tree).
		marker := filepath.Join(dir, devImageName+"-"+opts.BuildHash()+".json")
		if data, err := os.ReadFile(marker); err == nil {
			var rec model.Image
			if json.Unmarshal(data, &rec) == nil {
				if _, err := os.Stat(rec.Path); err == nil {
					devPath = rec.Path
					return
				}
			}
		}
		s := &image.Store{Dir: filepath.Join(dir, "images"), CacheDir: testreq.CacheDir(t, "image"),
			Catalog: &image.MemCatalog{}, Runner: hostexec.Real{}, Mirror: mirror}
		ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
		defer cancel()
		start := time.Now()
		img, err := s.Build(ctx, opts)
		if err != nil {
			devErr = err
			return
		}
		t.Logf("built the %s image in %s: %s", devImageName, time.Since(start).Round(time.Second), img.Path)
		data, _ := json.Marshal(img)
		if err := os.WriteFile(marker, data, 0o644); err != nil {
			devErr = err
			return
		}
		devPath = img.Path
	})
	if devErr != nil {
		t.Fatalf("%s image: %v", devImageName, devErr)
	}
	return devPath
}

// newRunEnv is newEnv plus the dev image registered in the test's store.
func newRunEnv(t testing.TB, o envOptions) *env {
	t.Helper()
	testreq.E2E(t)
	img := devImage(t)
	e := newEnv(t, o)
	ctx := context.Background()
	st, err := store.Open(ctx, e.layout.DBPath())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	fi, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.PutImage(ctx, &model.Image{Name: devImageName, Source: "e2e-fixture", Path: img, SizeBytes: fi.Size(),
		SHA256: strings.TrimSuffix(filepath.Base(img), ".ext4"), Kernel: kernelName}); err != nil {
		t.Fatal(err)
	}
	return e
}

// result is one finished CLI run.
type result struct {
	stdout, stderr string
	code           int
	took           time.Duration
}

func (r result) String() string {
	return fmt.Sprintf("exit %d after %s\nstdout: %s\nstderr: %s", r.code, r.took.Round(time.Millisecond), tail(r.stdout, 3000), tail(r.stderr, 3000))
}

// bangerIn runs the CLI inside the netns with dir as working directory,
// stdin (may be nil) and extra environment, and returns its outputs and
// exit status. It never fails the test by itself.
func (e *env) bangerIn(dir string, stdin []byte, args ...string) result {
	return e.bangerT(e.t, dir, stdin, args...)
}

// bangerT is bangerIn reporting to t (a subtest).
func (e *env) bangerT(t testing.TB, dir string, stdin []byte, args ...string) result {
	t.Helper()
	return e.bangerEnvT(t, nil, dir, stdin, args...)
}

// bangerEnvT is bangerT with extra environment (KEY=VALUE).
func (e *env) bangerEnvT(t testing.TB, extraEnv []string, dir string, stdin []byte, args ...string) result {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", e.ns, filepath.Join(e.bin, "banger")}, args...)...)
	cmd.Env = e.environ(extraEnv...)
	cmd.Dir = dir
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var o, s bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &s
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: o.String(), stderr: s.String(), took: time.Since(start)}
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("banger %s: %v", strings.Join(args, " "), err)
		}
		r.code = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			r.code = 128 + int(ws.Signal())
		}
	}
	return r
}

// sha256Hex returns the hex SHA-256 of data.
func sha256Hex(data []byte) string {
	h := sha256.Sum256(data)
	return hex.EncodeToString(h[:])
}

// gitIn runs git in dir (host side) and fails the test on error.
func gitIn(t testing.TB, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", append([]string{"-C", dir}, args...)...)
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.invalid",
		"GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.invalid", "GIT_CONFIG_NOSYSTEM=1", "HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestE2EDevImage builds (or finds) the dev image the vm run tests use, so
// its one-time cost shows up on its own.
func TestE2EDevImage(t *testing.T) {
	testreq.E2E(t)
	p := devImage(t)
	if fi, err := os.Stat(p); err != nil || fi.Size() != 1024<<20 {
		t.Fatalf("dev image %s: %v %v", p, fi, err)
	}
}

// mustT runs the CLI and fails t unless it exits 0; it returns stdout.
func (e *env) mustT(t testing.TB, args ...string) string {
	t.Helper()
	r := e.bangerT(t, "", nil, args...)
	if r.code != 0 {
		t.Fatalf("banger %s: %s", strings.Join(args, " "), r)
	}
	return r.stdout
}
