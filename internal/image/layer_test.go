package image

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/ext4"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/progress"
)

func TestCleanEntry(t *testing.T) {
	good := map[string]string{
		"etc/passwd": "etc/passwd", "./etc/passwd": "etc/passwd", "/etc/passwd": "etc/passwd",
		"etc//x/./y/": "etc/x/y", "./": "", "/": "", "a b/\"q\"": "a b/\"q\"", "...": "...", "..a": "..a",
	}
	for in, want := range good {
		got, err := cleanEntry(in)
		if err != nil || got != want {
			t.Errorf("cleanEntry(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"../x", "a/../../x", "a/..", "/..", "a\nb", "a\rb", strings.Repeat("x", 256)} {
		if _, err := cleanEntry(in); !errors.Is(err, ErrUnsafeEntry) {
			t.Errorf("cleanEntry(%q) = %v, want ErrUnsafeEntry", in, err)
		}
	}
}

func FuzzCleanEntry(f *testing.F) {
	for _, s := range []string{"etc/x", "../x", "/a/./b/", "a/..", ".wh..wh..opq", "a\nb"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		rel, err := cleanEntry(name)
		if err != nil {
			return
		}
		if rel == "" {
			return
		}
		for _, c := range strings.Split(rel, "/") {
			if c == "" || c == "." || c == ".." {
				t.Fatalf("cleanEntry(%q) = %q has component %q", name, rel, c)
			}
		}
		if path.Clean("/"+rel) != "/"+rel {
			t.Fatalf("cleanEntry(%q) = %q is not clean", name, rel)
		}
		if err := ext4.CheckPath("/" + rel); err != nil {
			t.Fatalf("cleanEntry(%q) = %q, which the ext4 tools refuse: %v", name, rel, err)
		}
	})
}

// snapshot lists every path under dir except those under skip.
func snapshot(t testing.TB, dir, skip string) []string {
	var out []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if p == skip {
			return filepath.SkipDir
		}
		out = append(out, p)
		return nil
	})
	sort.Strings(out)
	return out
}

// FuzzUnpackLayer applies layers with fuzzed names, types and link targets
// on top of symlinks that point out of the root, and checks that nothing
// outside the root is ever created or changed.
func FuzzUnpackLayer(f *testing.F) {
	f.Add("up/x", "", uint8('0'), "abs/y", "", uint8('0'))
	f.Add("up/d/", "", uint8('5'), "up/d/f", "", uint8('0'))
	f.Add("l", "up/../../x", uint8('2'), "l/x", "", uint8('0'))
	f.Add("h", "up/outside", uint8('1'), "abs/.wh.outside", "", uint8('0'))
	f.Add("up/.wh..wh..opq", "", uint8('0'), "../x", "", uint8('0'))
	f.Add("x", "abs", uint8('1'), "deep/a/b/c", "../../../../../..", uint8('2'))
	f.Fuzz(func(t *testing.T, n1, l1 string, t1 uint8, n2, l2 string, t2 uint8) {
		parent := t.TempDir()
		root := filepath.Join(parent, "root")
		os.Mkdir(root, 0o755)
		os.WriteFile(filepath.Join(parent, "outside"), []byte("sentinel"), 0o644)
		os.Symlink("../", filepath.Join(root, "up")) // relative escape
		os.Symlink(parent, filepath.Join(root, "abs"))
		before := snapshot(t, parent, root)
		u, err := newUnpacker(root, os.Geteuid() == 0)
		if err != nil {
			t.Fatal(err)
		}
		defer u.close()
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, e := range []struct {
			n, l string
			t    uint8
		}{{n1, l1, t1}, {n2, l2, t2}} {
			typ := e.t % 8
			typ += '0'
			h := &tar.Header{Name: e.n, Linkname: e.l, Typeflag: typ, Mode: 0o644, Format: tar.FormatPAX}
			if typ == tar.TypeReg {
				h.Size = 3
			}
			if tw.WriteHeader(h) != nil {
				return
			}
			if typ == tar.TypeReg {
				tw.Write([]byte("abc"))
			}
		}
		tw.Close()
		_ = u.applyLayer(&buf) // errors are fine; escapes are not
		after := snapshot(t, parent, root)
		if strings.Join(before, "\n") != strings.Join(after, "\n") {
			t.Fatalf("entries %q/%q (%c, %c) changed the tree outside the root:\nbefore %v\nafter  %v", n1, n2, t1, t2, before, after)
		}
		if data, _ := os.ReadFile(filepath.Join(parent, "outside")); string(data) != "sentinel" {
			t.Fatalf("file outside the root modified: %q", data)
		}
	})
}

