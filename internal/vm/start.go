package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/bangerdev/banger/internal/disk"
	"github.com/bangerdev/banger/internal/ext4"
	"github.com/bangerdev/banger/internal/image"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/netw"
	"github.com/bangerdev/banger/internal/template"
	"github.com/bangerdev/banger/internal/vmm"
)

// BaseKernelArgs start every guest's kernel command line (see the guest
// contract in internal/image/guest.go): serial console, the root disk, and
// banger's init, which execs systemd in images that have it. panic=-1
// reboots at once on a panic, which the VMM turns into an exit.
const BaseKernelArgs = "console=ttyS0 root=/dev/vda rw panic=-1 init=" + image.GuestInit

// errVMMExited is the cause of the ssh wait's cancellation when the VMM
// exits during boot.
var errVMMExited = errors.New("the VMM exited while the guest was booting")

// startRun is the state of one create/start.
type startRun struct {
	m      *Manager
	vm     *model.VM
	first  bool // not provisioned yet: this start creates the disks
	img    *model.Image
	kernel *model.Kernel
	driver vmm.Driver
	ip     netip.Addr
	root   *disk.Handle
	handle *vmm.Handle

	cold      bool               // never restore a template (a fallback after a failed restore)
	tmpl      *template.Template // the template this create restores (nil = cold boot)
	tmplToken string             // its agent token
}

// Start boots a VM that is not running and returns the updated record once
// its ssh server accepts banger's key. The first start of a VM provisions it
// (operation "create": lease, root and work disks); later starts reuse its
// disks and address. Starting a running VM returns it unchanged. On failure
// every resource made by this start is released again, the VM is left in
// state "error" with the reason, and a *StepError is returned.
func (m *Manager) Start(ctx context.Context, vm *model.VM) (*model.VM, error) {
	switch vm.State {
	case model.StateRunning:
		return vm, nil
	case model.StateStarting, model.StateCreating, model.StateStopping:
		return vm, fmt.Errorf("VM %s is %s: %w (wait for it to finish, or `banger vm kill %s`)", vm.Name, vm.State, ErrBadState, vm.Name)
	}
	r := &startRun{m: m, vm: vm, first: !vm.Runtime.Provisioned}
	op, state := OpStart, model.StateStarting
	if r.first {
		op, state = OpCreate, model.StateCreating
	}
	vm.State, vm.Error = state, ""
	if err := m.save(ctx, vm); err != nil {
		return vm, err
	}
	start := m.o.Now()
	err := m.runSteps(ctx, op, vm, r.steps())
	if err != nil && r.restoring() && ctx.Err() == nil && restoreFailed(err) {
		// A template that does not restore is discarded; the VM
		// cold-boots (everything the attempt made was undone).
		r.warn(ctx, fmt.Sprintf("template %s failed to restore (%v); discarding it and booting from scratch", r.tmpl.ID[:12], err))
		if derr := m.tmpl.Discard(*r.tmpl); derr != nil {
			m.o.Logger.WarnContext(ctx, "discard template", "id", r.tmpl.ID, "err", derr)
		}
		vm.Runtime.Template = ""
		r = &startRun{m: m, vm: vm, first: true, cold: true}
		err = m.runSteps(ctx, op, vm, r.steps())
	}
	if err != nil {
		vm.State, vm.Error, vm.Runtime.Step = model.StateError, errorText(err), ""
		if serr := m.save(ctx, vm); serr != nil {
			err = errors.Join(err, serr)
		}
		return vm, err
	}
	vm.State, vm.Runtime.Step, vm.Runtime.Provisioned = model.StateRunning, "", true
	if err := m.save(ctx, vm); err != nil {
		return vm, err
	}
	if !r.restoring() {
		// A restore set the clock in its identity step a moment ago.
		m.syncClockAtBoot(ctx, vm)
	}
	m.o.Logger.InfoContext(ctx, "vm running", "vm", vm.Name, "op", op, "ip", vm.IP, "pid", vm.Runtime.PID, "took", m.o.Now().Sub(start).Round(time.Millisecond))
	return vm, nil
}

