package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/bangerdev/banger/internal/hostexec"
)

// Guest is the System of a real Linux guest. Root and ProcRoot let tests
// point it at a scratch tree; the kernel-facing steps (clock, RNG,
// sethostname, sshd reload) run only when Kernel is true.
type Guest struct {
	Root     string // filesystem root, "/" in the guest
	ProcRoot string // "/proc"
	Runner   hostexec.Runner
	Version  string // agent build version for Health
	Kernel   bool   // apply clock, RNG, hostname and sshd reload to the running kernel

	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

var _ System = (*Guest)(nil)

func (g *Guest) path(p string) string { return filepath.Join(g.Root, p) }

func (g *Guest) now() time.Time {
	if g.Now != nil {
		return g.Now()
	}
	return time.Now()
}

func (g *Guest) read(p string) string {
	b, _ := os.ReadFile(filepath.Join(g.ProcRoot, p))
	return strings.TrimSpace(string(b))
}

// Health implements System.
func (g *Guest) Health(ctx context.Context) (Health, error) {
	h := Health{Agent: g.Version, Time: g.now().UTC(), BootID: g.read("sys/kernel/random/boot_id")}
	h.Hostname = g.read("sys/kernel/hostname")
	if f := strings.Fields(g.read("uptime")); len(f) > 0 {
		h.Uptime, _ = strconv.ParseFloat(f[0], 64)
	}
	return h, nil
}

// Ports implements System.
func (g *Guest) Ports(ctx context.Context) ([]Port, error) { return ListPorts(g.ProcRoot) }

// ApplyIdentity implements System (see Identity for the order; the token
// file is written last, the server switches to it after success).
func (g *Guest) ApplyIdentity(ctx context.Context, id Identity) (IdentityResult, error) {
	res := IdentityResult{PhasesMS: map[string]int64{}}
	t0 := time.Now()
	phase := func(name string) {
		now := time.Now()
		res.PhasesMS[name] += now.Sub(t0).Milliseconds()
		t0 = now
	}
	if !id.Time.IsZero() && g.Kernel {
		step := id.Time.Sub(g.now())
		if step > time.Millisecond || step < -time.Millisecond {
			tv := unix.NsecToTimeval(id.Time.UnixNano())
			if err := unix.Settimeofday(&tv); err != nil {
				return res, fmt.Errorf("set clock: %w", err)
			}
			res.ClockStep = step.Seconds()
		}
		phase("clock")
	}
	if len(id.Entropy) > 0 && g.Kernel {
		bits, err := addEntropy(id.Entropy)
		if err != nil {
			return res, fmt.Errorf("reseed rng: %w", err)
		}
		res.EntropyBits = bits
		phase("rng")
	}
	if id.MachineID != "" {
		if err := g.writeFile("/etc/machine-id", []byte(id.MachineID+"\n"), 0o444); err != nil {
			return res, err
		}
	}
	if id.Hostname != "" {
		if err := g.applyHostname(id); err != nil {
			return res, err
		}
	}
	phase("files")
	if id.Address != "" {
		iface, err := g.applyNetwork(ctx, id)
		if err != nil {
			return res, err
		}
		res.Interface = iface
		phase("network")
	}
	if len(id.HostKey) > 0 {
		fp, how, err := g.applyHostKey(ctx, id)
		if err != nil {
			return res, err
		}
		res.HostKeyFingerprint, res.SSHD = fp, how
		phase("hostkey")
	}
	if id.Token != "" {
		if err := os.MkdirAll(g.path("/etc/banger"), 0o755); err != nil {
			return res, fmt.Errorf("token: %w", err)
		}
		if err := g.writeFile(TokenPath, []byte(id.Token+"\n"), 0o600); err != nil {
			return res, err
		}
	}
	// No sync: the guest's next journal commit (or the fast stop's halt)
	// makes these files durable, and a VM killed before that cold-boots
	// with its configuration written again. A syncfs here made the VMM
	// flush the whole root disk file, which a restore has just cloned and
	// the host has not written back yet.
	phase("files")
	res.MachineID = strings.TrimSpace(string(must(os.ReadFile(g.path("/etc/machine-id")))))
	if g.Kernel {
		res.Hostname = g.read("sys/kernel/hostname")
	} else {
		res.Hostname = strings.TrimSpace(string(must(os.ReadFile(g.path("/etc/hostname")))))
	}
	return res, nil
}

func must(b []byte, _ error) []byte { return b }

// writeFile replaces a file atomically (temp file in the same directory,
// rename). It does not fsync (see ApplyIdentity).
func (g *Guest) writeFile(p string, data []byte, mode os.FileMode) error {
	full := g.path(p)
	tmp, err := os.CreateTemp(filepath.Dir(full), "."+filepath.Base(full)+".banger-")
	if err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(mode)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), full)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	return nil
}

