// Package sshconfig makes plain `ssh NAME.vm` work: it renders an OpenSSH
// client configuration for banger's VMs and installs (opt-in) a marked
// Include of it at the top of ~/.ssh/config.
//
// Name resolution needs no DNS and no ProxyCommand: the rendered file has one
// `Host NAME.vm` block per VM with its HostName (VM addresses are stable
// leases), and the daemon rewrites the file (Write) when VMs are created or
// deleted. Names not listed fall through to DNS, which works where
// systemd-resolved routes .vm to banger's DNS server. Each VM block sets
// HostKeyAlias to NAME.vm, matching the entries banger pins in its own
// known_hosts, which ssh uses with StrictHostKeyChecking yes: a changed key
// is refused, never silently accepted.
//
// Install never runs implicitly: ~/.ssh/config is only touched by Install
// and Uninstall. Uninstall restores the file byte for byte (or removes it if
// Install created it).
package sshconfig

import (
	"errors"
	"fmt"
	"github.com/bangerdev/banger/internal/model"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/bangerdev/banger/internal/atomicfile"
)

// Defaults for Options.
const (
	DefaultDomain              = model.DNSDomain
	DefaultUser                = "root"
	DefaultServerAliveInterval = 5
	DefaultServerAliveCountMax = 3
	DefaultConnectTimeout      = 10
)

// Host is a VM listed in the rendered file.
type Host struct {
	Name string     // VM name (a DNS label)
	IP   netip.Addr // its lease
}

// Options describe the rendered configuration.
type Options struct {
	Domain         string // default "vm"
	User           string // default "root"
	IdentityFile   string // the managed private key (absolute path)
	KnownHostsFile string // banger's known_hosts (absolute path)
	// ServerAliveInterval/CountMax and ConnectTimeout are in seconds.
	ServerAliveInterval int
	ServerAliveCountMax int
	ConnectTimeout      int
	Hosts               []Host
}

func (o Options) withDefaults() Options {
	if o.Domain == "" {
		o.Domain = DefaultDomain
	}
	o.Domain = strings.Trim(o.Domain, ".")
	if o.User == "" {
		o.User = DefaultUser
	}
	if o.ServerAliveInterval <= 0 {
		o.ServerAliveInterval = DefaultServerAliveInterval
	}
	if o.ServerAliveCountMax <= 0 {
		o.ServerAliveCountMax = DefaultServerAliveCountMax
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	return o
}

// quote renders a value for ssh_config, double-quoting it when needed.
func quote(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\"'#\\") {
		return s
	}
	return `"` + strings.ReplaceAll(s, `"`, `\"`) + `"`
}

func validName(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// Render returns the configuration text: one block per VM in opts.Hosts
// (sorted by name; invalid names or addresses are skipped), then the
// `Host *.DOMAIN` block with the settings every VM shares.
func Render(opts Options) string {
	o := opts.withDefaults()
	var b strings.Builder
	b.WriteString("# Written by banger (`banger ssh-config`) and rewritten as VMs come and go. Do not edit.\n\n")
	hosts := append([]Host(nil), o.Hosts...)
	sort.Slice(hosts, func(i, j int) bool { return hosts[i].Name < hosts[j].Name })
	for _, h := range hosts {
		if !validName(h.Name) || !h.IP.Is4() {
			continue
		}
		fqdn := h.Name + "." + o.Domain
		fmt.Fprintf(&b, "Host %s\n    HostName %s\n    HostKeyAlias %s\n\n", fqdn, h.IP, fqdn)
	}
	fmt.Fprintf(&b, "Host *.%s\n", o.Domain)
	fmt.Fprintf(&b, "    User %s\n", quote(o.User))
	if o.IdentityFile != "" {
		fmt.Fprintf(&b, "    IdentityFile %s\n", quote(o.IdentityFile))
		b.WriteString("    IdentitiesOnly yes\n")
	}
	if o.KnownHostsFile != "" {
		fmt.Fprintf(&b, "    UserKnownHostsFile %s\n", quote(o.KnownHostsFile))
	}
	b.WriteString("    StrictHostKeyChecking yes\n")
	b.WriteString("    CheckHostIP no\n")
	fmt.Fprintf(&b, "    ServerAliveInterval %d\n", o.ServerAliveInterval)
	fmt.Fprintf(&b, "    ServerAliveCountMax %d\n", o.ServerAliveCountMax)
	fmt.Fprintf(&b, "    ConnectTimeout %d\n", o.ConnectTimeout)
	return b.String()
}

// Write renders opts into path atomically (mode 0600, parent created 0700).
// This is the file Install includes; writing it never touches ~/.ssh.
func Write(path string, opts Options) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("ssh config directory: %w", err)
	}
	// Derived from the VM records and rewritten from them (every VM change
	// and daemon start): no fsync.
	if err := atomicfile.WriteUnsynced(path, []byte(Render(opts)), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Markers delimiting banger's block in ~/.ssh/config.
const (
	beginMarker   = "# >>> banger ssh-config >>>"
	endMarker     = "# <<< banger ssh-config <<<"
	createdSuffix = " (this file was created by banger)"
)

func block(includePath string, created bool) string {
	begin := beginMarker + " added by `banger ssh-config --install`; remove with `banger ssh-config --uninstall`"
	if created {
		begin += createdSuffix
	}
	return begin + "\nInclude " + quote(includePath) + "\n" + endMarker + "\n"
}

// ConfigPath is the user's ssh client configuration inside sshDir.
func ConfigPath(sshDir string) string { return filepath.Join(sshDir, "config") }

// target follows a symlinked ~/.ssh/config (dotfile managers) so the file is
// edited in place rather than replaced by a regular file.
func target(path string) (string, error) {
	real, err := filepath.EvalSymlinks(path)
	if errors.Is(err, fs.ErrNotExist) {
		if fi, lerr := os.Lstat(path); lerr == nil && fi.Mode()&fs.ModeSymlink != 0 {
			return "", fmt.Errorf("%s is a dangling symlink; fix it first", path)
		}
		return path, nil
	}
	return real, err
}

// readConfig reads sshDir/config through symlinks: path is the file
// written to, exists is false (and data nil) when it does not exist yet.
func readConfig(sshDir string) (path string, data []byte, exists bool, err error) {
	path, err = target(ConfigPath(sshDir))
	if err != nil {
		return "", nil, false, err
	}
	data, err = os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return path, nil, false, nil
	}
	if err != nil {
		return "", nil, false, fmt.Errorf("read %s: %w", path, err)
	}
	return path, data, true, nil
}