func (r *startRun) steps() []step {
	var s []step
	if hasTransient(r.vm) {
		s = append(s, step{name: StepCleanup, detail: "releasing leftovers of an earlier run", do: r.cleanup})
	}
	s = append(s, step{name: StepArtifacts, detail: "image " + r.vm.Image + ", kernel " + r.vm.Kernel, do: r.artifacts})
	if r.first && !r.cold && !r.vm.Runtime.Cold && r.m.tmpl != nil {
		s = append(s, step{name: StepTemplate, do: r.template})
	}
	s = append(s,
		step{name: StepLease, do: r.lease},
		step{name: StepRootDisk, do: r.rootDisk},
		step{name: StepWorkDisk, do: r.workDisk},
		step{name: StepGuestConfig, do: r.guestConfig},
		step{name: StepTap, do: r.tap},
	)
	s = append(s, step{name: StepNAT, detail: netDetail(r.vm), do: r.nat})
	if len(r.vm.Ports) > 0 {
		// Before the VMM: a host port in use fails the start before the
		// boot, not after it.
		s = append(s, step{name: StepPorts, detail: portsDetail(r.vm.Ports), do: r.ports})
	}
	return append(s,
		step{name: StepVMM, do: r.startVMM},
		step{name: StepIdentity, detail: "the restored guest takes this VM's identity", do: r.identity, when: r.restoring},
		step{name: StepDNS, do: r.dns},
		step{name: StepSSH, detail: "waiting for the guest to boot", do: r.waitSSH},
	)
}

func (r *startRun) cleanup(ctx context.Context, _ *undoStack) error {
	return r.m.teardown(ctx, r.vm)
}

func (r *startRun) artifacts(ctx context.Context, _ *undoStack) error {
	vm := r.vm
	img, err := r.m.o.Artifacts.EnsureImage(ctx, vm.Image)
	if err != nil {
		return err
	}
	name := vm.Kernel
	if name == "" {
		name = img.Kernel
	}
	if name == "" {
		return fmt.Errorf("no kernel for VM %s: image %s names none (create the VM with --kernel)", vm.Name, img.Name)
	}
	k, err := r.m.o.Artifacts.EnsureKernel(ctx, name)
	if err != nil {
		return err
	}
	if vm.Driver == "" || vm.Driver == "auto" {
		vm.Driver = r.m.o.DefaultDriver
	}
	d, err := r.m.driver(vm)
	if err != nil {
		return err
	}
	r.img, r.kernel, r.driver = img, k, d
	return nil
}

func (r *startRun) lease(ctx context.Context, u *undoStack) error {
	m, vm := r.m, r.vm
	_, first, last, _, err := netw.Plan(m.o.Network.Config().CIDR)
	if err != nil {
		return err
	}
	ip, err := m.o.Store.AllocateLease(ctx, vm.ID, first, last)
	if err != nil {
		return err
	}
	if r.first {
		u.push("release lease", func(ctx context.Context) error {
			if err := m.o.Store.ReleaseLease(ctx, vm.ID); err != nil {
				return err
			}
			vm.IP, vm.MAC = "", ""
			return m.save(ctx, vm)
		})
	}
	r.ip = ip
	vm.IP, vm.MAC = ip.String(), netw.MACFor(ip)
	return m.save(ctx, vm)
}

// cowFor returns the CoW implementation of a handle's strategy.
func (m *Manager) cowFor(h *disk.Handle) (disk.CoW, error) {
	if h.Strategy == m.o.CoW.Name() {
		return m.o.CoW, nil
	}
	return disk.New(h.Strategy, m.o.Ops, m.o.Runner)
}

func decodeHandle(raw json.RawMessage) (*disk.Handle, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var h disk.Handle
	if err := json.Unmarshal(raw, &h); err != nil {
		return nil, fmt.Errorf("decode root disk handle: %w", err)
	}
	return &h, nil
}

