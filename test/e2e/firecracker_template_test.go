package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/testreq"
	"github.com/bangerdev/banger/internal/vm"
	"github.com/bangerdev/banger/internal/vmm/fakefc"
	"github.com/bangerdev/banger/internal/vmm/vmmtest"
)

// fakeFCSpecVersion is the Firecracker release the fake serves in these
// tests (fakefc's default).
const fakeFCSpecVersion = "1.16.1"

// traceLine is one request fakefc saw (FAKEFC_TRACE).
type traceLine struct {
	status       string
	method, path string
	body         string
}

func readTrace(t *testing.T, path string) []traceLine {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("fakefc trace: %v", err)
	}
	var out []traceLine
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.SplitN(l, " ", 4)
		if len(f) < 3 {
			t.Fatalf("fakefc trace line %q", l)
		}
		tl := traceLine{status: f[0], method: f[1], path: f[2]}
		if len(f) == 4 {
			tl.body = f[3]
		}
		out = append(out, tl)
	}
	return out
}

// TestE2EFirecrackerTemplate makes a template on the firecracker driver
// (through fakefc in its qemu boot mode, whose hybrid vsock reaches the
// guest agent) and restores two VMs from it: each has its own hostname,
// address, MAC, machine-id and host key (ssh strict against banger's pinned
// key), a file written in one is absent in the other, stop/start keeps
// /root, the snapshot create and load requests fakefc saw are valid for
// the release's API spec (re-checked here from FAKEFC_TRACE), and a
// corrupted snapshot falls back to a cold boot with a warning.
func TestE2EFirecrackerTemplate(t *testing.T) {
	testreq.E2E(t)
	specDir := fakefc.SpecDirForTest(t)
	bin := vmmtest.FakeFC(t) + "/firecracker"
	trace := filepath.Join(t.TempDir(), "fakefc.trace")
	e := newEnv(t, envOptions{TapPool: 2, Driver: "firecracker", FirecrackerBinary: bin, Templates: true, DaemonEnv: []string{
		fakefc.EnvBootMode + "=qemu", fakefc.EnvQEMUAccel + "=tcg", fakefc.EnvSpecDir + "=" + specDir,
		fakefc.EnvSpecVersion + "=" + fakeFCSpecVersion, fakefc.EnvTrace + "=" + trace,
	}})

	t0 := time.Now()
	out := e.must("image", "warm")
	t.Logf("image warm (firecracker): %s: %s", time.Since(t0).Round(time.Millisecond), strings.TrimSpace(out))
	ts := e.templates()
	if len(ts) != 1 || ts[0].Key.Driver != "firecracker" || ts[0].Key.VMMVersion != "firecracker "+fakeFCSpecVersion ||
		ts[0].Files.Memory == "" || ts[0].SizeBytes <= 0 {
		t.Fatalf("templates after warm: %+v", ts)
	}
	tmpl := ts[0]
	t.Logf("template %s: %d MiB on disk, made in %s", tmpl.ID, tmpl.SizeBytes>>20, tmpl.MakeTime.Round(time.Millisecond))

	var ids [2]guestIdentity
	var vms [2]*model.VM
	for i, name := range []string{"f1", "f2"} {
		t0 := time.Now()
		e.must("vm", "create", "--name", name)
		took := time.Since(t0)
		v := e.show(name)
		if v.State != model.StateRunning || v.Driver != "firecracker" || v.Runtime.Template != tmpl.ID {
			t.Fatalf("%s after create: %+v", name, v)
		}
		if comm, _ := os.ReadFile("/proc/" + itoa(v.Runtime.PID) + "/comm"); strings.TrimSpace(string(comm)) != "firecracker" {
			t.Fatalf("VMM pid %d is %q, not firecracker", v.Runtime.PID, comm)
		}
		ids[i] = e.identity(v.IP)
		vms[i] = v
		t.Logf("%s restored on firecracker -> ssh ready in %s", name, took.Round(time.Millisecond))
	}
	logRestoreSteps(t, e, "f1", "f2")
	e.checkRestoredIdentities(t, vms, ids)

	e.mustSSH(vms[0].IP, "echo only-f1 > /root/only-f1 && sync")
	if got := e.mustSSH(vms[1].IP, "test -e /root/only-f1 && echo present || echo absent"); got != "absent" {
		t.Fatalf("a file written in f1 is visible in f2: %q", got)
	}
	e.must("vm", "stop", "f1")
	e.must("vm", "start", "f1")
	if got := e.mustSSH(vms[0].IP, "cat /root/only-f1; hostname; cat /etc/machine-id"); got != "only-f1\nf1\n"+vm.MachineID(vms[0].ID) {
		t.Fatalf("f1 after stop/start: %q", got)
	}

	// What the fake saw: a create while paused and two loads, all valid
	// for the spec, each load with the memory file, resume and this VM's
	// tap.
	spec, err := fakefc.LoadAPISpec(fakefc.SpecFile(specDir, fakeFCSpecVersion))
	if err != nil {
		t.Fatal(err)
	}
	var creates, loads int
	paused := false
	taps := map[string]bool{}
	for _, tl := range readTrace(t, trace) {
		if tl.path != "/snapshot/create" && tl.path != "/snapshot/load" && !(tl.method == "PATCH" && tl.path == "/vm") {
			continue
		}
		if err := spec.Validate(tl.method, tl.path, []byte(tl.body)); err != nil {
			t.Errorf("%s %s %s: not valid for firecracker %s: %v", tl.method, tl.path, tl.body, fakeFCSpecVersion, err)
		}
		if tl.status != "204" {
			t.Errorf("%s %s answered %s", tl.method, tl.path, tl.status)
		}
		var body map[string]any
		if err := json.Unmarshal([]byte(tl.body), &body); err != nil {
			t.Errorf("%s %s body %q: %v", tl.method, tl.path, tl.body, err)
			continue
		}
		switch tl.path {
		case "/vm":
			paused = body["state"] == "Paused"
		case "/snapshot/create":
			creates++
			if !paused || body["snapshot_type"] != "Full" {
				t.Errorf("snapshot create (paused %v): %s", paused, tl.body)
			}
		case "/snapshot/load":
			loads++
			mb, _ := body["mem_backend"].(map[string]any)
			ovs, _ := body["network_overrides"].([]any)
			if mb["backend_type"] != "File" || body["resume_vm"] != true || len(ovs) != 1 {
				t.Errorf("snapshot load: %s", tl.body)
				continue
			}
			ov, _ := ovs[0].(map[string]any)
			tap, _ := ov["host_dev_name"].(string)
			taps[tap] = true
		}
	}
	if creates != 1 || loads != 2 || len(taps) != 2 {
		t.Errorf("fakefc saw %d snapshot creates and %d loads on taps %v; want 1 and 2 on two taps", creates, loads, taps)
	}

	// A corrupted snapshot: Firecracker (the fake) refuses the load, the
	// create warns, discards the template and cold-boots.
	state := filepath.Join(e.layout.TemplatesDir(), tmpl.ID, tmpl.Files.State)
	if err := os.WriteFile(state, []byte("not a microVM state"), 0o600); err != nil {
		t.Fatal(err)
	}
	res := e.bangerT(t, "", nil, "vm", "create", "--name", "f3")
	if res.code != 0 || !strings.Contains(res.stderr, "failed to restore") || !strings.Contains(res.stderr, "booting from scratch") {
		t.Fatalf("create with a corrupted template: %s", res)
	}
	if f3 := e.show("f3"); f3.State != model.StateRunning || f3.Runtime.Template != "" || e.mustSSH(f3.IP, "hostname") != "f3" {
		t.Fatalf("f3 after the fallback: %+v", f3)
	}
	if _, err := os.Stat(filepath.Dir(state)); !os.IsNotExist(err) {
		t.Errorf("the corrupted template was not discarded: %v", err)
	}
	tr := readTrace(t, trace)
	var last traceLine
	for _, tl := range tr {
		if tl.path == "/snapshot/load" {
			last = tl
		}
	}
	if last.status != "400" {
		t.Errorf("the load of the corrupted snapshot answered %q, want 400", last.status)
	}

	for _, n := range []string{"f1", "f2", "f3"} {
		e.must("vm", "delete", n)
	}
	if len(e.templates()) != 0 {
		t.Error("templates left after the corrupted one was discarded")
	}
	e.assertNoLeaks("after delete")
}

// logRestoreSteps logs where the restores of the named VMs spent their
// time, from the daemon's debug log (JSON lines): the create steps and the
// identity step's agent timings.
func logRestoreSteps(t *testing.T, e *env, names ...string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(e.dir, "bangerd.log"))
	if err != nil {
		t.Logf("daemon log: %v", err)
		return
	}
	for _, l := range strings.Split(string(data), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(l), &rec) != nil || !slices.Contains(names, fmt.Sprint(rec["vm"])) {
			continue
		}
		switch rec["msg"] {
		case "step done":
			if rec["op"] == "create" {
				t.Logf("%s: step %v took %v", rec["vm"], rec["step"], time.Duration(toInt(rec["took"])).Round(time.Millisecond))
			}
		case "identity applied":
			t.Logf("%s: agent answered after %v, identity applied in %v, phases_ms %v", rec["vm"],
				time.Duration(toInt(rec["agent_answered_after"])).Round(time.Millisecond),
				time.Duration(toInt(rec["apply_took"])).Round(time.Millisecond), rec["phases_ms"])
		}
	}
}

func toInt(v any) int64 {
	f, _ := v.(float64)
	return int64(f)
}
