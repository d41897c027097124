package vm

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/bangerdev/banger/internal/atomicfile"
	"github.com/bangerdev/banger/internal/ext4"
	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/image"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/netw"
)

// Files in a VM's directory (paths.Layout.VMDir).
const (
	rootDiskFile = "root.ext4" // copy / reflink root disk
	rootCOWFile  = "root.cow"  // dm: the snapshot's exception store
	workDiskFile = "work.ext4" // /root
	hostKeyFile  = "ssh_host_ed25519_key"
	consoleFile  = "console.log"
)

// maxConsoleLog is the size above which the console log is truncated when
// the VM starts.
const maxConsoleLog = 16 << 20

// hostKey returns the VM's ssh host key, generating it on first use in dir
// (0600). The daemon injects it into the guest and pins it, so the first ssh
// connection is already verified.
func hostKey(dir string) (ssh.Signer, []byte, error) {
	p := filepath.Join(dir, hostKeyFile)
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		var gerr error
		if data, gerr = newHostKeyPEM(); gerr != nil {
			return nil, nil, gerr
		}
		if werr := atomicfile.Write(p, data, 0o600); werr != nil {
			return nil, nil, fmt.Errorf("write host key: %w", werr)
		}
		err = nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read host key: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(data)
	if err != nil {
		return nil, nil, fmt.Errorf("parse host key %s: %w (delete it; a new one is made at the next start)", p, err)
	}
	return signer, data, nil
}

// guestNetwork is the network configuration written into a guest.
type guestNetwork struct {
	Address string // "172.30.0.5/24"
	Gateway string
	DNS     string // comma separated
	MAC     string
}

func (m *Manager) guestNetwork(vm *model.VM) (guestNetwork, error) {
	gw, _, _, bits, err := netw.Plan(m.o.Network.Config().CIDR)
	if err != nil {
		return guestNetwork{}, err
	}
	ip, err := netip.ParseAddr(vm.IP)
	if err != nil {
		return guestNetwork{}, fmt.Errorf("VM %s has no valid address (%q)", vm.Name, vm.IP)
	}
	dns := m.o.DNSServers
	if len(dns) == 0 {
		dns = []string{gw.String()}
	}
	return guestNetwork{
		Address: netip.PrefixFrom(ip, bits).String(),
		Gateway: gw.String(),
		DNS:     strings.Join(dns, ","),
		MAC:     vm.MAC,
	}, nil
}

// hostsFile is the guest's /etc/hosts.
func hostsFile(name, domain string) []byte {
	return []byte(fmt.Sprintf("127.0.0.1\tlocalhost\n127.0.1.1\t%s.%s %s\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n", name, domain, name))
}

// MachineID is the VM's /etc/machine-id: 32 hex digits derived from its
// id, so it is unique per VM and the same on every boot of that VM.
func MachineID(vmID string) string {
	sum := sha256.Sum256([]byte("banger machine-id\x00" + vmID))
	return hex.EncodeToString(sum[:16])
}

// guestConfigBatch is the per-VM configuration written into the root disk
// before every boot (see the guest contract in internal/image/guest.go).
func (m *Manager) guestConfigBatch(vm *model.VM, n guestNetwork, hostKeyPEM []byte, hostPub ssh.PublicKey) *ext4.Batch {
	b := &ext4.Batch{}
	b.WriteFile("/etc/hostname", []byte(vm.Name+"\n"), 0o644, 0, 0)
	// Every VM has its own machine id (stable across its restarts);
	// D-Bus's copy follows it, so no VM inherits the image's.
	b.WriteFile("/etc/machine-id", []byte(MachineID(vm.ID)+"\n"), 0o444, 0, 0)
	b.Mkdir("/var/lib/dbus", 0o755, 0, 0)
	b.Symlink("/var/lib/dbus/machine-id", "/etc/machine-id")
	b.WriteFile("/etc/hosts", hostsFile(vm.Name, m.o.Domain), 0o644, 0, 0)
	b.Mkdir("/etc/banger", 0o755, 0, 0)
	b.WriteFile(image.GuestNetworkEnv, image.NetworkEnv(n.Address, n.Gateway, n.DNS, n.MAC), 0o644, 0, 0)
	b.Mkdir("/etc/ssh", 0o755, 0, 0)
	b.WriteFile(image.GuestHostKey, hostKeyPEM, 0o600, 0, 0)
	pub := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(hostPub))) + " root@" + vm.Name + "\n"
	b.WriteFile(image.GuestHostKey+".pub", []byte(pub), 0o644, 0, 0)
	b.WriteFile(image.GuestAuthorizedKeys, []byte(m.o.Guests.AuthorizedKey()+"\n"), 0o644, 0, 0)
	// The boot path (work disk without udev, ssh's ordering, masks): images
	// built before it get it here, every image gets the current one.
	image.BootBatch(b)
	return b
}

