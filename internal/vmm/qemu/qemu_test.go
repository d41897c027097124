package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/privops"
	"github.com/bangerdev/banger/internal/testreq"
	"github.com/bangerdev/banger/internal/vmm"
)

func testSpec(dir string) vmm.Spec {
	return vmm.Spec{
		VMID: "3f2a9c", Name: "sandbox", RuntimeDir: dir,
		Kernel: "/k/vmlinuz", Initrd: "/k/initrd.img", Cmdline: "console=ttyS0 root=/dev/vda",
		VCPU: 2, MemoryMiB: 1024,
		Drives:  []vmm.Drive{{ID: "root", Path: "/d/root,1.ext4", Root: true}, {ID: "work", Path: "/d/work.ext4"}, {ID: "seed", Path: "/d/seed.ext4", ReadOnly: true}},
		Net:     []vmm.NetIface{{Tap: "bgtap0", MAC: "02:fc:00:00:00:02"}},
		LogPath: filepath.Join(dir, "vm.log"), UID: -1, GID: -1,
	}
}

func TestArgsMicrovmTCG(t *testing.T) {
	got := strings.Join(Args("qemu-system-x86_64", testSpec("/run/b/vm1"), MachineMicrovm, AccelTCG, testTSCKHz), " ")
	want := "qemu-system-x86_64 -name guest=sandbox" +
		" -machine microvm,x-option-roms=off,pit=on,pic=on,isa-serial=on,rtc=on,pcie=off" +
		" -accel tcg,thread=multi -cpu max -smp 2 -m 1024 -nodefaults -no-user-config -no-reboot -display none" +
		" -chardev file,id=serial0,path=/run/b/vm1/vm.log,append=on -serial chardev:serial0" +
		" -kernel /k/vmlinuz -initrd /k/initrd.img -append console=ttyS0 root=/dev/vda reboot=t tsc_early_khz=2445000 tsc=reliable" +
		" -drive if=none,id=drive0,file=/d/root,,1.ext4,format=raw,discard=unmap -device virtio-blk-device,drive=drive0,serial=root" +
		" -drive if=none,id=drive1,file=/d/work.ext4,format=raw,discard=unmap -device virtio-blk-device,drive=drive1,serial=work" +
		" -drive if=none,id=drive2,file=/d/seed.ext4,format=raw,discard=unmap,readonly=on -device virtio-blk-device,drive=drive2,serial=seed" +
		" -netdev tap,id=net0,ifname=bgtap0,script=no,downscript=no -device virtio-net-device,netdev=net0,mac=02:fc:00:00:00:02" +
		" -qmp unix:/run/b/vm1/qmp.sock,server=on,wait=off -pidfile /run/b/vm1/qemu.pid"
	if got != want {
		t.Errorf("argv mismatch\n got: %s\nwant: %s", got, want)
	}
}

func TestArgsQ35KVM(t *testing.T) {
	spec := testSpec("/run/b/vm1")
	spec.Initrd = ""
	spec.Net = nil
	got := Args("/usr/bin/qemu-system-x86_64", spec, MachineQ35, AccelKVM, 0)
	line := strings.Join(got, " ")
	for _, want := range []string{"-machine q35 -accel kvm -cpu host", "virtio-blk-pci,drive=drive0,serial=root", "-append console=ttyS0 root=/dev/vda -drive"} {
		if !strings.Contains(line, want) {
			t.Errorf("missing %q in %s", want, line)
		}
	}
	for _, bad := range []string{"tsc_early_khz", "tsc=", "-initrd", "-netdev", "microvm"} {
		if strings.Contains(line, bad) {
			t.Errorf("unexpected %q in %s", bad, line)
		}
	}
}

// testTSCKHz is a host TSC rate that is not the old fixed 2000000.
const testTSCKHz = 2445000

