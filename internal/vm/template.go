package vm

// VM templates: the driver-backed template.Maker and the restore path of
// create (see internal/template for the store and its contract, and
// docs/templates.md).
//
// A template is made by cold-booting a guest of the template's key with a
// template identity (hostname banger-template, a link-local address, the
// template MAC, its own agent token and host key), waiting until its agent
// answers and systemd is idle, then pausing and saving it (vmm.Snapshotter)
// and keeping its root and work disks as they were. A VM restored from it
// gets CoW clones of both disks, the VMM is started with Spec.RestoreFrom
// and exactly the template's device configuration (same spec builder, the
// template's MAC, the VM's own tap), and the identity step then makes the
// guest this VM through the agent: clock, RNG, machine-id, hostname, MAC
// (changed guest side: QEMU's migration stream carries the virtio-net MAC
// the template had, whatever -device says), address/route/DNS, host key
// and the VM's own agent token. Readiness is the agent confirming that
// identity and sshd answering with the VM's own pinned host key.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bangerdev/banger/internal/agent"
	"github.com/bangerdev/banger/internal/atomicfile"
	"github.com/bangerdev/banger/internal/disk"
	"github.com/bangerdev/banger/internal/ext4"
	"github.com/bangerdev/banger/internal/image"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/netw"
	"github.com/bangerdev/banger/internal/progress"
	"github.com/bangerdev/banger/internal/template"
	"github.com/bangerdev/banger/internal/vmm"
	"github.com/bangerdev/banger/internal/vmm/firecracker"
	"github.com/bangerdev/banger/internal/workspace"
)

// Template files (relative to the template's directory).
const (
	templateStateFile = "state"
	templateRootFile  = "root.ext4"
	templateWorkFile  = "work.ext4"
	templateTokenFile = "agent.token"
	templateLogFile   = "console.log"
	// templateSSHDFile records what the template's sshd was found to do
	// with a new host key (sshdFacts).
	templateSSHDFile = "sshd.json"
)

// sshdFacts is what making a template found out about its sshd.
type sshdFacts struct {
	// KeysPerConnection: a new connection got a host key written after
	// sshd started, with no reload (OpenSSH before 9.8 re-executes itself
	// per connection and reads its keys again). Every VM restored from
	// the template runs this same sshd, so it is checked once, here, and
	// the identity step only writes the VM's key.
	KeysPerConnection bool `json:"keys_per_connection"`
}

// checkSSHD finds out, on a booted template guest, whether its sshd serves
// a host key written after it started without being told to reload: the
// agent installs a throwaway key and makes a handshake with sshd. Then the
// template's own key goes back (without a check when it needs none) and
// the guest syncs.
func checkSSHD(ctx context.Context, c agent.Client, templateKey []byte) (sshdFacts, error) {
	throwaway, err := newHostKeyPEM()
	if err != nil {
		return sshdFacts{}, fmt.Errorf("check sshd: %w", err)
	}
	res, err := c.ApplyIdentity(ctx, agent.Identity{HostKey: throwaway})
	if err != nil {
		return sshdFacts{}, fmt.Errorf("check sshd: %w", err)
	}
	f := sshdFacts{KeysPerConnection: res.SSHD == agent.SSHDPerConnection}
	if _, err := c.ApplyIdentity(ctx, agent.Identity{HostKey: templateKey, SSHDKeysPerConnection: f.KeysPerConnection}); err != nil {
		return sshdFacts{}, fmt.Errorf("check sshd: put the template's key back: %w", err)
	}
	if _, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"/bin/sh", "-c", "command -v sync >/dev/null 2>&1 && sync; exit 0"}}); err != nil {
		return sshdFacts{}, fmt.Errorf("check sshd: sync: %w", err)
	}
	return f, nil
}

// readSSHDFacts reads a template's sshdFacts; a template without them (made
// by an older daemon) knows nothing.
func readSSHDFacts(t *template.Template) sshdFacts {
	var f sshdFacts
	if data, err := os.ReadFile(t.Path(templateSSHDFile)); err == nil {
		_ = json.Unmarshal(data, &f)
	}
	return f
}

// templateHostname is the hostname a template guest boots with.
const templateHostname = "banger-template"

