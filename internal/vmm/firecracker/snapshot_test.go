package firecracker_test

import (
	"bufio"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/privops"
	"github.com/bangerdev/banger/internal/vmm"
	"github.com/bangerdev/banger/internal/vmm/fakefc"
	"github.com/bangerdev/banger/internal/vmm/firecracker"
	"github.com/bangerdev/banger/internal/vmm/vmmtest"
)

// traceLines are the requests fakefc saw: "STATUS METHOD PATH BODY".
func traceLines(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("trace: %v", err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// GET / is polled while the API comes up and GET /vm/config is the
		// test's: not part of the sequence.
		if l := sc.Text(); !strings.HasPrefix(l, "200 GET / ") && !strings.HasPrefix(l, "200 GET /vm/config") {
			lines = append(lines, strings.TrimSpace(l))
		}
	}
	return lines
}

func checkTrace(t *testing.T, what, path string, want []string) {
	t.Helper()
	got := traceLines(t, path)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("%s: requests\n%s\nwant\n%s", what, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// snapVM is one VM of the snapshot test: its runtime dir, disks, trace.
type snapVM struct {
	spec  vmm.Spec
	trace string
}

func newSnapVM(t *testing.T, tag, kernel string) snapVM {
	t.Helper()
	run, err := os.MkdirTemp("", "fs"+tag)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(run) })
	disks := t.TempDir()
	root, work := filepath.Join(disks, "root.ext4"), filepath.Join(disks, "work.ext4")
	for _, p := range []string{root, work} {
		if err := os.WriteFile(p, []byte(tag), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return snapVM{
		spec: vmm.Spec{VMID: "fs" + tag, RuntimeDir: run, Kernel: kernel, Cmdline: "console=ttyS0", VCPU: 1, MemoryMiB: 128,
			Drives:   []vmm.Drive{{ID: "root", Path: root, Root: true}, {ID: "work", Path: work}},
			Net:      []vmm.NetIface{{Tap: "tap-" + tag, MAC: "02:fc:00:00:00:02"}},
			VsockCID: 3, VsockPath: filepath.Join(run, "vsock.sock"),
			LogPath: filepath.Join(run, "vm.log"), UID: -1, GID: -1},
		trace: filepath.Join(disks, "trace"),
	}
}

func driverFor(t *testing.T, bins, version string, vm snapVM) *firecracker.Driver {
	t.Helper()
	return newDriver(t, filepath.Join(bins, "firecracker"), append(fakeEnv(t, version, fakefc.BootNone), fakefc.EnvTrace+"="+vm.trace), nil)
}

func kill(d *firecracker.Driver, h *vmm.Handle) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = d.Kill(ctx, h, syscall.SIGKILL)
	_ = d.Wait(ctx, h)
}

// TestSnapshotRequests saves a VM and restores it into another one (own
// runtime dir, disks, tap and vsock socket) through fakefc for each API
// spec, checking the exact requests and bodies, the capability and
// version per release, and the unsupported restores.
func TestSnapshotRequests(t *testing.T) {
	bins := vmmtest.FakeFC(t)
	kernel, _ := dummyKernel(t)
	ctx := context.Background()
	for _, v := range fakefc.SpecVersions {
		t.Run(v, func(t *testing.T) {
			ver, _ := firecracker.ParseVersion(v)
			newer := ver.AtLeast(firecracker.V1_14_1)
			a := newSnapVM(t, "a", kernel)
			d := driverFor(t, bins, v, a)
			if got := d.Capabilities().Snapshots; got != newer {
				t.Errorf("Capabilities().Snapshots = %v on %s", got, v)
			}
			if got, err := d.VMMVersion(ctx); err != nil || got != "firecracker "+v {
				t.Errorf("VMMVersion = %q, %v", got, err)
			}
			h, err := d.Start(ctx, a.spec)
			if err != nil {
				t.Fatal(err)
			}
			defer kill(d, h)
			for _, id := range []string{"root", "work"} {
				link := filepath.Join(a.spec.RuntimeDir, "drive-"+id)
				if target, err := os.Readlink(link); err != nil || target != a.spec.Drives[map[string]int{"root": 0, "work": 1}[id]].Path {
					t.Errorf("%s -> %q, %v", link, target, err)
				}
			}
			state := filepath.Join(t.TempDir(), "state")
			if err := d.Save(ctx, h, state); err != nil {
				t.Fatalf("save: %v", err)
			}
			for _, p := range []string{state, state + ".mem"} {
				if st, err := os.Stat(p); err != nil || st.Size() == 0 {
					t.Errorf("%s: %v", p, err)
				}
			}
			if err := d.Save(ctx, h, state); err == nil || !strings.Contains(err.Error(), "already exists") {
				t.Errorf("save over an existing state: %v", err)
			}
			if info, err := d.Describe(ctx, h); err != nil || info.State != "Paused" {
				t.Errorf("after save: %+v %v", info, err)
			}
			kill(d, h)
			checkTrace(t, "boot and save", a.trace, []string{
				`200 GET /version`,
				`204 PUT /machine-config {"vcpu_count":1,"mem_size_mib":128}`,
				`204 PUT /boot-source {"kernel_image_path":"` + kernel + `","boot_args":"console=ttyS0"}`,
				`204 PUT /drives/root {"drive_id":"root","path_on_host":"drive-root","is_root_device":true,"is_read_only":false}`,
				`204 PUT /drives/work {"drive_id":"work","path_on_host":"drive-work","is_root_device":false,"is_read_only":false}`,
				`204 PUT /network-interfaces/eth0 {"iface_id":"eth0","host_dev_name":"tap-a","guest_mac":"02:fc:00:00:00:02"}`,
				`204 PUT /vsock {"guest_cid":3,"uds_path":"vsock.sock"}`,
				`204 PUT /actions {"action_type":"InstanceStart"}`,
				`204 PATCH /vm {"state":"Paused"}`,
				`204 PUT /snapshot/create {"snapshot_type":"Full","snapshot_path":"` + state + `","mem_file_path":"` + state + `.mem"}`,
			})

			b := newSnapVM(t, "b", kernel)
			b.spec.RestoreFrom = state
			db := driverFor(t, bins, v, b)
			hb, err := db.Start(ctx, b.spec)
			if !newer {
				if err == nil {
					kill(db, hb)
					t.Fatal("1.5.0 restored a vm onto another tap")
				}
				if !errors.Is(err, vmm.ErrUnsupported) || !errors.Is(err, firecracker.ErrVersionTooOld) || !strings.Contains(err.Error(), "tap-b") {
					t.Errorf("restore with a nic on %s: %v", v, err)
				}
				if _, serr := os.Stat(b.trace); !errors.Is(serr, os.ErrNotExist) {
					t.Errorf("a refused restore launched firecracker: %v", serr)
				}
				t.Logf("refused: %v", err)
				// Without a NIC there is nothing to re-point: 1.5.0 restores.
				b.spec.Net = nil
				if hb, err = db.Start(ctx, b.spec); err != nil {
					t.Fatalf("restore without a nic on %s: %v", v, err)
				}
			} else if err != nil {
				t.Fatalf("restore: %v", err)
			}
			defer kill(db, hb)
			if info, err := db.Describe(ctx, hb); err != nil || info.State != "Running" {
				t.Errorf("restored: %+v %v", info, err)
			}
			var cfg struct {
				Drives map[string]map[string]any `json:"drives"`
				Nets   map[string]map[string]any `json:"network-interfaces"`
				Vsock  map[string]any            `json:"vsock"`
			}
			if err := firecracker.NewClient(hb.APISocket).Do(ctx, "GET", "/vm/config", nil, &cfg); err != nil {
				t.Fatal(err)
			}
			if p := cfg.Drives["root"]["path_on_host"]; p != "drive-root" {
				t.Errorf("restored root drive %v", p)
			}
			if target, _ := os.Readlink(filepath.Join(b.spec.RuntimeDir, "drive-root")); target != b.spec.Drives[0].Path {
				t.Errorf("restored vm's root link -> %q, want its own disk %s", target, b.spec.Drives[0].Path)
			}
			if newer && cfg.Nets["eth0"]["host_dev_name"] != "tap-b" {
				t.Errorf("restored nic %v", cfg.Nets["eth0"])
			}
			if cfg.Vsock["uds_path"] != "vsock.sock" {
				t.Errorf("restored vsock %v", cfg.Vsock)
			}
			load := `{"snapshot_path":"` + state + `","mem_backend":{"backend_type":"File","backend_path":"` + state + `.mem"},"resume_vm":true`
			if newer {
				load += `,"network_overrides":[{"iface_id":"eth0","host_dev_name":"tap-b"}]`
			}
			checkTrace(t, "restore", b.trace, []string{`200 GET /version`, `204 PUT /snapshot/load ` + load + `}`})
			kill(db, hb)

			// A vsock socket outside the runtime dir needs vsock_override
			// (1.16); the 1.16 load sends it.
			c := newSnapVM(t, "c", kernel)
			c.spec.RestoreFrom = state
			c.spec.VsockPath = filepath.Join(filepath.Dir(c.trace), "v.sock")
			if !newer {
				c.spec.Net = nil
			}
			dc := driverFor(t, bins, v, c)
			hc, err := dc.Start(ctx, c.spec)
			if !ver.AtLeast(firecracker.V1_16_1) {
				if err == nil {
					kill(dc, hc)
					t.Fatal("restore with a vsock outside the runtime dir succeeded")
				}
				if !errors.Is(err, vmm.ErrUnsupported) || !strings.Contains(err.Error(), "vsock_override") {
					t.Errorf("vsock outside the runtime dir: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("restore with a vsock override: %v", err)
			}
			defer kill(dc, hc)
			checkTrace(t, "restore with vsock override", c.trace, []string{`200 GET /version`,
				`204 PUT /snapshot/load {"snapshot_path":"` + state + `","mem_backend":{"backend_type":"File","backend_path":"` + state +
					`.mem"},"resume_vm":true,"network_overrides":[{"iface_id":"eth0","host_dev_name":"tap-c"}],"vsock_override":{"uds_path":"` + c.spec.VsockPath + `"}}`})
		})
	}
}

// TestRestoreRefusedBeforeLaunch: a restore whose memory file is missing,
// or under the jailer, fails before anything is launched; Save under the
// jailer is unsupported.
func TestRestoreRefusedBeforeLaunch(t *testing.T) {
	rec := &hostexec.Recorder{Respond: func(c hostexec.Cmd) (hostexec.Result, error) {
		return hostexec.Result{Stdout: []byte("Firecracker v1.16.1\n")}, nil
	}}
	kernel, _ := dummyKernel(t)
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	os.WriteFile(state, []byte("x"), 0o600)
	spec := vmm.Spec{VMID: "r1", RuntimeDir: t.TempDir(), Kernel: kernel, VCPU: 1, MemoryMiB: 128,
		LogPath: filepath.Join(dir, "vm.log"), UID: -1, GID: -1, RestoreFrom: state}
	d, err := firecracker.New(firecracker.Config{Binary: "/nonexistent/firecracker"}, refuseLaunch{t}, rec, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Start(context.Background(), spec); err == nil || !strings.Contains(err.Error(), "state.mem") {
		t.Errorf("restore without a memory file: %v", err)
	}
	jd, err := firecracker.New(firecracker.Config{Binary: "/usr/bin/firecracker", Jailer: &firecracker.JailerConfig{ChrootBase: dir}},
		privops.NewLocal(nil, nil), rec, nil)
	if err != nil {
		t.Fatal(err)
	}
	if jd.Capabilities().Snapshots {
		t.Error("jailer mode advertises snapshots")
	}
	if _, err := jd.Start(context.Background(), spec); !errors.Is(err, vmm.ErrUnsupported) {
		t.Errorf("restore under the jailer: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "firecracker")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a jail was made for a refused restore: %v", err)
	}
	if err := jd.Save(context.Background(), &vmm.Handle{Chroot: "/srv/jail/x/root"}, filepath.Join(dir, "s2")); !errors.Is(err, vmm.ErrUnsupported) {
		t.Errorf("save under the jailer: %v", err)
	}
	if err := d.Save(context.Background(), &vmm.Handle{}, "relative/state"); err == nil {
		t.Error("save to a relative path accepted")
	}
}

type refuseLaunch struct{ t *testing.T }

func (r refuseLaunch) LaunchVMM(context.Context, privops.LaunchSpec) (int, error) {
	r.t.Error("launched a vmm")
	return 0, errors.New("refused")
}

func (r refuseLaunch) SignalVMM(context.Context, privops.ProcessIdentity, syscall.Signal) error {
	return nil
}