// findBlocks returns the byte ranges [start, end) of banger blocks in data,
// and whether any of them says the file was created by banger.
func findBlocks(data string) (ranges [][2]int, created bool) {
	pos := 0
	for pos < len(data) {
		i := strings.Index(data[pos:], beginMarker)
		if i < 0 {
			break
		}
		start := pos + i
		if start > 0 && data[start-1] != '\n' { // marker must start a line
			pos = start + len(beginMarker)
			continue
		}
		j := strings.Index(data[start:], "\n"+endMarker)
		if j < 0 {
			break // unterminated: leave it alone
		}
		end := start + j + 1 + len(endMarker)
		if end < len(data) && data[end] == '\n' {
			end++
		}
		if strings.Contains(data[start:start+strings.IndexByte(data[start:]+"\n", '\n')], createdSuffix) {
			created = true
		}
		ranges = append(ranges, [2]int{start, end})
		pos = end
	}
	return ranges, created
}

func removeBlocks(data string, ranges [][2]int) string {
	var b strings.Builder
	prev := 0
	for _, r := range ranges {
		b.WriteString(data[prev:r[0]])
		prev = r[1]
	}
	b.WriteString(data[prev:])
	return b.String()
}

// Install puts a marked `Include includePath` block at the top of
// sshDir/config (creating sshDir 0700 and the file 0600 if needed), before
// any Host block as OpenSSH requires. Installing again changes nothing; an
// older block (another path, or moved by hand) is replaced by one at the top.
// changed reports whether the file was written.
func Install(sshDir, includePath string) (changed bool, err error) {
	if !filepath.IsAbs(includePath) {
		return false, fmt.Errorf("include path %q must be absolute", includePath)
	}
	if err := os.MkdirAll(sshDir, 0o700); err != nil {
		return false, fmt.Errorf("create %s: %w", sshDir, err)
	}
	path, data, exists, err := readConfig(sshDir)
	if err != nil {
		return false, err
	}
	ranges, created := findBlocks(string(data))
	created = created || !exists
	rest := removeBlocks(string(data), ranges)
	next := block(includePath, created) + rest
	if next == string(data) {
		return false, nil
	}
	mode := os.FileMode(0o600)
	if fi, err := os.Stat(path); err == nil {
		mode = fi.Mode().Perm()
	}
	if err := atomicfile.Write(path, []byte(next), mode); err != nil {
		return false, fmt.Errorf("write %s: %w", path, err)
	}
	return true, nil
}

// Uninstall removes banger's block(s) from sshDir/config, restoring the file
// as it was before Install (deleting it if Install created it and nothing
// else was added since). changed reports whether anything was removed.
func Uninstall(sshDir string) (changed bool, err error) {
	path, data, exists, err := readConfig(sshDir)
	if err != nil || !exists {
		return false, err
	}
	ranges, created := findBlocks(string(data))
	if len(ranges) == 0 {
		return false, nil
	}
	rest := removeBlocks(string(data), ranges)
	if created && rest == "" {
		if err := os.Remove(path); err != nil {
			return false, fmt.Errorf("remove %s: %w", path, err)
		}
		return true, nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return false, err
	}
	if err := atomicfile.Write(path, []byte(rest), fi.Mode().Perm()); err != nil {
		return false, fmt.Errorf("write %s: %w", path, err)
	}
	return true, nil
}

// Installed reports whether sshDir/config includes banger's block.
func Installed(sshDir string) (bool, error) {
	_, data, _, err := readConfig(sshDir)
	if err != nil {
		return false, err
	}
	ranges, _ := findBlocks(string(data))
	return len(ranges) > 0, nil
}