// templateAddr is the template guest's address: link-local, never on the
// bridge's network, so a restored guest that has not taken its identity
// yet cannot collide with a VM (its tap's policy drops it anyway).
var templateAddr = netip.MustParseAddr("169.254.0.2")

// TemplateMAC is the MAC of every template guest's NIC, and therefore of a
// restored guest until the identity step sets the VM's own.
var TemplateMAC = netw.MACFor(templateAddr)

// StepTemplate and StepIdentity are the restore path's extra steps of
// create (see Step* in steps.go).
const (
	StepTemplate = "template" // find or make the template of this VM's key
	StepIdentity = "identity" // the restored guest becomes this VM (agent)
)

// ErrNoTemplate is wrapped when a VM cannot be restored from a template
// (templates disabled, a driver without snapshots, no agent, a smaller
// disk than the template's).
var ErrNoTemplate = errors.New("no template for this VM")

// templateVMID is the VM id a template's VMM runs under (its runtime dir,
// tap and process evidence).
func templateVMID(key template.Key) string { return "tmpl-" + key.ID()[:16] }

// TemplateKey is the template key of vm (image, kernel, sizes, driver), or
// an error wrapping ErrNoTemplate when it cannot have one.
func (m *Manager) TemplateKey(ctx context.Context, vm *model.VM) (template.Key, error) {
	img, err := m.o.Artifacts.EnsureImage(ctx, vm.Image)
	if err != nil {
		return template.Key{}, err
	}
	kname := vm.Kernel
	if kname == "" {
		kname = img.Kernel
	}
	if kname == "" {
		return template.Key{}, fmt.Errorf("no kernel for image %s (give one with --kernel)", img.Name)
	}
	k, err := m.o.Artifacts.EnsureKernel(ctx, kname)
	if err != nil {
		return template.Key{}, err
	}
	v := *vm
	if v.Driver == "" || v.Driver == "auto" {
		v.Driver = m.o.DefaultDriver
	}
	d, err := m.driver(&v)
	if err != nil {
		return template.Key{}, err
	}
	return m.templateKey(ctx, &v, img, k, d)
}

func (m *Manager) templateKey(ctx context.Context, vm *model.VM, img *model.Image, k *model.Kernel, d vmm.Driver) (template.Key, error) {
	if m.tmpl == nil {
		return template.Key{}, fmt.Errorf("%w: templates are disabled in this daemon", ErrNoTemplate)
	}
	if !d.Capabilities().Snapshots {
		return template.Key{}, fmt.Errorf("%w: the %s driver cannot save guests", ErrNoTemplate, d.Name())
	}
	if _, ok := d.(vmm.Snapshotter); !ok {
		return template.Key{}, fmt.Errorf("%w: the %s driver cannot save guests", ErrNoTemplate, d.Name())
	}
	if m.o.AgentBinary == "" {
		return template.Key{}, fmt.Errorf("%w: no guest agent to apply a restored VM's identity", ErrNoTemplate)
	}
	ver, ok := d.(vmm.Versioner)
	if !ok {
		return template.Key{}, fmt.Errorf("%w: the %s driver cannot name its version", ErrNoTemplate, d.Name())
	}
	vv, err := ver.VMMVersion(ctx)
	if err != nil {
		return template.Key{}, fmt.Errorf("%w: %w", ErrNoTemplate, err)
	}
	guest, err := m.guestDigest()
	if err != nil {
		return template.Key{}, fmt.Errorf("%w: %w", ErrNoTemplate, err)
	}
	digest := img.SHA256
	if digest == "" {
		digest = fileStamp(img.Path)
	}
	key := template.Key{
		Image: img.Name, Kernel: k.Name, ImageDigest: digest, KernelDigest: kernelDigest(k),
		VCPU: vm.VCPU, MemoryMiB: vm.MemoryMiB, GuestContract: image.GuestContract,
		Driver: vm.Driver, VMMVersion: vv, DiskMiB: m.o.TemplateDiskMiB, Guest: guest,
	}
	if key.DiskMiB <= 0 {
		key.DiskMiB = vm.DiskSizeMiB
	}
	return key, key.Validate()
}