// addEntropy mixes b into the kernel pool crediting 8 bits a byte
// (RNDADDENTROPY), then forces the CRNG to reseed from it (RNDRESEEDCRNG),
// so two VMs restored from one snapshot diverge immediately.
func addEntropy(b []byte) (int, error) {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	buf := make([]byte, 8+len(b)+3)
	bits := len(b) * 8
	*(*int32)(unsafe.Pointer(&buf[0])) = int32(bits)
	*(*int32)(unsafe.Pointer(&buf[4])) = int32(len(b))
	copy(buf[8:], b)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&buf[0]))); e != 0 {
		return 0, fmt.Errorf("RNDADDENTROPY: %w", e)
	}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDRESEEDCRNG, 0); e != 0 && e != unix.EINVAL && e != unix.ENOTTY {
		// Kernels before 4.17 have no RNDRESEEDCRNG; the credited entropy
		// still reseeds them at the next interval.
		return bits, fmt.Errorf("RNDRESEEDCRNG: %w", e)
	}
	return bits, nil
}

func (g *Guest) applyHostname(id Identity) error {
	if err := g.writeFile("/etc/hostname", []byte(id.Hostname+"\n"), 0o644); err != nil {
		return err
	}
	fqdn := id.Hostname
	if id.Domain != "" {
		fqdn = id.Hostname + "." + id.Domain + " " + id.Hostname
	}
	hosts := fmt.Sprintf("127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n", fqdn)
	if err := g.writeFile("/etc/hosts", []byte(hosts), 0o644); err != nil {
		return err
	}
	if g.Kernel {
		if err := unix.Sethostname([]byte(id.Hostname)); err != nil {
			return fmt.Errorf("sethostname: %w", err)
		}
	}
	return nil
}

// NetworkScript is the guest contract's network step (internal/image).
const NetworkScript = "/usr/lib/banger/banger-network"

// applyNetwork rewrites network.env and applies it to the running kernel.
// When no interface has id.MAC (a snapshot restored with the template's
// NIC) and there is exactly one candidate, its MAC is set to id.MAC first.
//
// The running kernel is configured over netlink from the agent itself
// (setNetwork): the guest contract's network script does the same with a
// shell and half a dozen `ip` runs, which cost about a second on a guest
// just restored under emulation (every new process's code is translated
// again). The script stays the fallback, and the boot path.
func (g *Guest) applyNetwork(ctx context.Context, id Identity) (string, error) {
	var env strings.Builder
	for _, kv := range [][2]string{{"ADDRESS", id.Address}, {"GATEWAY", id.Gateway}, {"DNS", strings.Join(id.DNS, ",")}, {"MAC", id.MAC}} {
		if kv[1] != "" {
			fmt.Fprintf(&env, "%s=%s\n", kv[0], kv[1])
		}
	}
	if err := os.MkdirAll(g.path("/etc/banger"), 0o755); err != nil {
		return "", fmt.Errorf("network: %w", err)
	}
	if err := g.writeFile("/etc/banger/network.env", []byte(env.String()), 0o644); err != nil {
		return "", err
	}
	if !g.Kernel {
		return "", nil
	}
	iface, err := g.setNetwork(id)
	if err == nil {
		return iface, nil
	}
	// The script sets the address from network.env; it needs the MAC in
	// place to find the interface.
	iface, merr := g.ensureMAC(ctx, id.MAC)
	if merr != nil {
		return "", errors.Join(err, merr)
	}
	if _, serr := g.Runner.Run(ctx, hostexec.Cmd{Name: NetworkScript}); serr != nil {
		return iface, fmt.Errorf("network: %w (netlink: %v)", serr, err)
	}
	return iface, nil
}

