package qemu

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/vmm"
)

func TestMigrationURI(t *testing.T) {
	for _, c := range []struct {
		path string
		save bool
		want string
	}{
		{"/s/t 1/state", true, "exec:cat > '/s/t 1/state'"},
		{"/s/state", false, "exec:cat '/s/state'"},
		{"rel/state", false, ""},
		{"/s/it's", true, ""},
		{"/s/a\nb", true, ""},
	} {
		got, err := migrationURI(c.path, c.save)
		if (err != nil) != (c.want == "") || got != c.want {
			t.Errorf("migrationURI(%q, %v) = %q, %v; want %q", c.path, c.save, got, err, c.want)
		}
	}
}

func TestArgsRestore(t *testing.T) {
	spec := testSpec("/run/b/vm1")
	spec.RestoreFrom = "/state/t/state"
	a := Args("qemu-system-x86_64", spec, MachineMicrovm, AccelTCG, testTSCKHz)
	i := slices.Index(a, "-incoming")
	if i < 0 || a[i+1] != "exec:cat '/state/t/state'" {
		t.Fatalf("argv lacks -incoming: %s", strings.Join(a, " "))
	}
	spec.RestoreFrom = "/bad'path"
	d := &Driver{}
	if _, err := d.Start(context.Background(), spec); err == nil || !strings.Contains(err.Error(), "restore") {
		t.Fatalf("Start with a quoted state path: %v", err)
	}
}

func TestVMMVersion(t *testing.T) {
	rec := &hostexec.Recorder{Respond: func(c hostexec.Cmd) (hostexec.Result, error) {
		return hostexec.Result{Stdout: []byte("QEMU emulator version 7.2.11 (Debian 1:7.2+dfsg-7+deb12u7)\nCopyright (c) 2003-2022\n")}, nil
	}}
	d, err := New(Config{Runner: rec, Accel: AccelTCG}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		v, err := d.VMMVersion(context.Background())
		if err != nil || v != "QEMU emulator version 7.2.11 (Debian 1:7.2+dfsg-7+deb12u7); machine microvm; accel tcg" {
			t.Fatalf("version %q %v", v, err)
		}
	}
	if lines := rec.Lines(); len(lines) != 1 || lines[0] != "qemu-system-x86_64 --version" {
		t.Errorf("runs %q, want one `qemu-system-x86_64 --version`", lines)
	}
	bad := &hostexec.Recorder{Respond: func(c hostexec.Cmd) (hostexec.Result, error) {
		return hostexec.Result{ExitCode: 127}, &hostexec.ExitError{Cmd: c.String(), ExitCode: 127}
	}}
	d, _ = New(Config{Runner: bad, Accel: AccelTCG}, nil, nil)
	if _, err := d.VMMVersion(context.Background()); err == nil {
		t.Error("a failing qemu --version gave a version")
	}
}

func TestResizeDrive(t *testing.T) {
	var got []string
	sock := fakeQMP(t, func(cmd string, enc *json.Encoder) bool {
		got = append(got, cmd)
		if cmd == "block_resize" && len(got) > 1 {
			_ = enc.Encode(map[string]any{"error": map[string]any{"class": "GenericError", "desc": "Cannot grow device files"}})
			return true
		}
		_ = enc.Encode(map[string]any{"return": map[string]any{}})
		return true
	})
	d, _ := New(Config{Accel: AccelTCG}, nil, nil)
	h := &vmm.Handle{APISocket: sock}
	ctx := context.Background()
	for _, c := range []struct {
		index int
		size  int64
	}{{-1, 1 << 30}, {1, 0}, {1, 1000}} {
		if err := d.ResizeDrive(ctx, h, c.index, c.size); err == nil {
			t.Errorf("ResizeDrive(%d, %d) accepted", c.index, c.size)
		}
	}
	if err := d.ResizeDrive(ctx, h, 1, 2<<30); err != nil {
		t.Fatal(err)
	}
	if err := d.ResizeDrive(ctx, h, 1, 4<<30); err == nil || !strings.Contains(err.Error(), "Cannot grow") {
		t.Errorf("a refused resize: %v", err)
	}
	if strings.Join(got, ",") != "block_resize,block_resize" {
		t.Errorf("qmp commands %q", got)
	}
}