// setHandle records h (nil clears it) in the runtime.
func setHandle(vm *model.VM, h *disk.Handle) {
	if h == nil {
		vm.Runtime.DiskHandle, vm.Runtime.RootDisk, vm.Runtime.DMName, vm.Runtime.Loops, vm.Runtime.CoW = nil, "", "", nil, ""
		return
	}
	raw, _ := json.Marshal(h)
	vm.Runtime.DiskHandle = raw
	vm.Runtime.RootDisk, vm.Runtime.DMName, vm.Runtime.Loops, vm.Runtime.CoW = h.Path, h.DMName, h.Loops, string(h.Strategy)
}

// diskFile is the file whose existence means the root disk exists.
func diskFile(h *disk.Handle) string {
	if h.Strategy == disk.DM {
		return h.COWFile
	}
	return h.Path
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func (r *startRun) rootDisk(ctx context.Context, u *undoStack) error {
	m, vm := r.m, r.vm
	dir := m.o.Layout.VMDir(vm.ID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("VM directory: %w", err)
	}
	old, err := decodeHandle(vm.Runtime.DiskHandle)
	if err != nil {
		return err
	}
	if old != nil && exists(diskFile(old)) && vm.Runtime.Provisioned {
		cow, err := m.cowFor(old)
		if err != nil {
			return err
		}
		if err := cow.Reattach(ctx, old); err != nil {
			return fmt.Errorf("re-attach root disk: %w", err)
		}
		setHandle(vm, old)
		if old.Strategy == disk.DM {
			u.push("detach root disk", func(ctx context.Context) error { return m.detachRoot(ctx, vm) })
		}
		r.root = old
		return m.save(ctx, vm)
	}
	if vm.Runtime.Provisioned {
		return fmt.Errorf("the root disk of VM %s is gone (%w); delete and recreate the VM", vm.Name, disk.ErrMissing)
	}
	// A failed first start leaves nothing in the VM's directory but its
	// console log (for `banger vm logs`); this undo runs after the others.
	u.push("clean VM directory", func(ctx context.Context) error { return cleanVMDir(dir) })
	if old != nil { // a create that crashed or failed before: start over
		if cow, err := m.cowFor(old); err == nil {
			if err := cow.Remove(ctx, old); err != nil {
				return fmt.Errorf("remove the root disk of an earlier attempt: %w", err)
			}
		}
	}
	name := rootDiskFile
	if m.o.CoW.Name() == disk.DM {
		name = rootCOWFile
	}
	planned := disk.Plan(m.o.CoW.Name(), r.rootBase(), filepath.Join(dir, name), 0)
	setHandle(vm, planned)
	if err := m.save(ctx, vm); err != nil {
		return err
	}
	u.push("remove root disk", func(ctx context.Context) error {
		if err := m.o.CoW.Remove(ctx, planned); err != nil {
			return err
		}
		setHandle(vm, nil)
		return m.save(ctx, vm)
	})
	h, err := m.o.CoW.Create(ctx, planned.Base, diskFile(planned), 0)
	if err != nil {
		return err
	}
	setHandle(vm, h)
	r.root = h
	return m.save(ctx, vm)
}

func (r *startRun) workDisk(ctx context.Context, u *undoStack) error {
	m, vm := r.m, r.vm
	path := filepath.Join(m.o.Layout.VMDir(vm.ID), workDiskFile)
	if exists(path) {
		if vm.Runtime.WorkDisk != path {
			vm.Runtime.WorkDisk = path
			return m.save(ctx, vm)
		}
		return nil
	}
	if vm.Runtime.Provisioned {
		return fmt.Errorf("the /root disk of VM %s (%s) is gone: %w; delete and recreate the VM", vm.Name, path, disk.ErrMissing)
	}
	vm.Runtime.WorkDisk = path
	if err := m.save(ctx, vm); err != nil {
		return err
	}
	u.push("remove work disk", func(ctx context.Context) error {
		if err := removeWorkDisk(path); err != nil {
			return err
		}
		vm.Runtime.WorkDisk = ""
		return m.save(ctx, vm)
	})
	if r.restoring() {
		return r.cloneWorkDisk(ctx, path)
	}
	return m.createWorkDisk(ctx, vm, r.img, path)
}

func (r *startRun) guestConfig(ctx context.Context, _ *undoStack) error {
	m, vm := r.m, r.vm
	signer, pemData, err := hostKey(m.o.Layout.VMDir(vm.ID))
	if err != nil {
		return err
	}
	if r.restoring() {
		// The restored guest has the disk cached as it was at the save:
		// nothing may write to it from outside. The identity step applies
		// the configuration through the agent instead.
		if _, err := agentToken(m.o.Layout.VMDir(vm.ID)); err != nil {
			return err
		}
		if err := m.o.Guests.PinHostKey(append([]string{vm.IP}, m.aliases(vm)...), signer.PublicKey()); err != nil {
			return fmt.Errorf("pin host key: %w", err)
		}
		return nil
	}
	n, err := m.guestNetwork(vm)
	if err != nil {
		return err
	}
	b := m.guestConfigBatch(vm, n, pemData, signer.PublicKey())
	if err := m.agentBatch(ctx, b, vm); err != nil {
		return err
	}
	if err := ext4.Apply(ctx, m.o.Runner, r.root.Path, b); err != nil {
		return fmt.Errorf("write guest configuration: %w", err)
	}
	if err := m.o.Guests.PinHostKey(append([]string{vm.IP}, m.aliases(vm)...), signer.PublicKey()); err != nil {
		return fmt.Errorf("pin host key: %w", err)
	}
	return nil
}

func (r *startRun) tap(ctx context.Context, u *undoStack) error {
	m, vm := r.m, r.vm
	if err := m.o.Network.EnsureBridge(ctx); err != nil {
		return err
	}
	name, err := m.o.Network.AcquireTap(ctx, vm.ID)
	if err != nil {
		return err
	}
	vm.Runtime.Tap = name
	release := func(ctx context.Context) error {
		if err := m.o.Network.ReleaseTap(ctx, name); err != nil {
			return err
		}
		vm.Runtime.Tap = ""
		return m.save(ctx, vm)
	}
	if err := m.save(ctx, vm); err != nil {
		return errors.Join(err, release(context.WithoutCancel(ctx)))
	}
	u.push("release tap", release)
	return nil
}

// vmNet is the VM's network policy as the network manager takes it.
func vmNet(vm *model.VM, ip netip.Addr) netw.VMNet {
	return netw.VMNet{IP: ip, MAC: vm.MAC, Tap: vm.Runtime.Tap, NAT: vm.NAT, AllowLAN: vm.NAT && vm.AllowLAN}
}

func netDetail(vm *model.VM) string {
	switch {
	case vm.NAT && vm.AllowLAN:
		return "NAT, LAN allowed"
	case vm.NAT:
		return "NAT (internet only)"
	}
	return "no NAT (host DNS only)"
}

func portsDetail(ports []model.PortForward) string {
	var s []string
	for _, p := range ports {
		s = append(s, p.String())
	}
	return strings.Join(s, ", ")
}

// nat installs the VM's network policy (every VM: its tap may only send
// from its address and MAC; NAT and LAN access as recorded). NATActive
// records that teardown must clear it.
func (r *startRun) nat(ctx context.Context, u *undoStack) error {
	m, vm := r.m, r.vm
	vm.Runtime.NATActive = true
	if err := m.save(ctx, vm); err != nil {
		return err
	}
	u.push("clear network policy", func(ctx context.Context) error {
		if err := m.o.Network.ClearVMNet(ctx, vmNet(vm, r.ip)); err != nil {
			return err
		}
		vm.Runtime.NATActive = false
		return m.save(ctx, vm)
	})
	return m.o.Network.ApplyVMNet(ctx, vmNet(vm, r.ip))
}

// ports serves the VM's port forwards; a forward that cannot listen (port
// in use) fails the start with the reason.
func (r *startRun) ports(ctx context.Context, u *undoStack) error {
	m, vm := r.m, r.vm
	if m.o.Forwards == nil {
		return errors.New("this daemon cannot serve port forwards")
	}
	u.push("remove port forwards", func(ctx context.Context) error {
		m.o.Forwards.Remove(vm.ID)
		return nil
	})
	return m.o.Forwards.Set(ctx, vm.ID, r.ip, vm.Ports)
}

// prepareLog returns the VM's console log path, truncating a log grown past
// maxConsoleLog and marking the start.
func (m *Manager) prepareLog(vm *model.VM) (string, error) {
	p := filepath.Join(m.o.Layout.VMDir(vm.ID), consoleFile)
	flags := os.O_WRONLY | os.O_CREATE | os.O_APPEND
	if st, err := os.Stat(p); err == nil && st.Size() > maxConsoleLog {
		flags |= os.O_TRUNC
	}
	f, err := os.OpenFile(p, flags, 0o640)
	if err != nil {
		return "", fmt.Errorf("console log: %w", err)
	}
	defer f.Close()
	if m.o.VMMUID >= 0 && m.o.VMMUID != os.Geteuid() {
		_ = f.Chown(m.o.VMMUID, m.o.VMMGID)
	}
	fmt.Fprintf(f, "\n--- banger: starting %s at %s ---\n", vm.Name, m.o.Now().UTC().Format(time.RFC3339))
	return p, nil
}

// kernelPath picks the kernel file for the driver: Firecracker needs the
// uncompressed vmlinux; QEMU boots the bzImage as shipped when there is one.
func kernelPath(k *model.Kernel, driver string) string {
	if driver != "firecracker" && k.BzImage != "" {
		return k.BzImage
	}
	return k.Vmlinux
}

// spec is the VMM spec of vm. Find only needs VMID, Name, RuntimeDir and
// LogPath, so spec works with nil kernel and disk for reconcile.
func (m *Manager) spec(vm *model.VM, k *model.Kernel, root *disk.Handle) vmm.Spec {
	rdir := vm.Runtime.RuntimeDir
	if rdir == "" {
		rdir = m.o.Layout.VMRuntimeDir(vm.ID)
	}
	s := vmm.Spec{
		VMID: vm.ID, Name: vm.Name, RuntimeDir: rdir,
		Cmdline:   strings.TrimSpace(BaseKernelArgs + " " + m.o.KernelArgs),
		VCPU:      vm.VCPU,
		MemoryMiB: vm.MemoryMiB,
		LogPath:   vm.Runtime.LogPath,
		UID:       m.o.VMMUID, GID: m.o.VMMGID,
	}
	if k != nil {
		s.Kernel, s.Initrd = kernelPath(k, vm.Driver), k.Initrd
	}
	if root != nil {
		s.Drives = []vmm.Drive{{ID: "root", Path: root.Path, Root: true}, {ID: "work", Path: vm.Runtime.WorkDisk}}
	}
	if vm.Runtime.Tap != "" {
		s.Net = []vmm.NetIface{{Tap: vm.Runtime.Tap, MAC: vm.MAC}}
	}
	m.agentSpec(vm, &s)
	return s
}

func (r *startRun) startVMM(ctx context.Context, u *undoStack) error {
	m, vm := r.m, r.vm
	rdir := m.o.Layout.VMRuntimeDir(vm.ID)
	if err := os.MkdirAll(rdir, 0o700); err != nil {
		return fmt.Errorf("runtime dir: %w", err)
	}
	if m.o.VMMUID >= 0 && m.o.VMMUID != os.Geteuid() {
		if err := os.Chown(rdir, m.o.VMMUID, m.o.VMMGID); err != nil {
			return fmt.Errorf("runtime dir: %w", err)
		}
	}
	logPath, err := m.prepareLog(vm)
	if err != nil {
		return err
	}
	vm.Runtime.RuntimeDir, vm.Runtime.LogPath = rdir, logPath
	if err := m.save(ctx, vm); err != nil {
		return err
	}
	u.push("remove runtime dir", func(ctx context.Context) error {
		if err := os.RemoveAll(rdir); err != nil {
			return err
		}
		vm.Runtime.RuntimeDir = ""
		return m.save(ctx, vm)
	})
	spec := m.spec(vm, r.kernel, r.root)
	if r.restoring() {
		// Exactly the template's devices: its NIC MAC (the migration
		// stream carries it anyway; the agent sets the VM's own), on this
		// VM's tap.
		spec.RestoreFrom = r.tmpl.Path(r.tmpl.Files.State)
		for i := range spec.Net {
			spec.Net[i].MAC = TemplateMAC
		}
	}
	h, err := r.driver.Start(ctx, spec)
	if err != nil {
		return err
	}
	r.handle = h
	u.push("stop VMM", func(ctx context.Context) error { return m.releaseVMM(ctx, vm) })
	recordHandle(vm, h, m.o.Now())
	return m.save(ctx, vm)
}

// recordHandle copies a VMM handle into the runtime.
func recordHandle(vm *model.VM, h *vmm.Handle, now time.Time) {
	rt := &vm.Runtime
	rt.PID, rt.PIDFile, rt.APISocket, rt.Accel, rt.Chroot = h.PID, h.PIDFile, h.APISocket, h.Accel, h.Chroot
	rt.Comm, rt.Marker = h.Comm, h.Marker
	if h.LogPath != "" {
		rt.LogPath = h.LogPath
	}
	if rt.StartedAt.IsZero() || now.After(rt.StartedAt) {
		rt.StartedAt = now
	}
}

// recordedHandle is the VMM handle stored in the runtime (nil if none).
func recordedHandle(vm *model.VM) *vmm.Handle {
	rt := vm.Runtime
	if rt.PID <= 0 {
		return nil
	}
	return &vmm.Handle{Driver: vm.Driver, PID: rt.PID, PIDFile: rt.PIDFile, APISocket: rt.APISocket,
		LogPath: rt.LogPath, Accel: rt.Accel, Chroot: rt.Chroot, Comm: rt.Comm, Marker: rt.Marker}
}

func (r *startRun) dns(ctx context.Context, u *undoStack) error {
	m, vm := r.m, r.vm
	if m.o.DNS == nil {
		return nil
	}
	m.o.DNS.Set(vm.Name, r.ip)
	u.push("remove DNS record", func(ctx context.Context) error {
		m.o.DNS.Remove(vm.Name)
		return nil
	})
	return nil
}

func (r *startRun) waitSSH(ctx context.Context, _ *undoStack) error {
	m, vm := r.m, r.vm
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		if r.driver.Wait(wctx, r.handle) == nil {
			cancel(errVMMExited)
		}
	}()
	if r.restoring() {
		// The identity step saw sshd serve this VM's key from inside the
		// guest; what is left to prove is the host's path to it. A
		// handshake here would cost a second of emulated guest crypto
		// that the first real connection (the user's) pays anyway.
		err := m.o.Guests.WaitOpen(wctx, sshAddr(vm), vm.Runtime.LogPath, m.o.SSHTimeout)
		if err != nil && errors.Is(context.Cause(wctx), errVMMExited) {
			return vmm.WithLogTail(errVMMExited, vm.Runtime.LogPath)
		}
		return err
	}
	c, err := m.o.Guests.WaitReady(wctx, sshAddr(vm), m.aliases(vm), vm.Runtime.LogPath, m.o.SSHTimeout)
	if err != nil {
		if errors.Is(context.Cause(wctx), errVMMExited) {
			return vmm.WithLogTail(errVMMExited, vm.Runtime.LogPath)
		}
		return err
	}
	m.keepConn(vm.ID, c)
	return nil
}

// removeFile removes p; a missing file is not an error.
func removeFile(p string) error {
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// cleanVMDir removes everything in a VM's directory except its console
// log, and the directory itself when nothing is left.
func cleanVMDir(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		if e.Name() == consoleFile {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, fs.ErrNotExist) && len(ents) == 0 {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
