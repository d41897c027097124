package template

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func testKey() Key {
	return Key{Image: "debian", ImageDigest: "sha256:aa", KernelDigest: "sha256:bb", VCPU: 2,
		MemoryMiB: 512, GuestContract: 1, Driver: "qemu", VMMVersion: "9.2.1"}
}

func fakeMaker(calls *atomic.Int32, gate <-chan struct{}) Maker {
	return MakerFunc(func(ctx context.Context, key Key, dir string) (Files, error) {
		calls.Add(1)
		if gate != nil {
			<-gate
		}
		for _, f := range []string{"state", "root.ext4", "work.ext4"} {
			if err := os.WriteFile(filepath.Join(dir, f), []byte(key.ImageDigest), 0o600); err != nil {
				return Files{}, err
			}
		}
		return Files{State: "state", RootDisk: "root.ext4", WorkDisk: "work.ext4"}, nil
	})
}

func TestKeyIDCoversEveryFieldButImageName(t *testing.T) {
	base := testKey()
	same := base
	same.Image = "renamed"
	if base.ID() != same.ID() {
		t.Fatal("image name changed the id")
	}
	mut := []func(*Key){
		func(k *Key) { k.ImageDigest = "x" }, func(k *Key) { k.KernelDigest = "x" },
		func(k *Key) { k.VCPU = 3 }, func(k *Key) { k.MemoryMiB = 1024 },
		func(k *Key) { k.GuestContract = 2 }, func(k *Key) { k.Driver = "firecracker" },
		func(k *Key) { k.DiskMiB = 4096 }, func(k *Key) { k.Guest = "other" },
		func(k *Key) { k.VMMVersion = "10" },
	}
	for i, m := range mut {
		k := base
		m(&k)
		if k.ID() == base.ID() {
			t.Errorf("mutation %d did not change the id", i)
		}
	}
	if !ValidID(base.ID()) {
		t.Fatalf("id %q not valid", base.ID())
	}
	if err := (Key{}).Validate(); err == nil {
		t.Fatal("empty key validated")
	}
}

func TestEnsureMakesOnceForConcurrentCallers(t *testing.T) {
	var calls atomic.Int32
	gate := make(chan struct{})
	m := NewManager(NewStore(t.TempDir(), nil), fakeMaker(&calls, gate))
	var wg sync.WaitGroup
	ids := make([]string, 8)
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tp, _, err := m.Ensure(context.Background(), testKey())
			if err != nil {
				t.Error(err)
				return
			}
			ids[i] = tp.ID
		}()
	}
	time.Sleep(50 * time.Millisecond)
	close(gate)
	wg.Wait()
	if n := calls.Load(); n != 1 {
		t.Fatalf("maker ran %d times, want 1", n)
	}
	for _, id := range ids {
		if id != testKey().ID() {
			t.Fatalf("got id %q", id)
		}
	}
	if _, made, err := m.Ensure(context.Background(), testKey()); err != nil || made {
		t.Fatalf("second ensure: made=%v err=%v", made, err)
	}
}

func TestKeyChangeReplacesImageTemplate(t *testing.T) {
	var calls atomic.Int32
	st := NewStore(t.TempDir(), nil)
	m := NewManager(st, fakeMaker(&calls, nil))
	old, _, err := m.Ensure(context.Background(), testKey())
	if err != nil {
		t.Fatal(err)
	}
	k := testKey()
	k.ImageDigest = "sha256:new"
	nw, made, err := m.Ensure(context.Background(), k)
	if err != nil || !made {
		t.Fatalf("made=%v err=%v", made, err)
	}
	ts, _ := st.List()
	if len(ts) != 1 || ts[0].ID != nw.ID {
		t.Fatalf("templates after key change: %+v", ts)
	}
	if _, err := os.Stat(old.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("old template dir still there: %v", err)
	}
	if n, err := st.RemoveImage("debian"); err != nil || n != 1 {
		t.Fatalf("remove image: n=%d err=%v", n, err)
	}
}

func TestBrokenTemplatesAreNotFoundAndRemoved(t *testing.T) {
	for name, breakIt := range map[string]func(Template){
		"manifest": func(tp Template) { os.WriteFile(filepath.Join(tp.Dir, manifestName), []byte("{"), 0o600) },
		"state":    func(tp Template) { os.Remove(tp.Path(tp.Files.State)) },
		"nomanif":  func(tp Template) { os.Remove(filepath.Join(tp.Dir, manifestName)) },
	} {
		t.Run(name, func(t *testing.T) {
			var calls atomic.Int32
			st := NewStore(t.TempDir(), nil)
			m := NewManager(st, fakeMaker(&calls, nil))
			tp, _, err := m.Ensure(context.Background(), testKey())
			if err != nil {
				t.Fatal(err)
			}
			breakIt(tp)
			if _, err := st.Get(testKey()); !errors.Is(err, ErrNotFound) {
				t.Fatalf("get broken: %v", err)
			}
			if _, err := os.Stat(tp.Dir); !errors.Is(err, os.ErrNotExist) {
				t.Fatal("broken template not removed")
			}
			if _, made, err := m.Ensure(context.Background(), testKey()); err != nil || !made {
				t.Fatalf("remake: made=%v err=%v", made, err)
			}
		})
	}
}

func TestFailedMakeLeavesNothing(t *testing.T) {
	root := t.TempDir()
	m := NewManager(NewStore(root, nil), MakerFunc(func(ctx context.Context, k Key, dir string) (Files, error) {
		os.WriteFile(filepath.Join(dir, "state"), []byte("x"), 0o600)
		return Files{}, errors.New("boom")
	}))
	if _, _, err := m.Ensure(context.Background(), testKey()); err == nil {
		t.Fatal("want error")
	}
	ents, _ := os.ReadDir(root)
	if len(ents) != 0 {
		t.Fatalf("left %v", ents)
	}
	if err := m.Store().Remove("../x"); err == nil {
		t.Fatal("bad id accepted")
	}
}

func TestRemoveStaging(t *testing.T) {
	root := t.TempDir()
	s := NewStore(root, nil)
	if n, err := s.RemoveStaging(); n != 0 || err != nil {
		t.Fatalf("empty store: %d %v", n, err)
	}
	for _, d := range []string{".make-abc-1", ".make-def-2", "0123456789abcdef0123456789abcdef"} {
		if err := os.MkdirAll(filepath.Join(root, d, "x"), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := s.RemoveStaging(); n != 2 || err != nil {
		t.Fatalf("RemoveStaging = %d, %v", n, err)
	}
	ents, _ := os.ReadDir(root)
	if len(ents) != 1 || ents[0].Name() != "0123456789abcdef0123456789abcdef" {
		t.Errorf("left: %v", ents)
	}
}