// errNoInterface: no interface to configure (yet).
var errNoInterface = errors.New("no network interface to configure")

// setNetwork applies id's MAC, address, default route and DNS to the
// running kernel over netlink, like the network script: lo up, the
// interface found by MAC (else the only non-loopback one, whose MAC is
// then changed), its addresses replaced, the default route replaced,
// /etc/resolv.conf written.
func (g *Guest) setNetwork(id Identity) (string, error) {
	addr, err := netlink.ParseAddr(id.Address)
	if err != nil {
		return "", fmt.Errorf("network: address %q: %w", id.Address, err)
	}
	var gw net.IP
	if id.Gateway != "" {
		if gw = net.ParseIP(id.Gateway); gw == nil {
			return "", fmt.Errorf("network: gateway %q is not an IP address", id.Gateway)
		}
	}
	links, err := netlink.LinkList()
	if err != nil {
		return "", fmt.Errorf("network: list links: %w", err)
	}
	var want net.HardwareAddr
	if id.MAC != "" {
		if want, err = net.ParseMAC(id.MAC); err != nil {
			return "", fmt.Errorf("network: %w", err)
		}
	}
	var link netlink.Link
	var cands []netlink.Link
	for _, l := range links {
		a := l.Attrs()
		if a.Flags&net.FlagLoopback != 0 {
			if err := netlink.LinkSetUp(l); err != nil {
				return "", fmt.Errorf("network: lo up: %w", err)
			}
			continue
		}
		if len(a.HardwareAddr) != 6 {
			continue
		}
		if want != nil && bytes.Equal(a.HardwareAddr, want) {
			link = l
		}
		cands = append(cands, l)
	}
	if link == nil {
		if len(cands) != 1 {
			return "", fmt.Errorf("network: %w: none has MAC %q and there are %d others to choose from", errNoInterface, id.MAC, len(cands))
		}
		link = cands[0]
		if want != nil {
			// virtio-net changes its MAC while up (live address change);
			// other drivers want the link down first.
			if err := netlink.LinkSetHardwareAddr(link, want); err != nil {
				if derr := netlink.LinkSetDown(link); derr != nil {
					return "", fmt.Errorf("network: set MAC of %s: %w", link.Attrs().Name, err)
				}
				if err := netlink.LinkSetHardwareAddr(link, want); err != nil {
					return "", fmt.Errorf("network: set MAC of %s: %w", link.Attrs().Name, err)
				}
			}
		}
	}
	name := link.Attrs().Name
	if err := netlink.LinkSetUp(link); err != nil {
		return name, fmt.Errorf("network: %s up: %w", name, err)
	}
	old, err := netlink.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return name, fmt.Errorf("network: addresses of %s: %w", name, err)
	}
	for _, a := range old {
		if a.IP.IsLinkLocalUnicast() && a.IP.To4() == nil {
			continue // the kernel's own IPv6 link-local address (flush keeps it too)
		}
		if err := netlink.AddrDel(link, &a); err != nil {
			return name, fmt.Errorf("network: remove %s from %s: %w", a.IPNet, name, err)
		}
	}
	if err := netlink.AddrAdd(link, addr); err != nil {
		return name, fmt.Errorf("network: add %s to %s: %w", addr.IPNet, name, err)
	}
	if gw != nil {
		if err := netlink.RouteReplace(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw}); err != nil {
			return name, fmt.Errorf("network: default route via %s: %w", gw, err)
		}
	}
	if len(id.DNS) > 0 {
		var rc strings.Builder
		for _, s := range id.DNS {
			if s = strings.TrimSpace(s); s != "" {
				fmt.Fprintf(&rc, "nameserver %s\n", s)
			}
		}
		p := g.path("/etc/resolv.conf")
		if fi, err := os.Lstat(p); err == nil && fi.Mode()&os.ModeSymlink != 0 {
			_ = os.Remove(p)
		}
		if err := g.writeFile("/etc/resolv.conf", []byte(rc.String()), 0o644); err != nil {
			return name, err
		}
	}
	return name, nil
}