// kernelDigest is a digest of the kernel's files (their sha256s).
func kernelDigest(k *model.Kernel) string {
	if len(k.Files) == 0 {
		return fileStamp(k.Vmlinux) + "," + fileStamp(k.BzImage) + "," + fileStamp(k.Initrd)
	}
	b, _ := json.Marshal(k.Files) // map keys are sorted
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// fileStamp identifies a file without reading it: path, size, mtime.
func fileStamp(p string) string {
	if p == "" {
		return ""
	}
	fi, err := os.Stat(p)
	if err != nil {
		return p
	}
	return fmt.Sprintf("%s:%d:%d", p, fi.Size(), fi.ModTime().UnixNano())
}

// guestDigest digests what the daemon writes into every guest and a
// template keeps: the agent binary, the managed key, kernel arguments, the
// DNS domain.
func (m *Manager) guestDigest() (string, error) {
	h := sha256.New()
	f, err := os.Open(m.o.AgentBinary)
	if err != nil {
		return "", fmt.Errorf("guest agent binary: %w", err)
	}
	defer f.Close()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("guest agent binary: %w", err)
	}
	fmt.Fprintf(h, "\x00%s\x00%s\x00%s\x00%s", m.o.Guests.AuthorizedKey(), BaseKernelArgs, m.o.KernelArgs, m.o.Domain)
	return hex.EncodeToString(h.Sum(nil)[:16]), nil
}

// fileCoW is the strategy that clones a template's files: reflink where
// the VMs' disks use it, else a sparse copy.
func (m *Manager) fileCoW() (disk.CoW, error) {
	if m.o.CoW.Name() == disk.Reflink {
		return m.o.CoW, nil
	}
	return disk.New(disk.Copy, m.o.Ops, m.o.Runner)
}

