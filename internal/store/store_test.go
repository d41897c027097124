package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/model"
)

func openTemp(t *testing.T) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, path
}

// rawDB opens the file without migrating it.
func rawDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", dsn(path, false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func TestOpenMigratesFromEmpty(t *testing.T) {
	ctx := context.Background()
	s, path := openTemp(t)
	st, err := readVersion(ctx, s.db)
	if err != nil {
		t.Fatal(err)
	}
	if st.version != SchemaVersion() || st.appID != applicationID {
		t.Fatalf("after Open: version %d app id %#x, want %d %#x", st.version, st.appID, SchemaVersion(), applicationID)
	}
	for _, table := range []string{"vms", "images", "kernels", "ip_leases", "operations", "schema_migrations"} {
		var n int
		if err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master WHERE type='table' AND name=?`, table).Scan(&n); err != nil || n != 1 {
			t.Errorf("table %s: count %d, %v", table, n, err)
		}
	}
	var logged int
	if err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM schema_migrations`).Scan(&logged); err != nil || logged != SchemaVersion() {
		t.Errorf("schema_migrations rows = %d, %v; want %d", logged, err, SchemaVersion())
	}
	var mode, fk, sync string
	_ = s.db.QueryRowContext(ctx, `PRAGMA journal_mode`).Scan(&mode)
	_ = s.db.QueryRowContext(ctx, `PRAGMA foreign_keys`).Scan(&fk)
	_ = s.db.QueryRowContext(ctx, `PRAGMA synchronous`).Scan(&sync)
	if mode != "wal" || fk != "1" || sync != "1" {
		t.Errorf("pragmas: journal_mode=%s foreign_keys=%s synchronous=%s; want wal 1 1(NORMAL)", mode, fk, sync)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("db mode %v, want 0600", fi.Mode().Perm())
	}
	status, detail, err := CheckMigrations(ctx, path)
	if err != nil || status != MigrationsOK {
		t.Fatalf("CheckMigrations = %v %q %v, want ok", status, detail, err)
	}
}

func TestReopenIsIdempotentAndKeepsData(t *testing.T) {
	ctx := context.Background()
	s, path := openTemp(t)
	if err := s.CreateVM(ctx, testVM("keep", "aaaa0001")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		s2, err := Open(ctx, path)
		if err != nil {
			t.Fatalf("reopen %d: %v", i, err)
		}
		if _, err := s2.GetVMByName(ctx, "keep"); err != nil {
			t.Fatalf("reopen %d lost data: %v", i, err)
		}
		var logged int
		_ = s2.db.QueryRowContext(ctx, `SELECT count(*) FROM schema_migrations`).Scan(&logged)
		if logged != SchemaVersion() {
			t.Fatalf("reopen %d: %d migrations logged, want %d", i, logged, SchemaVersion())
		}
		_ = s2.Close()
	}
}

func TestOpenTightensMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
	}
}

func TestOpenMissingDirectory(t *testing.T) {
	_, err := Open(context.Background(), filepath.Join(t.TempDir(), "nope", "state.db"))
	if err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("Open in missing dir = %v, want a 'does not exist' error", err)
	}
}

func TestCheckMigrationsMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	status, detail, err := CheckMigrations(context.Background(), path)
	if err != nil || status != MigrationsNeeded || !strings.Contains(detail, "does not exist") {
		t.Fatalf("CheckMigrations(missing) = %v %q %v", status, detail, err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("CheckMigrations created the file: %v", err)
	}
}

