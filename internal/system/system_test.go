package system

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/buildinfo"
	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/testreq"
)

var testBuild = buildinfo.Info{Version: "v1.2.3", Commit: "abc123", BuildTime: "2026-01-01T00:00:00Z"}

// fakeBins makes a source directory with banger, bangerd and banger-agent.
func fakeBins(t *testing.T, content string) string {
	t.Helper()
	dir := t.TempDir()
	for _, b := range []string{CLIBinary, DaemonBinary, AgentBinary} {
		if err := os.WriteFile(filepath.Join(dir, b), []byte("#!/bin/sh\n# "+b+" "+content+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func testOwner(name string) (Owner, error) {
	switch name {
	case "alice":
		return Owner{User: "alice", UID: 1000, GID: 1000, Home: "/home/alice"}, nil
	case "nobody":
		return Owner{User: "nobody", UID: 65534, GID: 65534, Home: "/nonexistent"}, nil
	case "toor":
		return Owner{User: "toor", UID: 0, GID: 0, Home: "/root"}, nil
	}
	return Owner{}, errors.Join(ErrUnknownOwner, errors.New(name))
}

func newHost(euid int, r hostexec.Runner) *Host {
	return &Host{
		Runner: r, Build: testBuild,
		Getenv:     func(string) string { return "" },
		Euid:       func() int { return euid },
		LookupUser: testOwner,
		Now:        func() time.Time { return time.Date(2026, 12, 5, 1, 2, 3, 0, time.UTC) },
		Poll:       time.Millisecond,
	}
}

// directives parses a unit file into section.Key -> values.
func directives(t *testing.T, content string) map[string][]string {
	t.Helper()
	res := map[string][]string{}
	section := ""
	for _, line := range strings.Split(content, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, "[") {
			section = strings.Trim(line, "[]")
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("not a directive: %q", line)
		}
		res[section+"."+k] = append(res[section+"."+k], v)
	}
	return res
}

func TestRenderUnitsCarryTheDirectives(t *testing.T) {
	rec := &Record{Owner: Owner{User: "alice", UID: 1000, GID: 1000}, Build: testBuild}
	units, err := RenderUnits(rec, RenderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(units) != 2 || units[0].Name != HelperUnit || units[1].Name != DaemonUnit {
		t.Fatalf("units: %+v", units)
	}
	helper, daemon := directives(t, units[0].Content), directives(t, units[1].Content)
	common := map[string]string{
		"Service.KillMode":                 "process",
		"Service.RuntimeDirectoryPreserve": "yes",
		"Service.NoNewPrivileges":          "yes",
		"Service.ProtectSystem":            "strict",
		"Service.ReadWritePaths":           "-/var/lib/banger -/var/cache/banger -/run/banger",
		"Service.PrivateTmp":               "yes",
		"Service.LockPersonality":          "yes",
		"Service.Environment":              "BANGER_MODE=system",
		"Install.WantedBy":                 "multi-user.target",
		"Service.Restart":                  "on-failure",
		"Service.SystemCallArchitectures":  "native",
		"Service.RuntimeDirectoryMode":     "",
		"Service.CapabilityBoundingSet":    "",
		"Service.ExecStart":                "",
		"Service.ProtectHome":              "",
		"Service.Type":                     "simple",
		"Service.TimeoutStopSec":           "30s",
		"Service.RestartSec":               "1s",
		"Service.ProtectHostname":          "yes",
		"Service.ProtectClock":             "yes",
		"Service.RestrictRealtime":         "yes",
		"Service.RuntimeDirectory":         "",
		"Unit.Description":                 "",
		"Unit.After":                       "",
	}
	for _, u := range []map[string][]string{helper, daemon} {
		for k, v := range common {
			if v == "" {
				continue // checked per unit below
			}
			if got := u[k]; len(got) != 1 || got[0] != v {
				t.Errorf("%s = %q, want %q", k, got, v)
			}
		}
	}
	// RestrictSUIDSGID answers openat2 with ENOSYS: the helper (root) has
	// it and falls back to walking paths on descriptors; the daemon
	// unpacks OCI layers with openat2(RESOLVE_IN_ROOT) and has no
	// capabilities, so it goes without.
	if got := helper["Service.RestrictSUIDSGID"]; len(got) != 1 || got[0] != "yes" {
		t.Errorf("helper RestrictSUIDSGID = %q", got)
	}
	if _, ok := daemon["Service.RestrictSUIDSGID"]; ok {
		t.Error("daemon has RestrictSUIDSGID (breaks openat2 in OCI pulls)")
	}
	wantHelper := map[string]string{
		"Service.ExecStart":             DaemonPath + " root-helper --owner-uid 1000",
		"Service.ExecStartPre":          "+/usr/bin/install -d -m 0700 -o 1000 -g 1000 /run/banger",
		"Service.SendSIGKILL":           "no",
		"Service.CapabilityBoundingSet": strings.Join(HelperCapabilities, " "),
		"Service.ProtectHome":           "yes",
		"Service.RuntimeDirectory":      "banger-root",
		"Service.RuntimeDirectoryMode":  "0755",
		"Service.CacheDirectory":        "banger-root",
		"Service.CacheDirectoryMode":    "0711",
		"Service.StateDirectory":        "banger-jail",
		"Service.StateDirectoryMode":    "0711",
		"Unit.Before":                   DaemonUnit,
	}
	for k, v := range wantHelper {
		if got := helper[k]; len(got) != 1 || got[0] != v {
			t.Errorf("helper %s = %q, want %q", k, got, v)
		}
	}
	if _, ok := helper["Service.User"]; ok {
		t.Error("the helper must run as root (no User=)")
	}
	wantDaemon := map[string]string{
		"Service.ExecStart":             DaemonPath,
		"Service.User":                  "alice",
		"Service.Group":                 "1000",
		"Service.CapabilityBoundingSet": "",
		"Service.AmbientCapabilities":   "",
		"Service.ProtectHome":           "read-only",
		"Service.RuntimeDirectory":      "banger",
		"Service.RuntimeDirectoryMode":  "0700",
		"Service.StateDirectory":        "banger",
		"Service.CacheDirectory":        "banger",
		"Unit.Wants":                    HelperUnit,
	}
	for k, v := range wantDaemon {
		if got := daemon[k]; len(got) != 1 || got[0] != v {
			t.Errorf("daemon %s = %q, want %q", k, got, v)
		}
	}
	// Requires= would restart the daemon with the helper and stop it
	// when the helper stops: the daemon only wants the helper.
	if _, ok := daemon["Unit.Requires"]; ok {
		t.Error("daemon must not Require the helper")
	}
	for _, c := range HelperCapabilities {
		if c == "CAP_SYS_PTRACE" || c == "CAP_SYS_MODULE" || c == "CAP_SYS_BOOT" || c == "CAP_NET_RAW" {
			t.Errorf("helper capability %s is not needed", c)
		}
	}
}

func TestRenderUnitsKillModeOption(t *testing.T) {
	rec := &Record{Owner: Owner{User: "alice", UID: 1000, GID: 1000}}
	units, err := RenderUnits(rec, RenderOptions{KillMode: "control-group"})
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range units {
		if got := directives(t, u.Content)["Service.KillMode"]; len(got) != 1 || got[0] != "control-group" {
			t.Errorf("%s KillMode = %q", u.Name, got)
		}
	}
	if _, err := RenderUnits(rec, RenderOptions{KillMode: "bogus"}); err == nil {
		t.Error("bogus KillMode accepted")
	}
	for _, bad := range []Owner{{User: "root", UID: 0}, {User: "", UID: 1000}, {User: "a b", UID: 1000}, {User: "a%n", UID: 1000}} {
		if _, err := RenderUnits(&Record{Owner: bad}, RenderOptions{}); err == nil {
			t.Errorf("owner %+v accepted", bad)
		}
	}
}

func readTree(t *testing.T, root string) map[string]string {
	t.Helper()
	res := map[string]string{}
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		res[rel] = fi.Mode().String() + "\n" + string(data)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestInstallUnderRootWritesEverythingAndStartsNothing(t *testing.T) {
	root := t.TempDir()
	rr := &hostexec.Recorder{}
	h := newHost(1000, rr) // not root: a root dir needs no privileges
	rec, err := h.Install(context.Background(), InstallOptions{Owner: "nobody", Root: root, NoStart: true, SourceDir: fakeBins(t, "one")})
	if err != nil {
		t.Fatal(err)
	}
	if len(rr.Calls()) != 0 {
		t.Errorf("--root ran commands: %v", rr.Lines())
	}
	if rec.Owner.User != "nobody" || rec.Owner.UID != 65534 || rec.Build != testBuild {
		t.Errorf("record: %+v", rec)
	}
	for _, f := range []struct {
		path string
		mode os.FileMode
	}{
		{CLIPath, 0o755}, {DaemonPath, 0o755}, {RecordPath, 0o644},
		{UnitDir + "/" + DaemonUnit, 0o644}, {UnitDir + "/" + HelperUnit, 0o644},
		{StateDir, 0o700 | os.ModeDir}, {CacheDir, 0o755 | os.ModeDir},
	} {
		fi, err := os.Stat(filepath.Join(root, f.path))
		if err != nil {
			t.Errorf("%s: %v", f.path, err)
			continue
		}
		if fi.Mode() != f.mode {
			t.Errorf("%s mode %v, want %v", f.path, fi.Mode(), f.mode)
		}
	}
	got, err := ReadRecord(root)
	if err != nil {
		t.Fatal(err)
	}
	if got.Owner != rec.Owner || got.Build != testBuild || !got.InstalledAt.Equal(rec.InstalledAt) {
		t.Errorf("record round trip: %+v vs %+v", got, rec)
	}
	units, _ := h.Render(got)
	for _, u := range units {
		data, _ := os.ReadFile(filepath.Join(root, UnitDir, u.Name))
		if string(data) != u.Content {
			t.Errorf("%s differs from Render of the installed record", u.Name)
		}
	}

	// Re-install is idempotent and refreshes the binaries.
	before := readTree(t, root)
	if _, err := h.Install(context.Background(), InstallOptions{Owner: "nobody", Root: root, NoStart: true, SourceDir: fakeBins(t, "one")}); err != nil {
		t.Fatal(err)
	}
	if after := readTree(t, root); !mapsEqual(before, after) {
		t.Errorf("re-install changed the tree:\nbefore %v\nafter  %v", keys(before), keys(after))
	}
	if _, err := h.Install(context.Background(), InstallOptions{Owner: "nobody", Root: root, NoStart: true, SourceDir: fakeBins(t, "two")}); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(filepath.Join(root, DaemonPath)); !bytes.Contains(data, []byte("two")) {
		t.Errorf("re-install did not refresh bangerd: %q", data)
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func keys(m map[string]string) []string {
	var k []string
	for x := range m {
		k = append(k, x)
	}
	slices.Sort(k)
	return k
}

// TestInstalledUnitsPassSystemdAnalyzeVerify is the acceptance check of
// `banger system install --root DIR --owner nobody --no-start`.
func TestInstalledUnitsPassSystemdAnalyzeVerify(t *testing.T) {
	testreq.Tools(t, "systemd-analyze")
	root := t.TempDir()
	h := newHost(1000, &hostexec.Recorder{})
	if _, err := h.Install(context.Background(), InstallOptions{Owner: "nobody", Root: root, NoStart: true, SourceDir: fakeBins(t, "x")}); err != nil {
		t.Fatal(err)
	}
	verify := func(t *testing.T) string {
		// verify --root needs the targets the units refer to.
		sysUnits := filepath.Join(root, "usr/lib/systemd/system")
		if err := os.MkdirAll(sysUnits, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, g := range []string{"/usr/lib/systemd/system/*.target", "/usr/lib/systemd/system/*.slice"} {
			m, _ := filepath.Glob(g)
			for _, f := range m {
				if data, err := os.ReadFile(f); err == nil {
					_ = os.WriteFile(filepath.Join(sysUnits, filepath.Base(f)), data, 0o644)
				}
			}
		}
		// ... and the programs they run.
		for _, prog := range []string{"/usr/bin/install"} {
			data, err := os.ReadFile(prog)
			if err != nil {
				t.Fatalf("%s: %v", prog, err)
			}
			_ = os.MkdirAll(filepath.Join(root, filepath.Dir(prog)), 0o755)
			if err := os.WriteFile(filepath.Join(root, prog), data, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		args := []string{"verify", "--man=no", "--root=" + root,
			filepath.Join(root, UnitDir, HelperUnit), filepath.Join(root, UnitDir, DaemonUnit)}
		out, err := exec.Command("systemd-analyze", args...).CombinedOutput()
		var problems []string
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			// The one warning about the owner chosen for this test.
			if l == "" || strings.Contains(l, "Special user nobody configured") {
				continue
			}
			problems = append(problems, l)
		}
		if err != nil {
			problems = append(problems, "exit: "+err.Error())
		}
		return strings.Join(problems, "\n")
	}
	if p := verify(t); p != "" {
		t.Fatalf("systemd-analyze verify:\n%s", p)
	}
	// The check can fail: a unit with a typo in it does not pass.
	path := filepath.Join(root, UnitDir, DaemonUnit)
	data, _ := os.ReadFile(path)
	if err := os.WriteFile(path, bytes.Replace(data, []byte("KillMode=process"), []byte("KillMode=proces"), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	if p := verify(t); p == "" {
		t.Fatal("systemd-analyze verify accepted KillMode=proces")
	}
}

func TestInstallRefusals(t *testing.T) {
	ctx := context.Background()
	src := fakeBins(t, "x")
	// On the host, without root: says to use sudo, changes nothing.
	rr := &hostexec.Recorder{}
	_, err := newHost(1000, rr).Install(ctx, InstallOptions{Owner: "alice", SourceDir: src})
	if !errors.Is(err, ErrNeedsRoot) || !strings.Contains(err.Error(), "sudo banger system install") {
		t.Errorf("non-root install: %v", err)
	}
	if len(rr.Calls()) != 0 {
		t.Errorf("ran %v", rr.Lines())
	}
	for _, c := range []struct {
		owner, want string
		is          error
	}{
		{"ghost", "ghost", ErrUnknownOwner},
		{"", "--owner USER", nil},
		{"root", "--owner USER", nil},
		{"toor", "uid 0", nil},
	} {
		root := t.TempDir()
		_, err := newHost(1000, rr).Install(ctx, InstallOptions{Owner: c.owner, Root: root, SourceDir: src})
		if err == nil || !strings.Contains(err.Error(), c.want) || (c.is != nil && !errors.Is(err, c.is)) {
			t.Errorf("owner %q: %v", c.owner, err)
		}
		if tree := readTree(t, root); len(tree) != 0 {
			t.Errorf("owner %q: wrote %v", c.owner, keys(tree))
		}
	}
	// Missing bangerd next to banger.
	root := t.TempDir()
	bad := t.TempDir()
	_ = os.WriteFile(filepath.Join(bad, CLIBinary), []byte("x"), 0o755)
	if _, err := newHost(1000, rr).Install(ctx, InstallOptions{Owner: "alice", Root: root, SourceDir: bad}); err == nil || !strings.Contains(err.Error(), "bangerd") {
		t.Errorf("missing bangerd: %v", err)
	}
}

func TestLookupOwnerUnknown(t *testing.T) {
	_, err := LookupOwner("no-such-user-banger-test")
	if !errors.Is(err, ErrUnknownOwner) || !strings.Contains(err.Error(), "useradd") {
		t.Errorf("got %v", err)
	}
}

func TestInstallOnHostStartsHelperThenDaemonAndWaitsForThem(t *testing.T) {
	// The systemctl sequence of a host install's start, recorded.
	rr := &hostexec.Recorder{}
	h := newHost(0, rr)
	var order []string
	helperTries := 0
	h.HelperReady = func(context.Context) (buildinfo.Info, error) {
		order = append(order, "helper-ready?")
		helperTries++
		if helperTries < 3 {
			return buildinfo.Info{}, errors.New("not yet")
		}
		return testBuild, nil
	}
	h.DaemonReady = func(context.Context) (buildinfo.Info, error) {
		order = append(order, "daemon-ready?")
		return testBuild, nil
	}
	rr.Respond = func(c hostexec.Cmd) (hostexec.Result, error) {
		order = append(order, c.String())
		return hostexec.Result{}, nil
	}
	if err := h.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := []string{"systemctl restart " + HelperUnit, "helper-ready?", "helper-ready?", "helper-ready?",
		"systemctl restart " + DaemonUnit, "daemon-ready?"}
	if !slices.Equal(order, want) {
		t.Errorf("order:\n got %q\nwant %q", order, want)
	}

	// Readiness that never comes is an error naming the unit and what to read.
	h.ReadyTimeout = 20 * time.Millisecond
	h.HelperReady = func(context.Context) (buildinfo.Info, error) {
		return buildinfo.Info{}, errors.New("connection refused")
	}
	err := h.Restart(context.Background())
	if err == nil || !strings.Contains(err.Error(), "journalctl -u "+HelperUnit) {
		t.Errorf("no readiness: %v", err)
	}
	if err := newHost(1000, rr).Restart(context.Background()); !errors.Is(err, ErrNeedsRoot) {
		t.Errorf("non-root restart: %v", err)
	}
}

func TestUninstall(t *testing.T) {
	ctx := context.Background()
	h := newHost(0, &hostexec.Recorder{})
	h.RunningVMs = func(context.Context) ([]string, error) { return []string{"dev", "web"}, nil }
	err := h.Uninstall(ctx, UninstallOptions{})
	var vr *VMsRunningError
	if !errors.As(err, &vr) || !errors.Is(err, ErrVMsRunning) || !strings.Contains(err.Error(), "dev, web") || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("uninstall with running VMs: %v", err)
	}
	h.RunningVMs = func(context.Context) ([]string, error) { return nil, errors.New("unreachable") }
	if err := h.Uninstall(ctx, UninstallOptions{}); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("uninstall without a daemon: %v", err)
	}
	if err := newHost(1000, &hostexec.Recorder{}).Uninstall(ctx, UninstallOptions{}); !errors.Is(err, ErrNeedsRoot) {
		t.Errorf("non-root uninstall: %v", err)
	}

	// Under a root dir: everything banger installed goes; state stays
	// unless --purge.
	for _, purge := range []bool{false, true} {
		root := t.TempDir()
		hr := newHost(1000, &hostexec.Recorder{})
		if _, err := hr.Install(ctx, InstallOptions{Owner: "alice", Root: root, SourceDir: fakeBins(t, "x")}); err != nil {
			t.Fatal(err)
		}
		_ = os.WriteFile(filepath.Join(root, StateDir, "banger.db"), []byte("db"), 0o600)
		_ = os.WriteFile(filepath.Join(root, ConfigDir, "config.toml"), []byte("# admin's"), 0o644)
		_ = os.MkdirAll(filepath.Join(root, HelperCache, "debootstrap"), 0o755)
		_ = os.WriteFile(filepath.Join(root, HelperCache, "debootstrap", "tree"), nil, 0o644)
		if err := hr.Uninstall(ctx, UninstallOptions{Root: root, Purge: purge}); err != nil {
			t.Fatal(err)
		}
		left := keys(readTree(t, root))
		want := []string{"etc/banger/config.toml", "var/cache/banger-root/debootstrap/tree", "var/lib/banger/banger.db"}
		if purge {
			want = []string{"etc/banger/config.toml"}
		}
		if !slices.Equal(left, want) {
			t.Errorf("purge=%v left %v, want %v", purge, left, want)
		}
		if Installed(root) {
			t.Error("still installed")
		}
	}
}

func TestUninstallForceKillsRunningVMs(t *testing.T) {
	rr := &hostexec.Recorder{}
	h := newHost(0, rr)
	h.RunningVMs = func(context.Context) ([]string, error) { return []string{"dev"}, nil }
	var killed []string
	h.KillVM = func(_ context.Context, n string) error { killed = append(killed, n); return nil }
	// The host's files are not touched here: only the VM check, the
	// kills and the systemctl sequence of a host uninstall.
	h.Out = &bytes.Buffer{}
	_ = h.uninstallUnits(context.Background(), UninstallOptions{Force: true})
	if !slices.Equal(killed, []string{"dev"}) {
		t.Errorf("killed %v", killed)
	}
	want := []string{"systemctl disable --now --quiet " + DaemonUnit, "systemctl disable --now --quiet " + HelperUnit}
	if got := rr.Lines(); !slices.Equal(got, want) {
		t.Errorf("commands %q, want %q", got, want)
	}
}

func TestStatusReportsUnitsVersionsAndDrift(t *testing.T) {
	root := t.TempDir()
	rr := &hostexec.Recorder{}
	h := newHost(1000, rr)
	if _, err := h.Install(context.Background(), InstallOptions{Owner: "alice", Root: root, SourceDir: fakeBins(t, "x")}); err != nil {
		t.Fatal(err)
	}
	h.Root = root
	rr.Respond = func(c hostexec.Cmd) (hostexec.Result, error) {
		if c.Name == "systemctl" {
			return hostexec.Result{Stdout: []byte("LoadState=loaded\nActiveState=active\nSubState=running\nMainPID=42\nKillMode=process\n")}, nil
		}
		return hostexec.Result{Stdout: []byte("bangerd v1.2.3 (commit abc123, built x)\n")}, nil
	}
	h.DaemonReady = func(context.Context) (buildinfo.Info, error) { return testBuild, nil }
	h.HelperReady = func(context.Context) (buildinfo.Info, error) { return buildinfo.Info{}, errors.New("refused") }
	st, err := h.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !st.Installed || st.Record.Owner.User != "alice" || len(st.Units) != 2 {
		t.Fatalf("status %+v", st)
	}
	for _, u := range st.Units {
		if u.ActiveState != "active" || u.MainPID != 42 || u.KillMode != "process" || u.Drift {
			t.Errorf("unit %+v", u)
		}
	}
	if st.Daemon == nil || *st.Daemon != testBuild || st.Helper != nil || st.HelperError == "" {
		t.Errorf("versions: %+v", st)
	}
	if !strings.HasPrefix(st.InstalledBinary, "v1.2.3") {
		t.Errorf("installed binary %q", st.InstalledBinary)
	}
	// An edited unit is drift.
	p := filepath.Join(root, UnitDir, DaemonUnit)
	data, _ := os.ReadFile(p)
	_ = os.WriteFile(p, append(data, "# edited\n"...), 0o644)
	st, _ = h.Status(context.Background())
	if !st.Units[1].Drift || st.Units[0].Drift {
		t.Errorf("drift: %+v", st.Units)
	}
}

func TestHelperCacheMatchesPaths(t *testing.T) {
	if HelperCache != paths.HelperCacheDir || HelperSocket != paths.DefaultHelperSocket {
		t.Errorf("system and paths disagree: %s %s", HelperCache, HelperSocket)
	}
	units, _ := RenderUnits(&Record{Owner: Owner{User: "a", UID: 1000, GID: 1000}}, RenderOptions{})
	if got := directives(t, units[0].Content)["Service.CacheDirectory"]; len(got) != 1 || "/var/cache/"+got[0] != HelperCache {
		t.Errorf("helper CacheDirectory %q, want %s", got, HelperCache)
	}
	// The jailer's chroot base is the helper's StateDirectory, root's.
	if JailDir != paths.SystemJailerChrootBase || paths.System().JailerChrootBase() != JailDir {
		t.Errorf("system and paths disagree on the jail base: %s %s", JailDir, paths.System().JailerChrootBase())
	}
	if got := directives(t, units[0].Content)["Service.StateDirectory"]; len(got) != 1 || "/var/lib/"+got[0] != JailDir {
		t.Errorf("helper StateDirectory %q, want %s", got, JailDir)
	}
}

func TestReadRecordErrors(t *testing.T) {
	root := t.TempDir()
	if _, err := ReadRecord(root); !errors.Is(err, ErrNotInstalled) {
		t.Errorf("missing: %v", err)
	}
	_ = os.MkdirAll(filepath.Join(root, ConfigDir), 0o755)
	for content, want := range map[string]string{
		"not toml [":                          "not valid TOML",
		"[owner]\nuser = \"a\"\nuid = 5\nx=1": "unknown key",
		"[owner]\nuser = \"a\"\nuid = 0\n":    "non-root owner",
	} {
		_ = os.WriteFile(filepath.Join(root, RecordPath), []byte(content), 0o644)
		if _, err := ReadRecord(root); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v", content, err)
		}
	}
}

func TestDoctorChecks(t *testing.T) {
	ctx := context.Background()
	run := func(p DoctorProbe) map[string]string {
		res := map[string]string{}
		for _, c := range DoctorChecks(p) {
			r := c.Run(ctx)
			res[c.Name] = string(r.Status) + " " + r.Message
		}
		return res
	}
	// No install: one PASS.
	if got := run(DoctorProbe{Root: t.TempDir()}); len(got) != 1 || !strings.HasPrefix(got["system install"], "PASS not installed") {
		t.Errorf("no install: %v", got)
	}
	root := t.TempDir()
	h := newHost(1000, &hostexec.Recorder{})
	if _, err := h.Install(ctx, InstallOptions{Owner: "alice", Root: root, SourceDir: fakeBins(t, "x")}); err != nil {
		t.Fatal(err)
	}
	good := DoctorProbe{Root: root, CLI: testBuild,
		Daemon:  func(context.Context) (*api.PingResult, error) { return &api.PingResult{Build: testBuild, PID: 42}, nil },
		Helper:  func(context.Context) (buildinfo.Info, error) { return testBuild, nil },
		ProcUID: func(int) (int, error) { return 1000, nil },
	}
	got := run(good)
	for _, name := range []string{"system units", "unit kill mode", "versions", "daemon user"} {
		if !strings.HasPrefix(got[name], "PASS") {
			t.Errorf("%s: %s", name, got[name])
		}
	}
	// No helper socket under the temp root.
	if !strings.HasPrefix(got["helper socket"], "FAIL") {
		t.Errorf("helper socket: %s", got["helper socket"])
	}

	bad := good
	bad.ProcUID = func(int) (int, error) { return 0, nil }
	bad.Helper = func(context.Context) (buildinfo.Info, error) { return buildinfo.Info{Version: "v0.0.1"}, nil }
	p := filepath.Join(root, UnitDir, HelperUnit)
	data, _ := os.ReadFile(p)
	_ = os.WriteFile(p, bytes.Replace(data, []byte("KillMode=process"), []byte("KillMode=control-group"), 1), 0o644)
	got = run(bad)
	for name, want := range map[string]string{
		"system units":   "WARN bangerd-root.service differs",
		"unit kill mode": "FAIL bangerd-root.service has KillMode=control-group",
		"versions":       "WARN cli v1.2.3, installed v1.2.3, daemon v1.2.3, helper v0.0.1",
		"daemon user":    "FAIL the owner daemon (pid 42) runs as root",
	} {
		if !strings.HasPrefix(got[name], want) {
			t.Errorf("%s: got %q, want prefix %q", name, got[name], want)
		}
	}
}

func TestCheckHelperSocket(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the socket's directory must be root's: runs as root (make test)")
	}
	dir := t.TempDir()
	_ = os.Chmod(dir, 0o755)
	sock := filepath.Join(dir, "root-helper.sock")
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: sock}); err != nil {
		t.Fatal(err)
	}
	_ = os.Chown(sock, 1000, 1000)
	_ = os.Chmod(sock, 0o600)
	if r := checkHelperSocket(sock, 1000); r.Status != "PASS" {
		t.Errorf("good socket: %+v", r)
	}
	if r := checkHelperSocket(sock, 1001); r.Status != "FAIL" || !strings.Contains(r.Message, "not the owner") {
		t.Errorf("wrong owner: %+v", r)
	}
	_ = os.Chmod(sock, 0o666)
	if r := checkHelperSocket(sock, 1000); r.Status != "FAIL" || !strings.Contains(r.Message, "other users") {
		t.Errorf("open mode: %+v", r)
	}
	_ = os.Chmod(sock, 0o600)
	_ = os.Chmod(dir, 0o777)
	if r := checkHelperSocket(sock, 1000); r.Status != "FAIL" {
		t.Errorf("writable dir: %+v", r)
	}
}

func TestCheckTun(t *testing.T) {
	dir := t.TempDir()
	if r := checkTun(filepath.Join(dir, "tun"), Owner{User: "a", UID: 1000}); r.Status != "FAIL" {
		t.Errorf("missing: %+v", r)
	}
	// /dev/null is a world-usable character device.
	if r := checkTun("/dev/null", Owner{User: "a", UID: 1000}); r.Status != "PASS" {
		t.Errorf("/dev/null: %+v", r)
	}
	f := filepath.Join(dir, "plain")
	_ = os.WriteFile(f, nil, 0o666)
	if r := checkTun(f, Owner{User: "a", UID: 1000}); r.Status != "FAIL" {
		t.Errorf("not a device: %+v", r)
	}
}

// The installed CLI re-installs itself: bangerd is found where install
// put it (/usr/local/lib/banger), not only next to banger.
func TestInstallFromAnInstalledLayout(t *testing.T) {
	first := t.TempDir()
	h := newHost(1000, &hostexec.Recorder{})
	if _, err := h.Install(context.Background(), InstallOptions{Owner: "alice", Root: first, SourceDir: fakeBins(t, "v1")}); err != nil {
		t.Fatal(err)
	}
	second := t.TempDir()
	h.Executable = filepath.Join(first, CLIPath)
	if _, err := h.Install(context.Background(), InstallOptions{Owner: "alice", Root: second}); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(filepath.Join(second, DaemonPath)); !bytes.Contains(data, []byte("bangerd v1")) {
		t.Errorf("bangerd not taken from the installed layout: %q", data)
	}
	if data, _ := os.ReadFile(filepath.Join(second, AgentPath)); !bytes.Contains(data, []byte("banger-agent v1")) {
		t.Errorf("banger-agent not taken from the installed layout: %q", data)
	}
}