// makeTemplate implements template.Maker: boot a guest of key into dir,
// wait until it is idle, save it and keep its disks.
func (m *Manager) makeTemplate(ctx context.Context, key template.Key, dir string) (template.Files, error) {
	start := m.o.Now()
	img, err := m.o.Artifacts.EnsureImage(ctx, key.Image)
	if err != nil {
		return template.Files{}, err
	}
	k, err := m.o.Artifacts.EnsureKernel(ctx, key.Kernel)
	if err != nil {
		return template.Files{}, err
	}
	tv := &model.VM{ID: templateVMID(key), Name: templateHostname, Image: key.Image, Kernel: key.Kernel,
		Driver: key.Driver, VCPU: key.VCPU, MemoryMiB: key.MemoryMiB, DiskSizeMiB: key.DiskMiB, MAC: TemplateMAC}
	d, err := m.driver(tv)
	if err != nil {
		return template.Files{}, err
	}
	if got, err := m.templateKey(ctx, tv, img, k, d); err != nil {
		return template.Files{}, err
	} else if got.ID() != key.ID() {
		return template.Files{}, fmt.Errorf("image %s or its kernel changed while its template was being made; try again", key.Image)
	}
	snap, ok := d.(vmm.Snapshotter)
	if !ok {
		return template.Files{}, fmt.Errorf("%w: the %s driver cannot save guests", ErrNoTemplate, d.Name())
	}

	progress.Stage(ctx, "template-disks", "root and work disks of the template")
	token, err := agent.NewToken()
	if err != nil {
		return template.Files{}, err
	}
	if err := atomicfile.Write(filepath.Join(dir, templateTokenFile), []byte(token+"\n"), 0o600); err != nil {
		return template.Files{}, fmt.Errorf("template token: %w", err)
	}
	fc, err := m.fileCoW()
	if err != nil {
		return template.Files{}, err
	}
	rootPath, workPath := filepath.Join(dir, templateRootFile), filepath.Join(dir, templateWorkFile)
	root, err := fc.Create(ctx, img.Path, rootPath, 0)
	if err != nil {
		return template.Files{}, fmt.Errorf("template root disk: %w", err)
	}
	if err := m.createWorkDisk(ctx, tv, img, workPath); err != nil {
		return template.Files{}, fmt.Errorf("template work disk: %w", err)
	}
	signer, pemData, err := hostKey(dir)
	if err != nil {
		return template.Files{}, err
	}
	b := m.guestConfigBatch(tv, guestNetwork{Address: netip.PrefixFrom(templateAddr, 16).String(), MAC: TemplateMAC}, pemData, signer.PublicKey())
	bin, err := os.ReadFile(m.o.AgentBinary)
	if err != nil {
		return template.Files{}, fmt.Errorf("guest agent binary: %w", err)
	}
	image.AgentBatch(b, bin, token)
	if err := ext4.Apply(ctx, m.o.Runner, rootPath, b); err != nil {
		return template.Files{}, fmt.Errorf("template guest configuration: %w", err)
	}

	progress.Stage(ctx, "template-boot", fmt.Sprintf("booting %s (%d vCPU, %s) to save it", key.Image, key.VCPU, model.FormatMiB(key.MemoryMiB)))
	if err := m.o.Network.EnsureBridge(ctx); err != nil {
		return template.Files{}, err
	}
	tap, err := m.o.Network.AcquireTap(ctx, tv.ID)
	if err != nil {
		return template.Files{}, err
	}
	defer func() {
		if err := m.o.Network.ReleaseTap(context.WithoutCancel(ctx), tap); err != nil {
			m.o.Logger.Warn("release template tap", "tap", tap, "err", err)
		}
	}()
	rdir := m.o.Layout.VMRuntimeDir(tv.ID)
	if err := m.runtimeDir(rdir); err != nil {
		return template.Files{}, err
	}
	defer os.RemoveAll(rdir)
	logPath := filepath.Join(dir, templateLogFile)
	if err := m.touchLog(logPath); err != nil {
		return template.Files{}, err
	}
	tv.Runtime = model.Runtime{RuntimeDir: rdir, LogPath: logPath, Tap: tap, WorkDisk: workPath}
	spec := m.spec(tv, k, root)
	h, err := d.Start(ctx, spec)
	if err != nil {
		return template.Files{}, fmt.Errorf("boot the template guest: %w", err)
	}
	defer m.stopTemplateVMM(d, h)

	dial, chName, err := agentDial(tv.Driver, rdir)
	if err != nil {
		return template.Files{}, fmt.Errorf("%w: %w", ErrNoTemplate, err)
	}
	c := agent.NewConn(dial, token, "template "+tv.ID+" "+chName)
	defer c.Close()
	bctx, cancel := context.WithTimeout(ctx, m.o.SSHTimeout)
	defer cancel()
	if err := waitPing(bctx, c, func() bool { return vmm.Alive(h.Identity()) }); err != nil {
		return template.Files{}, vmm.WithLogTail(fmt.Errorf("template guest: %w", err), logPath)
	}
	progress.Stage(ctx, "template-idle", "waiting until the guest has finished booting")
	if err := waitIdle(bctx, c); err != nil {
		return template.Files{}, vmm.WithLogTail(fmt.Errorf("template guest: %w", err), logPath)
	}
	facts, err := checkSSHD(bctx, c, pemData)
	if err != nil {
		return template.Files{}, vmm.WithLogTail(fmt.Errorf("template guest: %w", err), logPath)
	}
	if data, err := json.Marshal(facts); err != nil {
		return template.Files{}, err
	} else if err := atomicfile.Write(filepath.Join(dir, templateSSHDFile), data, 0o644); err != nil {
		return template.Files{}, fmt.Errorf("template sshd facts: %w", err)
	}
	progress.Stage(ctx, "template-warm", "loading the workspace tools into the guest's page cache")
	warmGuest(bctx, c, m.o.Logger)
	// The host end goes away before the save: the guest agent is then
	// waiting for the next host, which is the restored VM's daemon.
	_ = c.Close()

	progress.Stage(ctx, "template-save", "pausing and saving memory and device state")
	if err := snap.Save(ctx, h, filepath.Join(dir, templateStateFile)); err != nil {
		return template.Files{}, err
	}
	m.o.Logger.InfoContext(ctx, "template made", "image", key.Image, "id", key.ID(), "took", m.o.Now().Sub(start).Round(time.Millisecond))
	files := template.Files{State: templateStateFile, RootDisk: templateRootFile, WorkDisk: templateWorkFile}
	if key.Driver == "firecracker" {
		// Firecracker's snapshot is two files: the state and, beside it,
		// the guest memory (the store checks both are there).
		files.Memory = templateStateFile + firecracker.MemFileSuffix
	}
	return files, nil
}