func TestOldSchemaNeedsMigration(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.db")
	if err := ensureFile(path); err != nil {
		t.Fatal(err)
	}
	db := rawDB(t, path)
	if err := migrate(ctx, db, 1); err != nil {
		t.Fatal(err)
	}
	// A VM written by the old schema survives the migration.
	if _, err := db.ExecContext(ctx, `INSERT INTO vms (id, name, state, created_at, updated_at) VALUES ('old00001', 'old', 'stopped', ?, ?)`,
		formatTime(time.Now()), formatTime(time.Now())); err != nil {
		t.Fatal(err)
	}
	_ = db.Close()

	status, detail, err := CheckMigrations(ctx, path)
	if err != nil || status != MigrationsNeeded {
		t.Fatalf("CheckMigrations(v1) = %v %q %v, want migrations needed", status, detail, err)
	}
	if !strings.Contains(detail, fmt.Sprintf("version 1 of %d", SchemaVersion())) || !strings.Contains(detail, "2 (operations)") {
		t.Errorf("detail %q does not say what is pending", detail)
	}
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatalf("Open(v1): %v", err)
	}
	defer s.Close()
	if _, err := s.GetVMByName(ctx, "old"); err != nil {
		t.Fatalf("old VM lost by migration: %v", err)
	}
	if _, err := s.ListOperations(ctx, true); err != nil {
		t.Fatalf("operations table missing after migration: %v", err)
	}
	if status, _, _ := CheckMigrations(ctx, path); status != MigrationsOK {
		t.Fatalf("after Open: status %v", status)
	}
}

func TestNewerSchemaIsIncompatible(t *testing.T) {
	ctx := context.Background()
	s, path := openTemp(t)
	if _, err := s.db.ExecContext(ctx, fmt.Sprintf(`PRAGMA user_version = %d`, SchemaVersion()+1)); err != nil {
		t.Fatal(err)
	}
	_ = s.Close()

	status, detail, err := CheckMigrations(ctx, path)
	if err != nil || status != MigrationsIncompatible {
		t.Fatalf("CheckMigrations(newer) = %v %q %v, want incompatible", status, detail, err)
	}
	if !strings.Contains(detail, fmt.Sprintf("schema version %d", SchemaVersion()+1)) {
		t.Errorf("detail %q does not name the version", detail)
	}
	_, err = Open(ctx, path)
	if !errors.Is(err, ErrIncompatible) {
		t.Fatalf("Open(newer) = %v, want ErrIncompatible", err)
	}
	if !strings.Contains(err.Error(), "newer banger") {
		t.Errorf("error %q does not say what to do", err)
	}
}

func TestForeignDatabaseIsIncompatible(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()

	other := filepath.Join(dir, "other.db")
	db := rawDB(t, other)
	if _, err := db.ExecContext(ctx, `CREATE TABLE notes (x TEXT)`); err != nil {
		t.Fatal(err)
	}
	_ = db.Close()
	if status, _, err := CheckMigrations(ctx, other); err != nil || status != MigrationsIncompatible {
		t.Fatalf("CheckMigrations(foreign tables) = %v %v", status, err)
	}
	if _, err := Open(ctx, other); !errors.Is(err, ErrIncompatible) {
		t.Fatalf("Open(foreign tables) = %v, want ErrIncompatible", err)
	}

	appdb := filepath.Join(dir, "app.db")
	db = rawDB(t, appdb)
	if _, err := db.ExecContext(ctx, `PRAGMA application_id = 1234`); err != nil {
		t.Fatal(err)
	}
	_ = db.Close()
	if _, err := Open(ctx, appdb); !errors.Is(err, ErrIncompatible) {
		t.Fatalf("Open(foreign application id) = %v, want ErrIncompatible", err)
	}

	junk := filepath.Join(dir, "junk.db")
	if err := os.WriteFile(junk, []byte(strings.Repeat("not a database ", 100)), 0o600); err != nil {
		t.Fatal(err)
	}
	if status, _, err := CheckMigrations(ctx, junk); err == nil || status != MigrationsIncompatible {
		t.Fatalf("CheckMigrations(junk) = %v %v, want an error and incompatible", status, err)
	}
}

func TestConcurrentOpenMigratesOnce(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.db")
	errs := make(chan error, 4)
	stores := make(chan *Store, 4)
	for i := 0; i < 4; i++ {
		go func() {
			s, err := Open(ctx, path)
			errs <- err
			stores <- s
		}()
	}
	for i := 0; i < 4; i++ {
		if err := <-errs; err != nil {
			t.Errorf("concurrent Open: %v", err)
		}
		if s := <-stores; s != nil {
			defer s.Close()
		}
	}
	status, _, err := CheckMigrations(ctx, path)
	if err != nil || status != MigrationsOK {
		t.Fatalf("status %v %v", status, err)
	}
}