// createWorkDisk makes the VM's /root disk at path: a sparse ext4 of
// sizeBytes (lazy init, root directory 0:0) seeded from the image's work
// seed, with the managed key in .ssh/authorized_keys and the host user's
// git identity in .gitconfig. Nothing is mounted. The disk is built as
// path+".new" and renamed into place only when complete.
func (m *Manager) createWorkDisk(ctx context.Context, vm *model.VM, img *model.Image, path string) error {
	scratch, err := os.MkdirTemp(filepath.Dir(path), ".work-seed-")
	if err != nil {
		return fmt.Errorf("work disk: %w", err)
	}
	defer os.RemoveAll(scratch)
	seed := filepath.Join(scratch, filepath.Base(image.GuestWorkSeed))
	if err := ext4.Extract(ctx, m.o.Runner, img.Path, image.GuestWorkSeed, scratch); err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("work disk: seed from image %s: %w", img.Name, err)
		}
		m.o.Logger.InfoContext(ctx, "image has no work seed; /root starts empty", "image", img.Name)
		if err := os.Mkdir(seed, 0o700); err != nil {
			return fmt.Errorf("work disk: %w", err)
		}
	}
	if err := os.Chmod(seed, 0o700); err != nil {
		return fmt.Errorf("work disk: %w", err)
	}
	added := []string{"/.ssh", "/.ssh/authorized_keys"}
	if err := os.MkdirAll(filepath.Join(seed, ".ssh"), 0o700); err != nil {
		return fmt.Errorf("work disk: %w", err)
	}
	if err := os.WriteFile(filepath.Join(seed, ".ssh", "authorized_keys"), []byte(m.o.Guests.AuthorizedKey()+"\n"), 0o600); err != nil {
		return fmt.Errorf("work disk: %w", err)
	}
	if name, email := m.o.GitIdentity(ctx); name != "" || email != "" {
		if err := os.WriteFile(filepath.Join(seed, ".gitconfig"), gitConfig(name, email), 0o644); err != nil {
			return fmt.Errorf("work disk: %w", err)
		}
		added = append(added, "/.gitconfig")
	}
	tmp := path + ".new"
	_ = os.Remove(tmp)
	if err := ext4.Build(ctx, m.o.Runner, ext4.BuildOptions{
		SourceDir: seed, Out: tmp, SizeBytes: vm.DiskSizeMiB << 20, Label: "work", RootOwner: "0:0",
	}); err != nil {
		return fmt.Errorf("work disk: %w", err)
	}
	// Without root, the files copied in belong to the daemon's user: give
	// them to root, whose home this is.
	if os.Geteuid() != 0 {
		b := &ext4.Batch{}
		_ = filepath.WalkDir(seed, func(p string, d fs.DirEntry, err error) error {
			if err != nil || p == seed {
				return nil
			}
			rel, _ := filepath.Rel(seed, p)
			if ext4.CheckPath("/"+filepath.ToSlash(rel)) == nil {
				b.Chown("/"+filepath.ToSlash(rel), 0, 0)
			}
			return nil
		})
		if err := ext4.Apply(ctx, m.o.Runner, tmp, b); err != nil {
			_ = os.Remove(tmp)
			return fmt.Errorf("work disk: set owners: %w", err)
		}
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("work disk: %w", err)
	}
	m.o.Logger.DebugContext(ctx, "work disk created", "vm", vm.Name, "path", path, "added", added)
	return nil
}

// removeWorkDisk removes the work disk and its scratch files.
func removeWorkDisk(path string) error {
	var errs []error
	for _, p := range []string{path, path + ".new", path + ".new.tmp"} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// gitConfig renders a .gitconfig with the user's identity.
func gitConfig(name, email string) []byte {
	q := func(s string) string {
		return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", " ", "\r", " ").Replace(s) + `"`
	}
	var b strings.Builder
	b.WriteString("[user]\n")
	if name != "" {
		fmt.Fprintf(&b, "\tname = %s\n", q(name))
	}
	if email != "" {
		fmt.Fprintf(&b, "\temail = %s\n", q(email))
	}
	return []byte(b.String())
}

// gitIdentity reads the host user's git name and email; "" when git is
// missing or they are unset.
func gitIdentity(ctx context.Context, r hostexec.Runner) (name, email string) {
	get := func(key string) string {
		res, err := r.Run(ctx, hostexec.Cmd{Name: "git", Args: []string{"config", "--global", "--get", key}})
		if err != nil {
			return ""
		}
		return strings.TrimSpace(string(res.Stdout))
	}
	return get("user.name"), get("user.email")
}

// newHostKeyPEM makes an ed25519 ssh host key, as OpenSSH PEM.
func newHostKeyPEM() ([]byte, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate host key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		return nil, fmt.Errorf("encode host key: %w", err)
	}
	return pem.EncodeToMemory(block), nil
}