// runtimeDir creates a VMM runtime directory owned by the VMM's user.
func (m *Manager) runtimeDir(rdir string) error {
	if err := os.MkdirAll(rdir, 0o700); err != nil {
		return fmt.Errorf("runtime dir: %w", err)
	}
	if m.o.VMMUID >= 0 && m.o.VMMUID != os.Geteuid() {
		if err := os.Chown(rdir, m.o.VMMUID, m.o.VMMGID); err != nil {
			return fmt.Errorf("runtime dir: %w", err)
		}
	}
	return nil
}

// touchLog creates a console log the VMM's user can append to.
func (m *Manager) touchLog(p string) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("console log: %w", err)
	}
	defer f.Close()
	if m.o.VMMUID >= 0 && m.o.VMMUID != os.Geteuid() {
		_ = f.Chown(m.o.VMMUID, m.o.VMMGID)
	}
	return nil
}

// stopTemplateVMM ends a template's VMM (paused after the save, or failed
// while booting): SIGTERM, then SIGKILL.
func (m *Manager) stopTemplateVMM(d vmm.Driver, h *vmm.Handle) {
	ctx, cancel := context.WithTimeout(context.Background(), m.o.KillWait)
	defer cancel()
	_ = d.Kill(ctx, h, syscall.SIGTERM)
	if d.Wait(ctx, h) == nil {
		return
	}
	kctx, kcancel := context.WithTimeout(context.Background(), m.o.KillWait)
	defer kcancel()
	_ = d.Kill(kctx, h, syscall.SIGKILL)
	_ = d.Wait(kctx, h)
}