func TestKernelCmdlineKeepsExplicitSettings(t *testing.T) {
	spec := vmm.Spec{Cmdline: "console=ttyS0 tsc_early_khz=1000000 tsc=unstable reboot=k"}
	if got := KernelCmdline(spec, MachineMicrovm, AccelTCG, testTSCKHz); got != spec.Cmdline {
		t.Errorf("got %q", got)
	}
}

func TestKernelCmdlineByMachineAndAccel(t *testing.T) {
	for _, c := range []struct{ machine, accel, want string }{
		{MachineMicrovm, AccelTCG, "a reboot=t tsc_early_khz=2445000 tsc=reliable"},
		{MachineMicrovm, AccelKVM, "a reboot=t"},
		{MachineQ35, AccelTCG, "a"},
	} {
		if got := KernelCmdline(vmm.Spec{Cmdline: "a"}, c.machine, c.accel, testTSCKHz); got != c.want {
			t.Errorf("%s/%s: got %q, want %q", c.machine, c.accel, got, c.want)
		}
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	if _, err := New(Config{Machine: "pc"}, nil, nil); err == nil {
		t.Error("machine pc accepted")
	}
	if _, err := New(Config{Accel: "hvf"}, nil, nil); err == nil {
		t.Error("accel hvf accepted")
	}
}

func TestKVMUsable(t *testing.T) {
	if err := KVMUsable("/dev/null"); err == nil {
		t.Error("/dev/null accepted as kvm")
	}
	if err := KVMUsable("/nonexistent/kvm"); err == nil {
		t.Error("missing device accepted")
	}
	d, _ := New(Config{KVMDevice: "/dev/null"}, nil, nil)
	if accel, why := d.Accel(); accel != AccelTCG || !strings.Contains(why, "kvm not usable") {
		t.Errorf("accel = %s (%s), want tcg", accel, why)
	}
	d, _ = New(Config{Accel: AccelKVM, KVMDevice: "/dev/null"}, nil, nil)
	if accel, _ := d.Accel(); accel != AccelKVM {
		t.Errorf("forced kvm = %s", accel)
	}
	t.Logf("/dev/kvm on this host: %v", KVMUsable("/dev/kvm"))
}

func TestAccelFallsBackWhenQEMUCannotUseKVM(t *testing.T) {
	rec := &hostexec.Recorder{Respond: func(c hostexec.Cmd) (hostexec.Result, error) {
		return hostexec.Result{ExitCode: 134}, &hostexec.ExitError{Cmd: c.String(), ExitCode: 134, Stderr: "failed to set MSR 0x10a to 0x69"}
	}}
	d, _ := New(Config{Runner: rec}, nil, nil)
	d.kvmProbe = func(string) error { return nil }
	accel, why := d.Accel()
	if accel != AccelTCG || !strings.Contains(why, "MSR 0x10a") {
		t.Errorf("accel %s (%s)", accel, why)
	}
	want := "qemu-system-x86_64 -machine microvm,x-option-roms=off,pit=on,pic=on,isa-serial=on,rtc=on,pcie=off -accel kvm -cpu host -m 64 -nodefaults -no-user-config -display none -S -qmp stdio"
	if lines := rec.Lines(); len(lines) != 1 || lines[0] != want {
		t.Errorf("probe %v", lines)
	}
	ok := &hostexec.Recorder{}
	d, _ = New(Config{Runner: ok}, nil, nil)
	d.kvmProbe = func(string) error { return nil }
	if accel, _ := d.Accel(); accel != AccelKVM {
		t.Errorf("probe success gave %s", accel)
	}
	t.Logf("real probe here: %v", func() string { d, _ := New(Config{}, nil, nil); a, w := d.Accel(); return a + ": " + w }())
}

// recordingLauncher records launches and starts nothing.
type recordingLauncher struct {
	mu       sync.Mutex
	launches []privops.LaunchSpec
	signals  []syscall.Signal
}

func (r *recordingLauncher) LaunchVMM(_ context.Context, s privops.LaunchSpec) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.launches = append(r.launches, s)
	return 1 << 22, nil // a pid that does not exist
}

