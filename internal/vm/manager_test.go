package vm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bangerdev/banger/internal/ext4"
	"github.com/bangerdev/banger/internal/image"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/vmm"
)

var createSteps = []string{StepArtifacts, StepLease, StepRootDisk, StepWorkDisk, StepGuestConfig, StepTap, StepNAT, StepVMM, StepDNS, StepSSH}

func prefixed(op string, steps []string) []string {
	var out []string
	for _, s := range steps {
		out = append(out, op+":"+s)
	}
	return out
}

func TestCreateRunsStepsInOrderAndConfiguresTheGuest(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	vm := r.newVM("dev", true)
	got, err := r.m.Start(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	if steps := r.stepLog(); !reflect.DeepEqual(steps, prefixed(OpCreate, createSteps)) {
		t.Fatalf("steps:\n got %v\nwant %v", steps, prefixed(OpCreate, createSteps))
	}
	if got.State != model.StateRunning || got.IP != "172.30.0.2" || got.MAC != "02:ba:ac:1e:00:02" || !got.Runtime.Provisioned ||
		got.Driver != "fake" || got.Runtime.Step != "" || got.Runtime.PID < fakePIDBase || !got.Runtime.NATActive {
		t.Fatalf("record: %+v", got)
	}
	if stored := r.get(vm.ID); !reflect.DeepEqual(stored.Runtime, got.Runtime) || stored.State != model.StateRunning {
		t.Fatalf("stored record differs: %+v", stored)
	}
	if taps, nat := r.net.counts(); taps != 1 || nat != 1 {
		t.Fatalf("taps %d nat %d", taps, nat)
	}
	if names := r.dns.names(); !reflect.DeepEqual(names, []string{"dev"}) {
		t.Fatalf("dns %v", names)
	}
	spec := r.drv.specs[0]
	if spec.Kernel != "/k/vmlinuz" || spec.Initrd != "/k/initrd.img" || len(spec.Drives) != 2 || spec.Drives[0].Path != got.Runtime.RootDisk ||
		spec.Drives[1].Path != got.Runtime.WorkDisk || spec.Net[0].Tap != got.Runtime.Tap || spec.Net[0].MAC != got.MAC ||
		!strings.HasPrefix(spec.Cmdline, BaseKernelArgs) || spec.VCPU != 1 || spec.MemoryMiB != 256 {
		t.Fatalf("spec: %+v", spec)
	}

	// The guest config is in the root disk; the host key is pinned.
	read := func(img, p string) string {
		t.Helper()
		data, err := ext4.ReadFile(ctx, r.runner, img, p)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		return string(data)
	}
	root := got.Runtime.RootDisk
	if read(root, "/etc/hostname") != "dev\n" || !strings.Contains(read(root, "/etc/hosts"), "dev.vm dev") {
		t.Error("hostname/hosts")
	}
	if env := read(root, image.GuestNetworkEnv); env != "ADDRESS=172.30.0.2/24\nGATEWAY=172.30.0.1\nDNS=172.30.0.1\nMAC=02:ba:ac:1e:00:02\n" {
		t.Errorf("network.env: %q", env)
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(read(root, image.GuestHostKey+".pub")))
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"172.30.0.2", "dev.vm"} {
		if k := r.guests.pinned[h]; k == nil || string(k.Marshal()) != string(pub.Marshal()) {
			t.Errorf("host key for %s not pinned", h)
		}
	}
	if fi, err := ext4.Stat(ctx, r.runner, root, image.GuestHostKey); err != nil || fi.Mode.Perm() != 0o600 || fi.UID != 0 {
		t.Errorf("host key: %+v %v", fi, err)
	}
	// The boot path (image.BootBatch, whose exact content the image
	// package checks) is written per VM: /root mounted without udev,
	// fstab's root.mount masked, ssh ordered after the work disk.
	if !strings.Contains(read(root, image.GuestWorkDiskUnit), "ExecStart="+image.GuestWorkDiskScript+"\n") ||
		!strings.Contains(read(root, image.GuestWorkDiskScript), "mount -t ext4 -o defaults /dev/vdb /root") {
		t.Error("work disk unit/script")
	}
	if fi, err := ext4.Stat(ctx, r.runner, root, "/etc/systemd/system/local-fs.target.wants/banger-workdisk.service"); err != nil || fi.Target != image.GuestWorkDiskUnit {
		t.Errorf("work disk unit not enabled: %+v %v", fi, err)
	}
	if !strings.Contains(read(root, "/etc/systemd/system/ssh.service.d/banger.conf"), "After=banger-network.service banger-hostkeys.service banger-workdisk.service") {
		t.Error("ssh drop-in does not wait for the work disk")
	}
	if _, err := ext4.Stat(ctx, r.runner, root, "/etc/systemd/system/dev-vdb.device.d/50-device-timeout.conf"); err == nil {
		t.Error("the udev device timeout drop-in is still written")
	}
	for _, u := range image.BootMasks {
		if fi, err := ext4.Stat(ctx, r.runner, root, "/etc/systemd/system/"+u); err != nil || fi.Target != "/dev/null" {
			t.Errorf("%s not masked: %+v %v", u, fi, err)
		}
	}
	// The work disk: seeded, authorized key, git identity, root-owned.
	work := got.Runtime.WorkDisk
	if read(work, "/.bashrc") != "# seed\n" || read(work, "/.ssh/authorized_keys") != r.guests.AuthorizedKey()+"\n" ||
		read(work, "/.gitconfig") != "[user]\n\tname = \"Ada Lovelace\"\n\temail = \"ada@example.org\"\n" {
		t.Error("work disk content")
	}
	for _, p := range []string{"/", "/.ssh", "/.ssh/authorized_keys"} {
		if fi, err := ext4.Stat(ctx, r.runner, work, p); err != nil || fi.UID != 0 || fi.GID != 0 {
			t.Errorf("work disk %s: %+v %v", p, fi, err)
		}
	}
	if fi, _ := os.Stat(work); fi.Size() != 64<<20 {
		t.Errorf("work disk size %d", fi.Size())
	}
	// Starting a running VM is a no-op.
	if again, err := r.m.Start(ctx, got); err != nil || again.Runtime.PID != got.Runtime.PID {
		t.Errorf("second start: %v", err)
	}
}