func (g *Guest) ensureMAC(ctx context.Context, mac string) (string, error) {
	if mac == "" {
		return "", nil
	}
	want, err := net.ParseMAC(mac)
	if err != nil {
		return "", fmt.Errorf("network: %w", err)
	}
	ifs, err := net.Interfaces()
	if err != nil {
		return "", fmt.Errorf("network: %w", err)
	}
	var cands []net.Interface
	for _, i := range ifs {
		if i.Flags&net.FlagLoopback != 0 || len(i.HardwareAddr) != 6 {
			continue
		}
		if bytes.Equal(i.HardwareAddr, want) {
			return i.Name, nil
		}
		cands = append(cands, i)
	}
	if len(cands) != 1 {
		return "", fmt.Errorf("network: no interface has MAC %s and there are %d others to choose from", mac, len(cands))
	}
	name := cands[0].Name
	for _, args := range [][]string{{"link", "set", "dev", name, "down"}, {"link", "set", "dev", name, "address", want.String()}, {"link", "set", "dev", name, "up"}} {
		if _, err := g.Runner.Run(ctx, hostexec.Cmd{Name: g.ipTool(), Args: args}); err != nil {
			return "", fmt.Errorf("network: set MAC of %s: %w", name, err)
		}
	}
	return name, nil
}

func (g *Guest) ipTool() string {
	for _, p := range []string{"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"} {
		if _, err := os.Stat(g.path(p)); err == nil {
			return p
		}
	}
	return "ip"
}

// applyHostKey installs the VM's ssh host key and makes sure the running
// sshd serves it, so the host's first pinned connection cannot meet the
// old one: a handshake on 127.0.0.1:22 shows whether a new connection
// already gets it, else the listener is told to reload (SIGHUP: it
// re-executes itself and reads its keys again; existing sessions are
// untouched) and the agent waits until it does. With
// id.SSHDKeysPerConnection (this sshd was checked when its snapshot was
// made) the files are written and nothing is checked. how says which.
func (g *Guest) applyHostKey(ctx context.Context, id Identity) (fp, how string, err error) {
	signer, err := ssh.ParsePrivateKey(id.HostKey)
	if err != nil {
		return "", "", fmt.Errorf("host key: %w", err)
	}
	name := id.Hostname
	if name == "" {
		name = "banger"
	}
	pub := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey()))) + " root@" + name + "\n"
	if err := os.MkdirAll(g.path("/etc/ssh"), 0o755); err != nil {
		return "", "", fmt.Errorf("host key: %w", err)
	}
	if err := g.writeFile("/etc/ssh/ssh_host_ed25519_key", id.HostKey, 0o600); err != nil {
		return "", "", err
	}
	if err := g.writeFile("/etc/ssh/ssh_host_ed25519_key.pub", []byte(pub), 0o644); err != nil {
		return "", "", err
	}
	fp = ssh.FingerprintSHA256(signer.PublicKey())
	if !g.Kernel {
		return fp, SSHDNotRunning, nil
	}
	pid := g.sshdListener()
	if pid == 0 {
		return fp, SSHDNotRunning, nil // no sshd running (yet): it reads the new key when it starts
	}
	if id.SSHDKeysPerConnection {
		// Checked on this very sshd when its snapshot was made; the
		// handshake would cost half a second or more of emulated guest
		// work (a re-executed sshd loading OpenSSL) on every restore.
		return fp, SSHDTrusted, nil
	}

	// OpenSSH before 9.8 re-executes itself for every connection and
	// reads its host keys again: a new connection may already get the new
	// key, which saves the listener's re-exec (a second under emulation).
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	match, _ := probeHostKey(pctx, "127.0.0.1:22", signer.PublicKey())
	cancel()
	if match {
		return fp, SSHDPerConnection, nil
	}
	if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
		return fp, "", fmt.Errorf("reload sshd (pid %d): %w", pid, err)
	}
	if err := waitHostKey(ctx, "127.0.0.1:22", signer.PublicKey(), 10*time.Second); err != nil {
		return fp, "", fmt.Errorf("reload sshd: %w", err)
	}
	return fp, SSHDReloaded, nil
}