func testVM(name, id string) *model.VM {
	return &model.VM{
		ID: id, Name: name, State: model.StateStopped, Image: "debian-bookworm", Kernel: "debian",
		Driver: "qemu", VCPU: 2, MemoryMiB: 2048, DiskSizeMiB: 8192,
	}
}

func TestVMRoundTrip(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	t0 := time.Date(2025, 3, 4, 5, 6, 7, 123456789, time.FixedZone("x", 3600))
	s.now = func() time.Time { return t0 }
	vm := testVM("web-1", "0123456789abcdef")
	vm.NAT = true
	vm.AllowLAN = true
	vm.Ports = []model.PortForward{{HostAddr: "127.0.0.1", HostPort: 18080, GuestPort: 8080, Proto: "tcp"}, {HostAddr: "::", HostPort: 8443, GuestPort: 443, Proto: "tcp"}}
	vm.IP = "172.30.0.2"
	vm.MAC = "02:00:ac:1e:00:02"
	vm.Error = "boom"
	vm.State = model.StateRunning
	vm.Runtime = model.Runtime{
		PID: 4242, PIDFile: "/run/x.pid", APISocket: "/run/x.sock", Tap: "tap-web-1",
		Loops: []string{"/dev/loop3", "/dev/loop4"}, DMName: "banger-web-1", NATActive: true,
		Accel: "tcg", StartedAt: t0.Add(time.Second), CoW: "dm",
	}
	vm.Workspace = &model.Workspace{HostPath: "/src/repo", GuestPath: "/root/repo", HeadCommit: "abc", Branch: "main", PreparedAt: t0}
	if err := s.CreateVM(ctx, vm); err != nil {
		t.Fatal(err)
	}
	if !vm.CreatedAt.Equal(t0) || !vm.UpdatedAt.Equal(t0) {
		t.Fatalf("CreateVM did not stamp times: %v %v", vm.CreatedAt, vm.UpdatedAt)
	}
	got, err := s.GetVM(ctx, vm.ID)
	if err != nil {
		t.Fatal(err)
	}
	assertSameVM(t, got, vm)
	byName, err := s.GetVMByName(ctx, "web-1")
	if err != nil {
		t.Fatal(err)
	}
	assertSameVM(t, byName, vm)

	// Update: every mutable field, including clearing the workspace.
	t1 := t0.Add(time.Hour)
	s.now = func() time.Time { return t1 }
	got.State = model.StateStopped
	got.Runtime = model.Runtime{}
	got.Workspace = nil
	got.IP = ""
	got.NAT = false
	got.VCPU = 4
	if err := s.UpdateVM(ctx, got); err != nil {
		t.Fatal(err)
	}
	if !got.UpdatedAt.Equal(t1) {
		t.Fatalf("UpdateVM set UpdatedAt %v, want %v", got.UpdatedAt, t1)
	}
	again, err := s.GetVM(ctx, vm.ID)
	if err != nil {
		t.Fatal(err)
	}
	assertSameVM(t, again, got)
	if !again.CreatedAt.Equal(t0) {
		t.Fatalf("UpdateVM changed CreatedAt to %v", again.CreatedAt)
	}
	// A zero CreatedAt keeps the stored one; another one replaces it (a
	// claimed standby VM).
	again.CreatedAt = time.Time{}
	if err := s.UpdateVM(ctx, again); err != nil {
		t.Fatal(err)
	}
	if kept, _ := s.GetVM(ctx, vm.ID); !kept.CreatedAt.Equal(t0) {
		t.Fatalf("UpdateVM with a zero CreatedAt stored %v", kept.CreatedAt)
	}
	again.CreatedAt = t1
	if err := s.UpdateVM(ctx, again); err != nil {
		t.Fatal(err)
	}
	if moved, _ := s.GetVM(ctx, vm.ID); !moved.CreatedAt.Equal(t1) {
		t.Fatalf("UpdateVM with CreatedAt %v stored %v", t1, moved.CreatedAt)
	}

	missing := testVM("ghost", "ffffffffffffffff")
	if err := s.UpdateVM(ctx, missing); !errors.Is(err, model.ErrNotFound) {
		t.Fatalf("UpdateVM(missing) = %v, want ErrNotFound", err)
	}
	if _, err := s.GetVM(ctx, "nope"); !errors.Is(err, model.ErrNotFound) {
		t.Fatalf("GetVM(missing) = %v", err)
	}
	if _, err := s.GetVMByName(ctx, "nope"); !errors.Is(err, model.ErrNotFound) || !strings.Contains(err.Error(), `"nope"`) {
		t.Fatalf("GetVMByName(missing) = %v", err)
	}
}