func TestCreateUndoesEveryStepOnFailure(t *testing.T) {
	for _, step := range createSteps {
		t.Run(step, func(t *testing.T) {
			r := newRig(t)
			r.failAt[OpCreate+":"+step] = errInjected
			vm := r.newVM("u1", true)
			_, err := r.m.Start(context.Background(), vm)
			var se *StepError
			if !errors.As(err, &se) || se.Step != step || !errors.Is(err, errInjected) || se.Undo != nil {
				t.Fatalf("err = %v", err)
			}
			r.assertClean(vm.ID)
			got := r.get(vm.ID)
			if got.State != model.StateError || !strings.Contains(got.Error, step) || got.IP != "" || got.Runtime.Provisioned {
				t.Fatalf("record after failure: %+v", got)
			}
		})
	}
}

// assertClean checks that nothing of the VM is left: process, tap, NAT,
// DNS, lease, files, recorded resources.
func (r *rig) assertClean(id string) {
	r.t.Helper()
	if a := r.drv.alive(); len(a) != 0 {
		r.t.Errorf("VMMs alive: %v", a)
	}
	if taps, nat := r.net.counts(); taps != 0 || nat != 0 {
		r.t.Errorf("taps %d nat %d", taps, nat)
	}
	if n := r.dns.names(); len(n) != 0 {
		r.t.Errorf("dns %v", n)
	}
	if n := r.store.leaseCount(); n != 0 {
		r.t.Errorf("%d leases", n)
	}
	rt := r.get(id).Runtime
	for _, f := range r.files(id) {
		// the console log is kept for `banger vm logs`
		if !strings.HasSuffix(f, "/"+consoleFile) || rt.LogPath == "" {
			r.t.Errorf("file left: %v", f)
		}
	}
	if rt.PID != 0 || rt.Tap != "" || rt.NATActive || rt.RuntimeDir != "" || rt.DiskHandle != nil || rt.WorkDisk != "" {
		r.t.Errorf("runtime still records resources: %+v", rt)
	}
}