// TestUnpackWithoutRoot runs the staging path used when the daemon is not
// root: ownership and real modes are recorded for the ext4 fix-up instead
// of applied, and staged modes stay usable by the owner.
func TestUnpackWithoutRoot(t *testing.T) {
	root := t.TempDir()
	u, err := newUnpacker(root, false)
	if err != nil {
		t.Fatal(err)
	}
	defer u.close()
	layer := mkTar(t, []tarEntry{
		{name: "ro/", typ: tar.TypeDir, mode: 0o555},
		{name: "ro/secret", mode: 0o200, uid: 7, gid: 8, body: "s"},
		{name: "ro/suid", mode: 0o4755, body: "x"},
		{name: "ro/link", typ: tar.TypeSymlink, link: "suid", uid: 3},
		{name: "implicit/child", body: "c"},
	})
	if err := u.applyLayer(bytes.NewReader(layer)); err != nil {
		t.Fatal(err)
	}
	if err := u.applyLayer(bytes.NewReader(mkTar(t, []tarEntry{{name: "ro/new", body: "n"}}))); err != nil {
		t.Fatalf("a later layer cannot write into a read-only directory: %v", err)
	}
	want := map[string]fileMeta{
		"ro":        {mode: 0o555},
		"ro/secret": {uid: 7, gid: 8, mode: 0o200},
		"ro/suid":   {mode: 0o4755},
		"ro/link":   {uid: 3, mode: 0o644, symlink: true},
		"implicit":  {mode: 0o755},
		"ro/new":    {mode: 0o644},
	}
	for k, w := range want {
		if got, ok := u.meta[k]; !ok || got != w {
			t.Errorf("meta[%q] = %+v (%v), want %+v", k, got, ok, w)
		}
	}
	if data, err := os.ReadFile(filepath.Join(root, "ro/secret")); err != nil || string(data) != "s" {
		t.Errorf("staged write-only file unreadable for mkfs: %v", err)
	}
	if err := removeTree(root); err != nil {
		t.Errorf("staging tree cannot be removed: %v", err)
	}
}

func TestDefaultPullName(t *testing.T) {
	for in, want := range map[string]string{
		"docker.io/library/alpine:3.20": "alpine-3-20",
		"alpine":                        "alpine",
		"ghcr.io/org/Tool:latest":       "tool",
		"localhost:5000/a/b@sha256:abc": "b",
		"reg:5000/x/debian:bookworm":    "debian-bookworm",
	} {
		if got := DefaultPullName(in); got != want || model.ValidateName(got) != nil {
			t.Errorf("DefaultPullName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestCoalesce(t *testing.T) {
	s := &Store{}
	var runs atomic.Int32
	release := make(chan struct{})
	var mu sync.Mutex
	var events []string
	fn := func(ctx context.Context) (*model.Image, error) {
		runs.Add(1)
		progress.Stage(ctx, "work", "")
		<-release
		return &model.Image{Name: "x", SHA256: "abc"}, nil
	}
	var wg sync.WaitGroup
	results := make([]*model.Image, 3)
	for i := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := progress.WithSink(context.Background(), func(e progress.Event) {
				mu.Lock()
				events = append(events, e.Stage)
				mu.Unlock()
			})
			results[i], _ = s.coalesce(ctx, "x", "same", fn)
		}()
	}
	time.Sleep(50 * time.Millisecond)
	close(release)
	wg.Wait()
	if runs.Load() != 1 {
		t.Errorf("work ran %d times, want 1", runs.Load())
	}
	for i, r := range results {
		if r == nil || r.SHA256 != "abc" {
			t.Errorf("caller %d got %+v", i, r)
		}
	}
	if len(events) == 0 {
		t.Error("no progress reached the callers")
	}

	// A caller that gives up cancels the work when it is the last one.
	started := make(chan struct{})
	cancelled := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-started; cancel() }()
	_, err := s.coalesce(ctx, "y", "k", func(ctx context.Context) (*model.Image, error) {
		close(started)
		<-ctx.Done()
		close(cancelled)
		return nil, ctx.Err()
	})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error = %v", err)
	}
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		t.Error("work not cancelled after its only caller left")
	}

	// A different key for the same name waits, then runs.
	var order []string
	block := make(chan struct{})
	go s.coalesce(context.Background(), "z", "a", func(context.Context) (*model.Image, error) {
		<-block
		mu.Lock()
		order = append(order, "a")
		mu.Unlock()
		return nil, nil
	})
	time.Sleep(20 * time.Millisecond)
	go func() { time.Sleep(50 * time.Millisecond); close(block) }()
	s.coalesce(context.Background(), "z", "b", func(context.Context) (*model.Image, error) {
		mu.Lock()
		order = append(order, "b")
		mu.Unlock()
		return nil, nil
	})
	if strings.Join(order, ",") != "a,b" {
		t.Errorf("order %v, want a then b", order)
	}
}

func TestHashFileSparse(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	f, _ := os.Create(p)
	f.Truncate(5 << 20)
	f.WriteAt([]byte("data in the middle"), 3<<20+17)
	f.WriteAt([]byte("tail"), 5<<20-4)
	f.Close()
	want, _ := os.ReadFile(p)
	sum := sha256.Sum256(want)
	got, size, err := hashFile(context.Background(), p)
	if err != nil || got != hex.EncodeToString(sum[:]) || size != 5<<20 {
		t.Errorf("hashFile = %s %d %v, want %x", got, size, err, sum)
	}
}

// TestUnpackLimits: a layer that unpacks to too many entries or bytes is
// refused with ErrImageTooLarge instead of filling the disk (#15.11).
func TestUnpackLimits(t *testing.T) {
	for _, tc := range []struct {
		name              string
		maxBytes, maxEnts int64
		entries           []tarEntry
	}{
		{"entries", 0, 3, []tarEntry{{name: "a", body: "1"}, {name: "b", body: "2"}, {name: "c", body: "3"}, {name: "d", body: "4"}}},
		{"bytes", 10, 0, []tarEntry{{name: "a", body: "12345"}, {name: "b", body: "123456"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			u, err := newUnpacker(root, false)
			if err != nil {
				t.Fatal(err)
			}
			defer u.close()
			u.maxBytes, u.maxEntries = tc.maxBytes, tc.maxEnts
			err = u.applyLayer(bytes.NewReader(mkTar(t, tc.entries)))
			if !errors.Is(err, ErrImageTooLarge) {
				t.Fatalf("applyLayer = %v, want ErrImageTooLarge", err)
			}
		})
	}
}