func (r *recordingLauncher) SignalVMM(_ context.Context, _ privops.ProcessIdentity, sig syscall.Signal) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.signals = append(r.signals, sig)
	return model.ErrNotRunning
}

func TestStartFailureReportsLogTailAndKills(t *testing.T) {
	dir := t.TempDir()
	spec := testSpec(dir)
	if err := os.WriteFile(spec.LogPath, []byte("qemu-system-x86_64: could not load kernel '/k/vmlinuz'\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	rec := &recordingLauncher{}
	d, _ := New(Config{Accel: AccelTCG, StartTimeout: 2 * time.Second}, rec, nil)
	_, err := d.Start(context.Background(), spec)
	if err == nil || !strings.Contains(err.Error(), "could not load kernel") || !strings.Contains(err.Error(), "exited during startup") {
		t.Fatalf("err = %v", err)
	}
	if len(rec.launches) != 1 || len(rec.signals) != 1 || rec.signals[0] != syscall.SIGKILL {
		t.Fatalf("launches %d signals %v", len(rec.launches), rec.signals)
	}
	l := rec.launches[0]
	if l.Dir != dir || l.LogPath != spec.LogPath || l.UID != -1 || l.PIDFile != "" || l.Argv[0] != "qemu-system-x86_64" {
		t.Errorf("launch spec %+v", l)
	}
}

func TestStartRejectsVsockAndLongSocket(t *testing.T) {
	d, _ := New(Config{Accel: AccelTCG}, &recordingLauncher{}, nil)
	spec := testSpec(t.TempDir())
	spec.VsockCID, spec.VsockPath = 3, "/x/v.sock"
	if _, err := d.Start(context.Background(), spec); !errors.Is(err, vmm.ErrUnsupported) {
		t.Errorf("vsock: %v", err)
	}
	spec = testSpec("/" + strings.Repeat("x", 100))
	if _, err := d.Start(context.Background(), spec); err == nil || !strings.Contains(err.Error(), "unix socket") {
		t.Errorf("long dir: %v", err)
	}
	spec = testSpec(t.TempDir())
	spec.VCPU = 0
	if _, err := d.Start(context.Background(), spec); err == nil {
		t.Error("vcpu 0 accepted")
	}
}

func TestFindRefusesMissingAndForeignPIDs(t *testing.T) {
	dir := t.TempDir()
	spec := testSpec(dir)
	d, _ := New(Config{}, &recordingLauncher{}, nil)
	if _, err := d.Find(context.Background(), spec); !errors.Is(err, model.ErrNotRunning) {
		t.Errorf("no pid file: %v", err)
	}
	// our own pid: alive, but neither comm nor marker match.
	if err := os.WriteFile(filepath.Join(dir, PIDFileName), []byte("1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Find(context.Background(), spec); !errors.Is(err, model.ErrNotRunning) {
		t.Errorf("pid 1: %v", err)
	}
}

// fakeQMP serves a scripted QMP conversation on a unix socket.
func fakeQMP(t *testing.T, handle func(cmd string, enc *json.Encoder) bool) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				enc := json.NewEncoder(c)
				_ = enc.Encode(map[string]any{"QMP": map[string]any{"version": map[string]any{}, "capabilities": []string{}}})
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					var req struct {
						Execute string `json:"execute"`
						ID      any    `json:"id"`
					}
					if json.Unmarshal(sc.Bytes(), &req) != nil {
						return
					}
					if req.Execute == "qmp_capabilities" {
						_ = enc.Encode(map[string]any{"return": map[string]any{}, "id": req.ID})
						continue
					}
					// an event first, then the answer
					_ = enc.Encode(map[string]any{"event": "STOP", "timestamp": map[string]int{"seconds": 1}})
					if !handle(req.Execute, json.NewEncoder(&idWriter{enc: enc, id: req.ID})) {
						return
					}
				}
			}()
		}
	}()
	return sock
}