func assertSameVM(t *testing.T, got, want *model.VM) {
	t.Helper()
	if !got.CreatedAt.Equal(want.CreatedAt) || !got.UpdatedAt.Equal(want.UpdatedAt) {
		t.Errorf("times: got %v/%v want %v/%v", got.CreatedAt, got.UpdatedAt, want.CreatedAt, want.UpdatedAt)
	}
	// Compare everything else through JSON, which normalises time zones.
	g, w := *got, *want
	g.CreatedAt, g.UpdatedAt, w.CreatedAt, w.UpdatedAt = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	gj, _ := json.Marshal(normTimes(g))
	wj, _ := json.Marshal(normTimes(w))
	if string(gj) != string(wj) {
		t.Errorf("vm differs:\n got  %s\n want %s", gj, wj)
	}
}

func normTimes(vm model.VM) model.VM {
	vm.Runtime.StartedAt = vm.Runtime.StartedAt.UTC()
	if vm.Workspace != nil {
		ws := *vm.Workspace
		ws.PreparedAt = ws.PreparedAt.UTC()
		vm.Workspace = &ws
	}
	return vm
}

func TestCreateVMDuplicates(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	if err := s.CreateVM(ctx, testVM("a1", "1111aaaa")); err != nil {
		t.Fatal(err)
	}
	err := s.CreateVM(ctx, testVM("a1", "2222bbbb"))
	if !errors.Is(err, model.ErrAlreadyExists) || !strings.Contains(err.Error(), `"a1"`) {
		t.Fatalf("duplicate name: %v", err)
	}
	err = s.CreateVM(ctx, testVM("a2", "1111aaaa"))
	if !errors.Is(err, model.ErrAlreadyExists) || !strings.Contains(err.Error(), "1111aaaa") {
		t.Fatalf("duplicate id: %v", err)
	}
	if err := s.CreateVM(ctx, testVM("-bad", "3333cccc")); !errors.Is(err, model.ErrInvalidName) {
		t.Fatalf("invalid name: %v", err)
	}
	if err := s.CreateVM(ctx, testVM("ok", "")); err == nil {
		t.Fatal("empty id accepted")
	}
	// Renaming onto a taken name is refused.
	b := testVM("b1", "4444dddd")
	if err := s.CreateVM(ctx, b); err != nil {
		t.Fatal(err)
	}
	b.Name = "a1"
	if err := s.UpdateVM(ctx, b); !errors.Is(err, model.ErrAlreadyExists) {
		t.Fatalf("rename onto taken name: %v", err)
	}
	vms, err := s.ListVMs(ctx)
	if err != nil || len(vms) != 2 {
		t.Fatalf("ListVMs = %d, %v; want 2", len(vms), err)
	}
}

func TestListVMsOrder(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	base := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	for i, n := range []struct {
		name string
		at   time.Duration
	}{{"zeta", 0}, {"alpha", time.Second}, {"beta", time.Second}, {"first", -time.Nanosecond}} {
		vm := testVM(n.name, fmt.Sprintf("%016x", i))
		vm.CreatedAt = base.Add(n.at)
		if err := s.CreateVM(ctx, vm); err != nil {
			t.Fatal(err)
		}
	}
	vms, err := s.ListVMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, vm := range vms {
		names = append(names, vm.Name)
	}
	if got := strings.Join(names, ","); got != "first,zeta,alpha,beta" {
		t.Fatalf("ListVMs order %s", got)
	}
}