func TestCreateUndoWhenResourcesFail(t *testing.T) {
	cases := map[string]func(r *rig){
		"tap":  func(r *rig) { r.net.acquireErr = errInjected },
		"nat":  func(r *rig) { r.net.natErr = errInjected },
		"vmm":  func(r *rig) { r.drv.startErr = errInjected },
		"ssh":  func(r *rig) { r.guests.waitErr = errInjected },
		"disk": func(r *rig) { r.m.o.Artifacts.(*fakeArtifacts).img.Path = "/nonexistent/image.ext4" },
	}
	for name, breakIt := range cases {
		t.Run(name, func(t *testing.T) {
			r := newRig(t)
			breakIt(r)
			defer func() { r.m.o.Artifacts.(*fakeArtifacts).img.Path = imgFile }()
			vm := r.newVM("u2", true)
			if _, err := r.m.Start(context.Background(), vm); err == nil {
				t.Fatal("start succeeded")
			}
			r.assertClean(vm.ID)
		})
	}
}

func TestCancelledCreateIsRolledBack(t *testing.T) {
	r := newRig(t)
	ctx, cancel := context.WithCancel(context.Background())
	r.drv.onStart = func(vmm.Spec) { cancel() } // the client goes away while the VMM starts
	vm := r.newVM("c1", false)
	_, err := r.m.Start(ctx, vm)
	if err == nil || !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	r.assertClean(vm.ID)
}