// sshdListener finds the sshd that listens (comm sshd, parent not sshd).
func (g *Guest) sshdListener() int {
	ents, _ := os.ReadDir(g.ProcRoot)
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if g.read(e.Name()+"/comm") != "sshd" {
			continue
		}
		stat := g.read(e.Name() + "/stat")
		i := strings.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(stat[i+1:])
		if len(f) < 2 {
			continue
		}
		if g.read(f[1]+"/comm") == "sshd" {
			continue
		}
		return pid
	}
	return 0
}

// errWrongKey ends a probe handshake once the host key is known.
var errWrongKey = errors.New("host key differs")

// probeHostKey makes one ssh handshake with addr, up to the host key, and
// reports whether the server presented want.
func probeHostKey(ctx context.Context, addr string, want ssh.PublicKey) (bool, error) {
	wantBytes := want.Marshal()
	match := false
	cfg := &ssh.ClientConfig{
		User:              "banger-agent-probe",
		HostKeyAlgorithms: []string{want.Type()},
		HostKeyCallback: func(_ string, _ net.Addr, key ssh.PublicKey) error {
			if bytes.Equal(key.Marshal(), wantBytes) {
				match = true
				return errors.New("probe done")
			}
			return errWrongKey
		},
		Timeout: 2 * time.Second,
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return false, err
	}
	defer conn.Close()
	deadline := time.Now().Add(2 * time.Second)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	_ = conn.SetDeadline(deadline)
	_, _, _, err = ssh.NewClientConn(conn, addr, cfg)
	return match, err
}

// waitHostKey polls addr until its ssh server presents want.
func waitHostKey(ctx context.Context, addr string, want ssh.PublicKey, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var last error
	for {
		match, err := probeHostKey(ctx, addr, want)
		if match {
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("sshd does not serve the new host key: %v", last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// haltWait bounds Halt's wait for the emergency remount, and haltResetDelay
// is how long the reset waits for the answer to reach the host.
const (
	haltWait       = 2 * time.Second
	haltResetDelay = 200 * time.Millisecond
)

// Halt implements System: sync, an emergency remount of every filesystem
// read-only (sysrq u, which writes out the journals: the disks are clean),
// a wait until no block-device filesystem is mounted read-write, sync, and
// a reset (sysrq b, as the shutdown hook does) haltResetDelay after it
// returns. On error nothing is reset: the host falls back to a poweroff.
func (g *Guest) Halt(ctx context.Context) error {
	if !g.Kernel {
		return errors.New("halt: this agent does not act on the running kernel")
	}
	trigger := filepath.Join(g.ProcRoot, "sysrq-trigger")
	unix.Sync()
	if err := os.WriteFile(trigger, []byte("u"), 0); err != nil {
		return fmt.Errorf("halt: remount read-only: %w", err)
	}
	deadline := time.Now().Add(haltWait)
	for {
		rw, err := writableBlockMounts(filepath.Join(g.ProcRoot, "mounts"))
		if err != nil {
			return fmt.Errorf("halt: %w", err)
		}
		if len(rw) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("halt: still mounted read-write after %s: %s", haltWait, strings.Join(rw, ", "))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("halt: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	unix.Sync()
	time.AfterFunc(haltResetDelay, func() { _ = os.WriteFile(trigger, []byte("b"), 0) })
	return nil
}

// writableBlockMounts lists the mount points of block-device filesystems
// mounted read-write, from a /proc/mounts file.
func writableBlockMounts(mounts string) ([]string, error) {
	data, err := os.ReadFile(mounts)
	if err != nil {
		return nil, err
	}
	return parseWritableBlockMounts(string(data)), nil
}

func parseWritableBlockMounts(data string) []string {
	var rw []string
	for _, line := range strings.Split(data, "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasPrefix(f[0], "/dev/") {
			continue
		}
		for _, o := range strings.Split(f[3], ",") {
			if o == "rw" {
				rw = append(rw, f[1])
				break
			}
		}
	}
	return rw
}