// waitPing polls the agent until it answers, ctx ends or alive says the
// VMM is gone.
func waitPing(ctx context.Context, c agent.Client, alive func() bool) error {
	for {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := c.Ping(pctx)
		cancel()
		if err == nil {
			return nil
		}
		if !errors.Is(err, agent.ErrUnavailable) && !errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("guest agent: %w", err)
		}
		if alive != nil && !alive() {
			return errVMMExited
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("guest agent did not answer: %w (last: %v)", ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// applyWhenUp applies id as soon as the agent's channel connects, retrying
// while it cannot be reached (ErrUnavailable) until ctx ends or alive says
// the VMM is gone. A restored guest's agent is running already, so there is
// no ping first: that round trip through a guest that has just resumed,
// every code path still untranslated under TCG, cost 20–40 ms. Identity is
// idempotent, so a retry after a broken channel is safe.
func applyWhenUp(ctx context.Context, c agent.Client, id agent.Identity, alive func() bool) (agent.IdentityResult, error) {
	for {
		res, err := c.ApplyIdentity(ctx, id)
		if err == nil || !errors.Is(err, agent.ErrUnavailable) {
			return res, err
		}
		if alive != nil && !alive() {
			return res, errVMMExited
		}
		select {
		case <-ctx.Done():
			return res, fmt.Errorf("guest agent did not answer: %w (last: %v)", ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// idleScript waits until systemd has finished starting units (in images
// with systemd; others have nothing to wait for) and flushes the page cache
// (not needed for consistency, the saved memory holds it, but the disks
// then carry less that only the template's memory knows).
const idleScript = `if command -v systemctl >/dev/null 2>&1; then systemctl is-system-running --wait >/dev/null 2>&1; fi
command -v sync >/dev/null 2>&1 && sync
exit 0`

// warmScript runs once in a template guest before its save. It runs the
// programs a restored VM's first `vm run` needs (the workspace script's
// sh, mkdir, tar, git plumbing, mv, rm; the login shell the command runs
// in) on a throwaway tree, so their files are in the page cache the
// snapshot keeps. Without it every restored VM reads them through its
// emulated disk again. It also removes warmDir. Failures are ignored: it
// is only a warm-up.
const warmScript = `w=$(mktemp -d /tmp/.banger-warm-XXXXXX) || exit 0
cd "$w" || exit 0
mkdir -m 0755 a && printf 'x\n' > a/f
tar -c -f t a && mkdir b && tar -x -b 256 -B -p -o -f t -C b
git init -q r && cd r && printf 'x\n' > f &&
  git update-index -q --add f && git -c checkout.workers=0 checkout-index -u -f -a &&
  git update-index -q --unmerged --refresh && cp .git/index i &&
  GIT_INDEX_FILE=i git -c core.looseCompression=0 add -A && GIT_INDEX_FILE=i git write-tree >/dev/null
cd / && mv -T -- "$w/b" "$w/c" && find "$w/c" -type d -exec chmod a-w {} + ; chmod -R u+w -- "$w"; rm -rf -- "$w"
rm -rf -- ` + warmDir + `
if command -v bash >/dev/null 2>&1; then bash -lc true; else sh -lc true; fi
exit 0`

// warmDir is where warmGuest installs workspace.WarmStream (warmScript
// removes it).
const warmDir = "/tmp/.banger-warm-workspace"

// warmGuest installs workspace.WarmStream through the agent's builtin
// (its code then is in the page cache too), then runs warmScript; best
// effort, failures logged at debug level.
func warmGuest(ctx context.Context, c agent.Client, log *slog.Logger) {
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if h, err := c.Ping(wctx); err == nil {
		if inst, ok := agentRunner(h, agentRemote{c: c}).(workspace.Installer); ok {
			var errb strings.Builder
			status, err := inst.Install(wctx, workspace.InstallRequest{Dest: warmDir, Replace: true}, bytes.NewReader(workspace.WarmStream()), nil, &errb)
			if err != nil || status != 0 {
				log.DebugContext(ctx, "template warm-up: workspace install failed", "err", err, "exit", status, "stderr", strings.TrimSpace(errb.String()))
			}
		}
	}
	var errb strings.Builder
	res, err := c.Exec(wctx, agent.ExecRequest{Argv: []string{"/bin/sh", "-c", warmScript}, Stderr: &errb})
	if err != nil || res.ExitCode != 0 {
		log.DebugContext(ctx, "template warm-up failed; the template is made anyway", "err", err, "exit", res.ExitCode, "stderr", strings.TrimSpace(errb.String()))
	}
}

// waitIdle waits until the guest has booted: idleScript, then sshd
// listening on port 22 (asked through the agent's port list).
func waitIdle(ctx context.Context, c agent.Client) error {
	var errb strings.Builder
	res, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"/bin/sh", "-c", idleScript}, Stderr: &errb})
	if err != nil {
		return fmt.Errorf("wait until idle: %w", err)
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("wait until idle: exit %d: %s", res.ExitCode, strings.TrimSpace(errb.String()))
	}
	for {
		ports, err := c.Ports(ctx)
		if err != nil {
			return fmt.Errorf("wait for sshd: %w", err)
		}
		for _, p := range ports {
			if p.Port == 22 && strings.HasPrefix(p.Proto, "tcp") {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("sshd does not listen on port 22: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// templateFor is the template step of a create: the template of the VM's
// key, made on first need. Any error means "cold-boot instead".
func (r *startRun) templateFor(ctx context.Context) (*template.Template, error) {
	m, vm := r.m, r.vm
	key, err := m.templateKey(ctx, vm, r.img, r.kernel, r.driver)
	if err != nil {
		return nil, err
	}
	if vm.DiskSizeMiB < key.DiskMiB {
		return nil, fmt.Errorf("%w: its /root disk (%s) is smaller than the template's (%s)", ErrNoTemplate,
			model.FormatMiB(vm.DiskSizeMiB), model.FormatMiB(key.DiskMiB))
	}
	if vm.DiskSizeMiB > key.DiskMiB {
		if _, ok := r.driver.(vmm.DriveResizer); !ok {
			return nil, fmt.Errorf("%w: the %s driver cannot grow a restored disk", ErrNoTemplate, r.driver.Name())
		}
	}
	if _, err := m.tmpl.Store().Get(key); err != nil {
		progress.Stage(ctx, StepTemplate, "making the template of image "+key.Image+" (first use; later VMs start from it)")
	}
	t, made, err := m.tmpl.Ensure(ctx, key)
	if err != nil {
		return nil, err
	}
	if made {
		m.o.Logger.InfoContext(ctx, "template made", "image", key.Image, "id", t.ID, "size", t.SizeBytes, "took", t.MakeTime)
	}
	progress.Stage(ctx, StepTemplate, "restoring from template "+t.ID[:12])
	return &t, nil
}

// template is the template step: pick the template or fall back to a cold
// boot with a warning. It never fails the create.
func (r *startRun) template(ctx context.Context, _ *undoStack) error {
	t, err := r.templateFor(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !errors.Is(err, ErrNoTemplate) {
			r.warn(ctx, fmt.Sprintf("no template (%v); booting from scratch", err))
		} else {
			r.m.o.Logger.DebugContext(ctx, "cold boot", "vm", r.vm.Name, "reason", err)
		}
		return nil
	}
	token, err := os.ReadFile(t.Path(templateTokenFile))
	if err == nil {
		r.tmplToken, err = agent.ParseToken(token)
	}
	if err != nil {
		r.warn(ctx, fmt.Sprintf("template %s has no usable agent token (%v); discarding it and booting from scratch", t.ID[:12], err))
		_ = r.m.tmpl.Discard(*t)
		return nil
	}
	r.tmpl = t
	r.vm.Runtime.Template = t.ID
	return r.m.save(ctx, r.vm)
}

// warn reports a warning as a progress stage (the CLI prints it) and logs
// it.
func (r *startRun) warn(ctx context.Context, msg string) {
	progress.Stage(ctx, "warning", msg)
	r.m.o.Logger.WarnContext(ctx, msg, "vm", r.vm.Name)
}

// restoring reports whether this start restores a template.
func (r *startRun) restoring() bool { return r.tmpl != nil }

// rootBase is the file the root disk is a CoW view of.
func (r *startRun) rootBase() string {
	if r.restoring() {
		return r.tmpl.Path(r.tmpl.Files.RootDisk)
	}
	return r.img.Path
}

// cloneWorkDisk makes the VM's work disk a clone of the template's.
func (r *startRun) cloneWorkDisk(ctx context.Context, path string) error {
	fc, err := r.m.fileCoW()
	if err != nil {
		return err
	}
	tmp := path + ".new"
	_ = os.Remove(tmp)
	if _, err := fc.Create(ctx, r.tmpl.Path(r.tmpl.Files.WorkDisk), tmp, 0); err != nil {
		return fmt.Errorf("work disk from template: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("work disk from template: %w", err)
	}
	return nil
}

// identity is the restore path's identity step: over the template's agent
// token, the restored guest takes this VM's identity (and token); then a
// larger work disk is grown.
func (r *startRun) identity(ctx context.Context, _ *undoStack) error {
	m, vm := r.m, r.vm
	dial, chName, err := agentDial(vm.Driver, vm.Runtime.RuntimeDir)
	if err != nil {
		return err
	}
	signer, pemData, err := hostKey(m.o.Layout.VMDir(vm.ID))
	if err != nil {
		return err
	}
	token, err := agentToken(m.o.Layout.VMDir(vm.ID))
	if err != nil {
		return err
	}
	n, err := m.guestNetwork(vm)
	if err != nil {
		return err
	}
	entropy := make([]byte, 64)
	if _, err := rand.Read(entropy); err != nil {
		return fmt.Errorf("entropy: %w", err)
	}
	id := agent.Identity{
		Token: token, Time: m.o.Now(), Entropy: entropy, MachineID: MachineID(vm.ID),
		Hostname: vm.Name, Domain: m.o.Domain, MAC: vm.MAC, Address: n.Address, Gateway: n.Gateway,
		DNS: strings.Split(n.DNS, ","), HostKey: pemData,
		SSHDKeysPerConnection: readSSHDFacts(r.tmpl).KeysPerConnection,
	}
	c := agent.NewConn(dial, r.tmplToken, "restored "+vm.Name+" "+chName)
	ictx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	t0 := m.o.Now()
	res, err := applyWhenUp(ictx, c, id, func() bool { return vmm.Alive(r.handle.Identity()) })
	_ = c.Close()
	if err != nil {
		return vmm.WithLogTail(fmt.Errorf("apply identity: %w", err), vm.Runtime.LogPath)
	}
	if want := ssh.FingerprintSHA256(signer.PublicKey()); res.MachineID != id.MachineID || res.Hostname != vm.Name || res.HostKeyFingerprint != want {
		return fmt.Errorf("apply identity: the guest reports machine-id %q, hostname %q, host key %s; want %q, %q, %s",
			res.MachineID, res.Hostname, res.HostKeyFingerprint, id.MachineID, vm.Name, want)
	}
	m.o.Logger.DebugContext(ctx, "identity applied", "vm", vm.Name, "iface", res.Interface, "sshd", res.SSHD, "clock_step", res.ClockStep,
		"entropy_bits", res.EntropyBits, "phases_ms", res.PhasesMS, "took", m.o.Now().Sub(t0))
	if vm.DiskSizeMiB > r.tmpl.Key.DiskMiB {
		return r.growWorkDisk(ictx)
	}
	return nil
}

// growWorkDisk grows the restored work disk to the VM's size: the VMM grows
// the file and tells the guest, then resize2fs grows the mounted /root.
func (r *startRun) growWorkDisk(ctx context.Context) error {
	m, vm := r.m, r.vm
	rs, ok := r.driver.(vmm.DriveResizer)
	if !ok {
		return fmt.Errorf("grow /root: the %s driver cannot resize a drive", r.driver.Name())
	}
	size := vm.DiskSizeMiB << 20
	if err := rs.ResizeDrive(ctx, r.handle, 1, size); err != nil {
		return fmt.Errorf("grow /root: %w", err)
	}
	c, err := m.newAgentClient(vm)
	if err != nil {
		return err
	}
	defer c.Close()
	script := fmt.Sprintf(`i=0; while [ "$(cat /sys/block/vdb/size)" -lt %d ] && [ $i -lt 200 ]; do i=$((i+1)); sleep 0.05; done
exec resize2fs /dev/vdb`, size/512)
	var out strings.Builder
	res, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"/bin/sh", "-c", script}, Stdout: &out, Stderr: &out})
	if err != nil {
		return fmt.Errorf("grow /root: %w", err)
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("grow /root: resize2fs exit %d: %s", res.ExitCode, strings.TrimSpace(out.String()))
	}
	return nil
}

// restoreSteps are the steps whose failure means the template did not
// restore (the create then cold-boots).
var restoreSteps = []string{StepVMM, StepIdentity, StepSSH}

// restoreFailed reports whether err is a failure of a restore step.
func restoreFailed(err error) bool {
	var se *StepError
	return errors.As(err, &se) && slices.Contains(restoreSteps, se.Step)
}

// Templates is the VM manager's template manager (nil when templates are
// disabled).
func (m *Manager) Templates() *template.Manager { return m.tmpl }

// WarmTemplate makes (or finds) the template a VM like vm would restore
// from. made reports whether it was made now.
func (m *Manager) WarmTemplate(ctx context.Context, vm *model.VM) (template.Template, bool, error) {
	if m.tmpl == nil {
		return template.Template{}, false, fmt.Errorf("%w: templates are disabled in this daemon", ErrNoTemplate)
	}
	key, err := m.TemplateKey(ctx, vm)
	if err != nil {
		return template.Template{}, false, err
	}
	return m.tmpl.Ensure(ctx, key)
}

// reconcileTemplates ends what a daemon that died while making a template
// left behind: the template guest's VMM (found by evidence in its runtime
// dir, never by name), that runtime dir and the half-made template
// directory. Its tap is then reclaimed with the other stale taps. Called by
// Reconcile, before any template can be in the making.
func (m *Manager) reconcileTemplates(ctx context.Context) error {
	var errs []error
	base := filepath.Join(m.o.Layout.RuntimeDir, "vms")
	ents, err := os.ReadDir(base)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	for _, e := range ents {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), "tmpl-") {
			continue
		}
		rdir := filepath.Join(base, e.Name())
		for name, d := range m.o.Drivers {
			tv := &model.VM{ID: e.Name(), Name: templateHostname, Driver: name, Runtime: model.Runtime{RuntimeDir: rdir}}
			h, err := d.Find(ctx, m.spec(tv, nil, nil))
			if err != nil {
				continue
			}
			m.o.Logger.WarnContext(ctx, "killing the VMM of an unfinished template", "pid", h.PID, "dir", rdir)
			m.stopTemplateVMM(d, h)
		}
		if err := os.RemoveAll(rdir); err != nil {
			errs = append(errs, err)
		}
	}
	if m.tmpl != nil {
		if n, err := m.tmpl.Store().RemoveStaging(); err != nil {
			errs = append(errs, err)
		} else if n > 0 {
			m.o.Logger.InfoContext(ctx, "removed unfinished templates", "count", n)
		}
	}
	return errors.Join(errs...)
}