func TestStopThenStartKeepsDisksAndAddress(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	var poweroffs int
	r.guests.onRun = func(addr, cmd string) (int, error) {
		if strings.Contains(cmd, "poweroff") {
			poweroffs++
			go r.drv.exit(r.drv.alive()[0]) // the guest powers itself off
		}
		return 0, nil
	}
	vm, err := r.m.Start(ctx, r.newVM("s1", false))
	if err != nil {
		t.Fatal(err)
	}
	root, work, ip := vm.Runtime.RootDisk, vm.Runtime.WorkDisk, vm.IP
	r.stepLog()
	vm, err = r.m.Stop(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	if vm.State != model.StateStopped || vm.Runtime.PID != 0 || vm.Runtime.Tap != "" || vm.Runtime.RuntimeDir != "" || vm.IP != ip {
		t.Fatalf("after stop: %+v", vm)
	}
	if poweroffs != 1 || len(r.drv.signalLog()) != 0 {
		t.Fatalf("graceful stop: %d poweroffs, signals %v", poweroffs, r.drv.signalLog())
	}
	if taps, _ := r.net.counts(); taps != 0 || len(r.dns.names()) != 0 {
		t.Fatal("tap or dns left after stop")
	}
	if _, err := os.Stat(r.layout.VMRuntimeDir(vm.ID)); !os.IsNotExist(err) {
		t.Fatalf("runtime dir: %v", err)
	}
	if _, err := r.m.Stop(ctx, vm); !errors.Is(err, model.ErrNotRunning) {
		t.Fatalf("second stop: %v", err)
	}
	vm, err = r.m.Start(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	want := prefixed(OpStart, []string{StepArtifacts, StepLease, StepRootDisk, StepWorkDisk, StepGuestConfig, StepTap, StepNAT, StepVMM, StepDNS, StepSSH})
	var steps []string
	for _, s := range r.stepLog() {
		if !strings.HasPrefix(s, OpTeardown+":") {
			steps = append(steps, s)
		}
	}
	if !reflect.DeepEqual(steps, append([]string{"stop:shutdown"}, want...)) {
		t.Fatalf("steps: %v", steps)
	}
	if vm.Runtime.RootDisk != root || vm.Runtime.WorkDisk != work || vm.IP != ip {
		t.Fatalf("disks or address changed: %+v", vm)
	}
}

func TestStopKillsWhenGuestIgnoresPoweroffOrSSHIsDown(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	vm, err := r.m.Start(ctx, r.newVM("s2", false))
	if err != nil {
		t.Fatal(err)
	}
	pid := vm.Runtime.PID
	start := time.Now()
	if vm, err = r.m.Stop(ctx, vm); err != nil {
		t.Fatal(err)
	}
	if sig := r.drv.signalLog(); len(sig) != 1 || !strings.HasSuffix(sig[0], ":KILL") || time.Since(start) < 200*time.Millisecond {
		t.Fatalf("guest ignored poweroff: signals %v after %s", sig, time.Since(start))
	}

	// ssh unreachable: SIGTERM at once, no grace.
	r.guests.dialErr = errInjected
	if vm, err = r.m.Start(ctx, vm); err != nil {
		t.Fatal(err)
	}
	r.m.dropConn(vm.ID) // no cached connection: stop must dial
	if vm, err = r.m.Stop(ctx, vm); err != nil {
		t.Fatal(err)
	}
	if sig := r.drv.signalLog(); len(sig) != 2 || !strings.HasSuffix(sig[1], ":TERM") || strings.HasPrefix(sig[1], strconv.Itoa(pid)+":") {
		t.Fatalf("signals %v", sig)
	}
	if vm.State != model.StateStopped {
		t.Fatal(vm.State)
	}
}

func TestTeardownRunsEveryStepAndJoinsErrors(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	vm, err := r.m.Start(ctx, r.newVM("t1", true))
	if err != nil {
		t.Fatal(err)
	}
	errTap, errNAT := errors.New("tap is stuck"), errors.New("nft said no")
	r.net.releaseErr, r.net.disableErr = errTap, errNAT
	vm, err = r.m.Kill(ctx, vm, syscall.SIGKILL)
	if !errors.Is(err, errTap) || !errors.Is(err, errNAT) {
		t.Fatalf("err = %v", err)
	}
	// Every other step ran: VMM gone, DNS gone, runtime dir gone.
	if len(r.drv.alive()) != 0 || len(r.dns.names()) != 0 {
		t.Fatal("VMM or DNS left")
	}
	if _, err := os.Stat(r.layout.VMRuntimeDir(vm.ID)); !os.IsNotExist(err) {
		t.Fatalf("runtime dir: %v", err)
	}
	// The failed resources stay recorded, so a retry can release them.
	if vm.State != model.StateError || vm.Runtime.Tap == "" || !vm.Runtime.NATActive || vm.Runtime.PID != 0 {
		t.Fatalf("record: %+v", vm)
	}
	if _, err := r.m.Set(ctx, vm, Changes{}); !errors.Is(err, ErrBadState) {
		t.Fatalf("set with leftovers: %v", err)
	}
	r.net.releaseErr, r.net.disableErr = nil, nil
	if vm, err = r.m.Stop(ctx, vm); err != nil {
		t.Fatal(err)
	}
	if vm.State != model.StateStopped || hasTransient(vm) {
		t.Fatalf("after retry: %+v", vm)
	}
	if taps, nat := r.net.counts(); taps != 0 || nat != 0 {
		t.Fatal("leftovers not released")
	}
}

func TestKillSignals(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	vm, err := r.m.Start(ctx, r.newVM("k1", false))
	if err != nil {
		t.Fatal(err)
	}
	if vm, err = r.m.Kill(ctx, vm, syscall.SIGUSR1); err != nil || vm.State != model.StateRunning {
		t.Fatalf("USR1: %v %s", err, vm.State)
	}
	if vm, err = r.m.Kill(ctx, vm, syscall.SIGTERM); err != nil || vm.State != model.StateStopped {
		t.Fatalf("TERM: %v %s", err, vm.State)
	}
	if _, err := r.m.Kill(ctx, vm, syscall.SIGKILL); !errors.Is(err, model.ErrNotRunning) {
		t.Fatalf("kill of a stopped VM: %v", err)
	}
	if got := r.drv.signalLog(); len(got) != 2 || !strings.HasSuffix(got[0], ":USR1") || !strings.HasSuffix(got[1], ":TERM") {
		t.Fatalf("signals %v", got)
	}
}

func TestRestart(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	vm, err := r.m.Start(ctx, r.newVM("r1", false))
	if err != nil {
		t.Fatal(err)
	}
	old := vm.Runtime.PID
	if vm, err = r.m.Restart(ctx, vm); err != nil || vm.State != model.StateRunning || vm.Runtime.PID == old {
		t.Fatalf("restart: %v %+v", err, vm)
	}
	if a := r.drv.alive(); len(a) != 1 {
		t.Fatalf("alive %v", a)
	}
}

func TestDestroyReleasesEverything(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	vm, err := r.m.Start(ctx, r.newVM("d1", true))
	if err != nil {
		t.Fatal(err)
	}
	ip := vm.IP
	if err := r.m.Destroy(ctx, vm); err != nil {
		t.Fatal(err)
	}
	r.assertCleanExceptRecord(vm.ID)
	if len(r.guests.pinned) != 0 || !strings.Contains(strings.Join(r.guests.forgot, ","), ip) {
		t.Fatalf("known hosts: pinned %v forgot %v", r.guests.pinned, r.guests.forgot)
	}
	if _, err := os.Stat(r.layout.VMDir(vm.ID)); !os.IsNotExist(err) {
		t.Fatalf("vm dir: %v", err)
	}
}

func (r *rig) assertCleanExceptRecord(id string) {
	r.t.Helper()
	if len(r.drv.alive()) != 0 || len(r.dns.names()) != 0 || r.store.leaseCount() != 0 || len(r.files(id)) != 0 {
		r.t.Fatalf("left: alive %v dns %v leases %d files %v", r.drv.alive(), r.dns.names(), r.store.leaseCount(), r.files(id))
	}
	if taps, nat := r.net.counts(); taps != 0 || nat != 0 {
		r.t.Fatalf("taps %d nat %d", taps, nat)
	}
}

func TestSet(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	vm, err := r.m.Start(ctx, r.newVM("set1", false))
	if err != nil {
		t.Fatal(err)
	}
	four := 4
	if _, err := r.m.Set(ctx, vm, Changes{VCPU: &four}); !errors.Is(err, ErrBadState) {
		t.Fatalf("set on running VM: %v", err)
	}
	if vm, err = r.m.Kill(ctx, vm, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	mem, size, nat := int64(1024), int64(128), true
	vm, err = r.m.Set(ctx, vm, Changes{VCPU: &four, MemoryMiB: &mem, DiskSizeMiB: &size, NAT: &nat})
	if err != nil {
		t.Fatal(err)
	}
	if vm.VCPU != 4 || vm.MemoryMiB != 1024 || vm.DiskSizeMiB != 128 || !vm.NAT || r.get(vm.ID).DiskSizeMiB != 128 {
		t.Fatalf("after set: %+v", vm)
	}
	if fi, _ := os.Stat(vm.Runtime.WorkDisk); fi.Size() != 128<<20 {
		t.Fatalf("work disk not grown: %d", fi.Size())
	}
	if err := ext4.Check(ctx, r.runner, vm.Runtime.WorkDisk); err != nil {
		t.Fatal(err)
	}
	small := int64(64)
	if _, err := r.m.Set(ctx, vm, Changes{DiskSizeMiB: &small}); !errors.Is(err, model.ErrInvalidSize) {
		t.Fatalf("shrink: %v", err)
	}
	zero := 0
	if _, err := r.m.Set(ctx, vm, Changes{VCPU: &zero}); !errors.Is(err, model.ErrInvalidSize) {
		t.Fatalf("vcpu 0: %v", err)
	}
	// The next start uses the new settings and brings NAT up.
	if vm, err = r.m.Start(ctx, vm); err != nil {
		t.Fatal(err)
	}
	if spec := r.drv.specs[len(r.drv.specs)-1]; spec.VCPU != 4 || spec.MemoryMiB != 1024 || !vm.Runtime.NATActive {
		t.Fatalf("spec after set: %+v", spec)
	}
}

func TestStats(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	vm, err := r.m.Start(ctx, r.newVM("st1", false))
	if err != nil {
		t.Fatal(err)
	}
	st, err := r.m.Stats(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	// The fake VMM has no process: no CPU/RSS, but disk figures.
	if st.PID != 0 || st.WorkDisk.SizeBytes != 64<<20 || st.WorkDisk.AllocatedBytes <= 0 || st.RootDisk.SizeBytes != 16<<20 {
		t.Fatalf("stats: %+v", st)
	}
	// procStat and procRSS on a real process: this test.
	cpu, start, err := procStat(os.Getpid())
	if err != nil || cpu < 0 || start <= 0 {
		t.Fatalf("procStat: %v %v %v", cpu, start, err)
	}
	if rss, err := procRSS(os.Getpid()); err != nil || rss < 1<<20 {
		t.Fatalf("procRSS: %d %v", rss, err)
	}
}

func TestReconcileDecisions(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()

	alive, err := r.m.Start(ctx, r.newVM("alive", true))
	if err != nil {
		t.Fatal(err)
	}
	dead, err := r.m.Start(ctx, r.newVM("dead", true))
	if err != nil {
		t.Fatal(err)
	}
	recycled, err := r.m.Start(ctx, r.newVM("recycled", false))
	if err != nil {
		t.Fatal(err)
	}
	restarting, err := r.m.Start(ctx, r.newVM("restarting", false))
	if err != nil {
		t.Fatal(err)
	}
	if restarting, err = r.m.Kill(ctx, restarting, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	stopping, err := r.m.Start(ctx, r.newVM("stopping", false))
	if err != nil {
		t.Fatal(err)
	}
	// The daemon "dies" in the middle of three operations: a create at its
	// DNS step (VMM launched, disks, lease, tap and NAT made), a start of a
	// provisioned VM at its ssh wait, and a stop as it begins.
	half := r.newVM("half", true)
	r.freezeAt(func() { _, _ = r.m.Start(context.Background(), half) }, OpCreate, StepDNS)
	r.freezeAt(func() { _, _ = r.m.Start(context.Background(), restarting) }, OpStart, StepSSH)
	r.freezeAt(func() { _, _ = r.m.Stop(context.Background(), stopping) }, OpStop, StepShutdown)

	// While it was down: one VMM died; another died and its pid now
	// belongs to an unrelated process (this test), which must never be
	// signalled; a tap was left by a crash before its name was recorded.
	r.drv.exit(dead.ID)
	r.drv.exit(recycled.ID)
	rec := r.get(recycled.ID)
	rec.Runtime.PID = os.Getpid()
	rec.Runtime.Comm, rec.Runtime.Marker = "qemu-system-x86", "unix:/run/banger/vms/x/qmp.sock,server=on"
	r.store.put(rec)
	r.net.stale = []string{"bgtapdeadbeef00"}

	m2 := r.restart()
	signalsBefore := len(r.drv.signalLog())
	rep, err := m2.Reconcile(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(rep.Reattached, []string{"alive"}) || !reflect.DeepEqual(rep.Demoted, []string{"dead", "recycled"}) ||
		!reflect.DeepEqual(rep.RolledBack, []string{"half", "restarting", "stopping"}) {
		t.Fatalf("report: %+v", rep)
	}
	if !reflect.DeepEqual(rep.Taps, []string{"bgtapdeadbeef00"}) {
		t.Fatalf("stale taps: %v", rep.Taps)
	}
	// alive: untouched, DNS re-added, NAT kept.
	if a := r.get(alive.ID); a.State != model.StateRunning || a.Runtime.PID != alive.Runtime.PID || a.Runtime.Tap != alive.Runtime.Tap {
		t.Fatalf("alive: %+v", a)
	}
	if names := r.dns.names(); !reflect.DeepEqual(names, []string{"alive"}) {
		t.Fatalf("dns: %v", names)
	}
	r.net.mu.Lock()
	nat := copyMapB(r.net.nat)
	taps := len(r.net.taps)
	r.net.mu.Unlock()
	if !reflect.DeepEqual(nat, map[string]bool{alive.IP: true}) || taps != 1 {
		t.Fatalf("nat %v taps %d", nat, taps)
	}
	for _, s := range r.drv.signalLog()[signalsBefore:] {
		if strings.HasPrefix(s, strconv.Itoa(os.Getpid())+":") {
			t.Fatalf("signalled the recycled pid: %v", s)
		}
	}
	if got := r.drv.alive(); !reflect.DeepEqual(got, []string{alive.ID}) {
		t.Fatalf("alive VMMs: %v", got)
	}
	for _, v := range []*model.VM{dead, recycled, stopping} {
		g := r.get(v.ID)
		if g.State != model.StateStopped || hasTransient(g) || !g.Runtime.Provisioned || g.IP == "" {
			t.Fatalf("%s: %+v", v.Name, g)
		}
	}
	h := r.get(half.ID)
	if h.State != model.StateError || !strings.Contains(h.Error, `"dns"`) || h.IP != "" || h.Runtime.DiskHandle != nil || len(r.files(half.ID)) != 0 {
		t.Fatalf("half: %+v files %v", h, r.files(half.ID))
	}
	p := r.get(restarting.ID)
	if p.State != model.StateError || !strings.Contains(p.Error, `"ssh"`) || p.IP == "" || p.Runtime.DiskHandle == nil || hasTransient(p) {
		t.Fatalf("restarting: %+v", p)
	}
	if _, err := os.Stat(p.Runtime.WorkDisk); err != nil {
		t.Fatalf("a provisioned VM lost its work disk: %v", err)
	}
	// Every VM keeps its lease but the half-created one.
	if n := r.store.leaseCount(); n != 5 {
		t.Fatalf("%d leases", n)
	}
	// A second reconcile changes nothing.
	rep, err = m2.Reconcile(ctx)
	if err != nil || len(rep.Demoted)+len(rep.RolledBack)+len(rep.Cleaned)+len(rep.Taps) != 0 || len(rep.Reattached) != 1 {
		t.Fatalf("second reconcile: %+v %v", rep, err)
	}
	// The rolled-back VMs start again.
	for _, v := range []*model.VM{h, p} {
		if _, err := m2.Start(ctx, v); err != nil {
			t.Fatalf("start %s after rollback: %v", v.Name, err)
		}
	}
}

func copyMapB(m map[string]bool) map[string]bool {
	out := map[string]bool{}
	for k, v := range m {
		out[k] = v
	}
	return out
}

func TestStartsOfDifferentVMsRunInParallel(t *testing.T) {
	r := newRig(t)
	var wg sync.WaitGroup
	arrived := make(chan string, 2)
	release := make(chan struct{})
	r.drv.onStart = func(s vmm.Spec) {
		arrived <- s.Name
		<-release
	}
	a, b := r.newVM("pa", false), r.newVM("pb", false)
	errs := make(chan error, 2)
	for _, vm := range []*model.VM{a, b} {
		wg.Add(1)
		go func(vm *model.VM) {
			defer wg.Done()
			_, err := r.m.Start(context.Background(), vm)
			errs <- err
		}(vm)
	}
	// Both starts must be inside the VMM step at the same time.
	for i := 0; i < 2; i++ {
		select {
		case <-arrived:
		case <-time.After(20 * time.Second):
			close(release)
			t.Fatal("the second start did not run while the first was in progress")
		}
	}
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if ip1, ip2 := r.get(a.ID).IP, r.get(b.ID).IP; ip1 == ip2 {
		t.Fatalf("same address %s", ip1)
	}
}

func TestConnIsCachedAndDroppedOnStop(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	vm, err := r.m.Start(ctx, r.newVM("cc", false))
	if err != nil {
		t.Fatal(err)
	}
	c1, err := r.m.Conn(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	c2, _ := r.m.Conn(ctx, vm)
	if c1 != c2 {
		t.Fatal("connection not reused")
	}
	if vm, err = r.m.Kill(ctx, vm, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c1.Done():
	default:
		t.Fatal("connection still open after kill")
	}
	if _, err := r.m.Conn(ctx, vm); !errors.Is(err, model.ErrNotRunning) {
		t.Fatalf("conn to stopped VM: %v", err)
	}
}

func TestErrorTextBounded(t *testing.T) {
	long := errors.New(strings.Repeat("x", 10000))
	if n := len(errorText(long)); n > 4100 {
		t.Fatalf("%d", n)
	}
	if got := errorText(errors.New("  a\n")); got != "a" {
		t.Fatalf("%q", got)
	}
}

func TestGitConfigQuoting(t *testing.T) {
	got := string(gitConfig(`A "q" \ b`, "a@b"))
	want := "[user]\n\tname = \"A \\\"q\\\" \\\\ b\"\n\temail = \"a@b\"\n"
	if got != want {
		t.Fatalf("%q", got)
	}
	if got := string(gitConfig("", "e@x")); got != "[user]\n\temail = \"e@x\"\n" {
		t.Fatalf("%q", got)
	}
}

func TestHostKeyIsStable(t *testing.T) {
	dir := t.TempDir()
	s1, pem1, err := hostKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	s2, pem2, err := hostKey(dir)
	if err != nil || string(pem1) != string(pem2) || string(s1.PublicKey().Marshal()) != string(s2.PublicKey().Marshal()) {
		t.Fatal("host key changed")
	}
	if fi, _ := os.Stat(filepath.Join(dir, hostKeyFile)); fi.Mode().Perm() != 0o600 {
		t.Fatal(fi.Mode())
	}
}

// TestMachineID: each VM gets its own valid machine id (#16 defect 3),
// stable for the same VM.
func TestMachineID(t *testing.T) {
	a, b := MachineID("5865ec7d0a1b2c3d"), MachineID("5865ec7d0a1b2c3e")
	if a == b || a != MachineID("5865ec7d0a1b2c3d") {
		t.Fatalf("machine ids %s %s", a, b)
	}
	if len(a) != 32 || strings.Trim(a, "0123456789abcdef") != "" || strings.Trim(a, "0") == "" {
		t.Fatalf("machine id %q is not 32 lowercase hex digits", a)
	}
}