// idWriter adds the request id to the answer written through it.
type idWriter struct {
	enc *json.Encoder
	id  any
}

func (w *idWriter) Write(p []byte) (int, error) {
	var m map[string]any
	if err := json.Unmarshal(p, &m); err != nil {
		return 0, err
	}
	m["id"] = w.id
	return len(p), w.enc.Encode(m)
}

func TestQMPClient(t *testing.T) {
	sock := fakeQMP(t, func(cmd string, enc *json.Encoder) bool {
		switch cmd {
		case "query-status":
			_ = enc.Encode(map[string]any{"return": map[string]any{"running": true, "status": "running"}})
		case "bogus":
			_ = enc.Encode(map[string]any{"error": map[string]any{"class": "CommandNotFound", "desc": "The command bogus has not been found"}})
		case "hang":
			// no answer
		}
		return true
	})
	ctx := context.Background()
	q, err := DialQMP(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	st, err := q.QueryStatus(ctx)
	if err != nil || !st.Running || st.Status != "running" {
		t.Fatalf("status %+v %v", st, err)
	}
	var qe *QMPError
	if err := q.Execute(ctx, "bogus", nil, nil); !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		t.Fatalf("bogus: %v", err)
	}
	ev, err := q.WaitEvent(ctx, "STOP")
	if err != nil || ev.Timestamp.Seconds != 1 {
		t.Fatalf("event %+v %v", ev, err)
	}
	tctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if err := q.Execute(tctx, "hang", nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hang: %v", err)
	}
	// the connection stays usable after an abandoned command
	if _, err := q.QueryStatus(ctx); err != nil {
		t.Fatalf("after timeout: %v", err)
	}
}

func TestQMPClientConnectionLoss(t *testing.T) {
	sock := fakeQMP(t, func(cmd string, enc *json.Encoder) bool { return false })
	ctx := context.Background()
	q, err := DialQMP(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if err := q.Execute(ctx, "quit", nil, nil); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("quit on closed connection: %v", err)
	}
	if _, err := DialQMP(ctx, filepath.Join(t.TempDir(), "none.sock")); err == nil {
		t.Fatal("dial of missing socket succeeded")
	}
}

// TestStartBadKernelRealQEMU runs the real binary: QEMU exits at once and
// Start returns its own message, leaving nothing behind.
func TestStartBadKernelRealQEMU(t *testing.T) {
	testreq.Tools(t, "qemu-system-x86_64")
	dir, err := os.MkdirTemp("", "bq")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	spec := testSpec(dir)
	spec.Kernel = filepath.Join(dir, "no-such-vmlinuz")
	spec.Initrd = ""
	spec.Drives = nil
	spec.Net = nil
	d, _ := New(Config{Accel: AccelTCG}, privops.NewLocal(nil, nil), nil)
	_, err = d.Start(context.Background(), spec)
	if err == nil || !strings.Contains(err.Error(), "no-such-vmlinuz") {
		t.Fatalf("err = %v", err)
	}
	t.Logf("error: %v", err)
	if _, err := d.Find(context.Background(), spec); !errors.Is(err, model.ErrNotRunning) {
		t.Errorf("find after failed start: %v", err)
	}
}

// TestPVMDevice: a host whose /dev/kvm comes from kvm_pvm is named as such
// (#16 defect 10), not reported as a vague MSR failure.
func TestPVMDevice(t *testing.T) {
	sys := t.TempDir()
	if PVMDevice(sys) {
		t.Fatal("PVM reported without kvm_pvm")
	}
	if err := os.Mkdir(filepath.Join(sys, "kvm_pvm"), 0o755); err != nil {
		t.Fatal(err)
	}
	if !PVMDevice(sys) {
		t.Fatal("kvm_pvm not recognised")
	}
}