func TestResolveVM(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	for _, vm := range []*model.VM{
		testVM("web", "abcd111111111111"),
		testVM("db", "abcd222222222222"),
		testVM("cache", "ef01000000000000"),
		testVM("abcd222222222222", "9999000000000000"), // a name that looks like another VM's id
	} {
		if err := s.CreateVM(ctx, vm); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct{ ref, want string }{
		{"web", "web"},
		{"abcd111111111111", "web"},
		{"abcd1", "web"},
		{"ef01", "cache"},
		{"abcd222222222222", "abcd222222222222"}, // exact name wins over exact id
		{"9999", "abcd222222222222"},
	}
	for _, c := range cases {
		vm, err := s.ResolveVM(ctx, c.ref)
		if err != nil || vm.Name != c.want {
			t.Errorf("ResolveVM(%q) = %v, %v; want %s", c.ref, vm, err, c.want)
		}
	}
	_, err := s.ResolveVM(ctx, "abcd")
	var amb *AmbiguousRefError
	if !errors.As(err, &amb) || !errors.Is(err, ErrAmbiguous) {
		t.Fatalf("ResolveVM(abcd) = %v, want AmbiguousRefError", err)
	}
	if want := []string{"db (abcd222222222222)", "web (abcd111111111111)"}; strings.Join(amb.Candidates, "|") != strings.Join(want, "|") {
		t.Fatalf("candidates %v, want %v", amb.Candidates, want)
	}
	if !strings.Contains(err.Error(), "db (abcd222222222222)") || !strings.Contains(err.Error(), "web (abcd111111111111)") {
		t.Fatalf("ambiguous error does not list candidates: %q", err)
	}
	for _, ref := range []string{"nope", "ef0", "e", "", "abcd%", "____"} {
		_, err := s.ResolveVM(ctx, ref)
		if !errors.Is(err, model.ErrNotFound) {
			t.Errorf("ResolveVM(%q) = %v, want ErrNotFound", ref, err)
		}
		if ref != "" && !strings.Contains(err.Error(), fmt.Sprintf("%q", ref)) {
			t.Errorf("ResolveVM(%q) error %q does not name the ref", ref, err)
		}
	}
}

func TestDeleteVM(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	vm := testVM("gone", "5555eeee")
	if err := s.CreateVM(ctx, vm); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteVM(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetVM(ctx, vm.ID); !errors.Is(err, model.ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
	if err := s.DeleteVM(ctx, vm.ID); !errors.Is(err, model.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	// The name is free again.
	if err := s.CreateVM(ctx, testVM("gone", "6666ffff")); err != nil {
		t.Fatalf("reuse name: %v", err)
	}
}

func TestImagesAndKernels(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	t0 := time.Date(2025, 2, 2, 2, 2, 2, 2, time.UTC)
	img := &model.Image{Name: "debian-bookworm", Source: "debootstrap:bookworm", Path: "/var/cache/x.ext4", SizeBytes: 1 << 30, SHA256: "aa", Kernel: "debian", CreatedAt: t0}
	if err := s.PutImage(ctx, img); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetImage(ctx, img.Name)
	if err != nil || *got != *img {
		t.Fatalf("GetImage = %+v, %v; want %+v", got, err, img)
	}
	img.SHA256 = "bb"
	if err := s.PutImage(ctx, img); err != nil {
		t.Fatal(err)
	}
	if err := s.PutImage(ctx, &model.Image{Name: "alpine", Source: "oci:alpine"}); err != nil {
		t.Fatal(err)
	}
	imgs, err := s.ListImages(ctx)
	if err != nil || len(imgs) != 2 || imgs[0].Name != "alpine" || imgs[1].SHA256 != "bb" || imgs[0].CreatedAt.IsZero() {
		t.Fatalf("ListImages = %+v, %v", imgs, err)
	}
	if err := s.DeleteImage(ctx, "alpine"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteImage(ctx, "alpine"); !errors.Is(err, model.ErrNotFound) {
		t.Fatalf("DeleteImage(missing) = %v", err)
	}
	if _, err := s.GetImage(ctx, "alpine"); !errors.Is(err, model.ErrNotFound) {
		t.Fatalf("GetImage(missing) = %v", err)
	}
	if err := s.PutImage(ctx, &model.Image{}); err == nil {
		t.Fatal("PutImage accepted an empty name")
	}

	k := &model.Kernel{Name: "debian", Version: "6.1.0-31-cloud-amd64", Source: "deb:linux-image-cloud-amd64", Dir: "/k",
		Vmlinux: "/k/vmlinux", BzImage: "/k/vmlinuz", Initrd: "/k/initrd.img", ModulesDir: "/k/modules",
		Files: map[string]string{"vmlinux": "11", "initrd.img": "22"}, ImportedAt: t0}
	if err := s.PutKernel(ctx, k); err != nil {
		t.Fatal(err)
	}
	gk, err := s.GetKernel(ctx, "debian")
	if err != nil {
		t.Fatal(err)
	}
	gj, _ := json.Marshal(gk)
	kj, _ := json.Marshal(k)
	if string(gj) != string(kj) {
		t.Fatalf("GetKernel:\n got  %s\n want %s", gj, kj)
	}
	k.Version = "6.1.0-32-cloud-amd64"
	if err := s.PutKernel(ctx, k); err != nil {
		t.Fatal(err)
	}
	ks, err := s.ListKernels(ctx)
	if err != nil || len(ks) != 1 || ks[0].Version != k.Version {
		t.Fatalf("ListKernels = %+v, %v", ks, err)
	}
	if err := s.DeleteKernel(ctx, "debian"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetKernel(ctx, "debian"); !errors.Is(err, model.ErrNotFound) {
		t.Fatalf("GetKernel(missing) = %v", err)
	}
	if err := s.DeleteKernel(ctx, "debian"); !errors.Is(err, model.ErrNotFound) {
		t.Fatalf("DeleteKernel(missing) = %v", err)
	}
}

func TestOperations(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	t0 := time.Date(2025, 5, 5, 5, 5, 5, 0, time.UTC)
	a := &model.Operation{ID: "op-a", Kind: "vm.create", Target: "web", Stage: "root disk", Progress: 0.5, StartedAt: t0}
	b := &model.Operation{ID: "op-b", Kind: "image.pull", Stage: "layers", Progress: -1, StartedAt: t0.Add(time.Second)}
	for _, op := range []*model.Operation{b, a} {
		if err := s.PutOperation(ctx, op); err != nil {
			t.Fatal(err)
		}
	}
	ops, err := s.ListOperations(ctx, false)
	if err != nil || len(ops) != 2 || ops[0].ID != "op-a" || ops[1].Progress != -1 || ops[0].EndedAt != nil {
		t.Fatalf("ListOperations = %+v, %v", ops, err)
	}
	end := t0.Add(time.Minute)
	a.Done, a.EndedAt, a.Error, a.Stage, a.Progress = true, &end, "disk full", "done", 1
	if err := s.PutOperation(ctx, a); err != nil {
		t.Fatal(err)
	}
	ops, _ = s.ListOperations(ctx, false)
	if len(ops) != 1 || ops[0].ID != "op-b" {
		t.Fatalf("in-flight operations = %+v", ops)
	}
	ops, _ = s.ListOperations(ctx, true)
	if len(ops) != 2 || !ops[0].Done || ops[0].Error != "disk full" || ops[0].EndedAt == nil || !ops[0].EndedAt.Equal(end) {
		t.Fatalf("all operations = %+v", ops)
	}
	n, err := s.PruneOperations(ctx, end.Add(time.Second))
	if err != nil || n != 1 {
		t.Fatalf("PruneOperations = %d, %v; want 1", n, err)
	}
	ops, _ = s.ListOperations(ctx, true)
	if len(ops) != 1 || ops[0].ID != "op-b" {
		t.Fatalf("after prune = %+v", ops)
	}
}

func TestContextCancelled(t *testing.T) {
	s, _ := openTemp(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.ListVMs(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("ListVMs(cancelled) = %v", err)
	}
}
