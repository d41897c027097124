package guest

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/bangerdev/banger/internal/atomicfile"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
	"golang.org/x/sys/unix"
)

// ErrHostKeyMismatch is wrapped by the error returned when a guest presents
// a host key different from the one pinned for its address or name.
var ErrHostKeyMismatch = errors.New("host key mismatch")

// HostKeyMismatchError describes a refused host key.
type HostKeyMismatchError struct {
	Host   string          // the host entry whose pinned key differs
	Hosts  []string        // every name the connection was checked under
	Got    ssh.PublicKey   // presented by the server
	Pinned []ssh.PublicKey // pinned for Host
	File   string          // the known_hosts file
}

func (e *HostKeyMismatchError) Error() string {
	var pinned []string
	for _, k := range e.Pinned {
		pinned = append(pinned, k.Type()+" "+ssh.FingerprintSHA256(k))
	}
	var fix []string
	for _, h := range e.Hosts {
		fix = append(fix, fmt.Sprintf("ssh-keygen -R '%s' -f %s", h, e.File))
	}
	return fmt.Sprintf("REFUSING %s: its ssh host key changed (possible MITM attack, or the guest's host keys were regenerated): "+
		"it presented %s %s but %s pins %s. If you trust the new key, forget the old one and retry: %s",
		strings.Join(e.Hosts, " / "), e.Got.Type(), ssh.FingerprintSHA256(e.Got), e.File, strings.Join(pinned, ", "), strings.Join(fix, " && "))
}

// Unwrap makes errors.Is(err, ErrHostKeyMismatch) true.
func (e *HostKeyMismatchError) Unwrap() error { return ErrHostKeyMismatch }

// KnownHosts is banger's own known_hosts file (OpenSSH format, so the system
// ssh can use it through UserKnownHostsFile). The daemon is its only writer;
// writes are atomic (rename) and serialised by a lock file, so concurrent
// readers such as ssh never see a partial file.
type KnownHosts struct {
	path string
	mu   sync.Mutex
}

// OpenKnownHosts uses path, creating it (0600, parent directory 0700) if
// missing.
func OpenKnownHosts(path string) (*KnownHosts, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("known_hosts directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open known_hosts: %w", err)
	}
	f.Close()
	return &KnownHosts{path: path}, nil
}

// Path returns the file's path.
func (k *KnownHosts) Path() string { return k.path }

// HostEntry normalises an address or name the way known_hosts stores it:
// "172.30.0.5:22" and "172.30.0.5" give "172.30.0.5", other ports give
// "[host]:port", names are lower-cased.
func HostEntry(addr string) string {
	return strings.ToLower(knownhosts.Normalize(addr))
}

type khLine struct {
	raw   string
	hosts []string // nil for lines we do not interpret (comments, markers, junk)
	key   ssh.PublicKey
}

func (l khLine) matches(host string) bool {
	for _, h := range l.hosts {
		if h == host || strings.HasPrefix(h, "|1|") && hashedMatch(h, host) {
			return true
		}
	}
	return false
}

func hashedMatch(entry, host string) bool {
	parts := strings.Split(entry, "|")
	if len(parts) != 4 || parts[1] != "1" {
		return false
	}
	salt, err1 := base64.StdEncoding.DecodeString(parts[2])
	want, err2 := base64.StdEncoding.DecodeString(parts[3])
	if err1 != nil || err2 != nil {
		return false
	}
	mac := hmac.New(sha1.New, salt)
	mac.Write([]byte(host))
	return hmac.Equal(mac.Sum(nil), want)
}

func (k *KnownHosts) read() ([]khLine, error) {
	data, err := os.ReadFile(k.path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read %s: %w", k.path, err)
	}
	var lines []khLine
	for _, raw := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		if raw == "" && len(data) == 0 {
			break
		}
		l := khLine{raw: raw}
		trimmed := strings.TrimSpace(raw)
		if trimmed != "" && !strings.HasPrefix(trimmed, "#") {
			marker, hosts, key, _, _, err := ssh.ParseKnownHosts([]byte(trimmed))
			if err == nil && marker == "" {
				for _, h := range hosts {
					if !strings.HasPrefix(h, "|") {
						h = strings.ToLower(h)
					}
					l.hosts = append(l.hosts, h)
				}
				l.key = key
			}
		}
		lines = append(lines, l)
	}
	return lines, nil
}

func (k *KnownHosts) write(lines []khLine) error {
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l.raw)
		b.WriteByte('\n')
	}
	if err := atomicfile.Write(k.path, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", k.path, err)
	}
	return nil
}

// update runs change on the current lines while holding the lock and
// writes the lines it returns when it says so; change's error is returned
// as is and nothing is written.
func (k *KnownHosts) update(change func(lines []khLine) (next []khLine, write bool, err error)) error {
	unlock, err := k.lock()
	if err != nil {
		return err
	}
	defer unlock()
	lines, err := k.read()
	if err != nil {
		return err
	}
	next, write, err := change(lines)
	if err != nil || !write {
		return err
	}
	return k.write(next)
}

// lock serialises writers in this process and across processes.
func (k *KnownHosts) lock() (unlock func(), err error) {
	k.mu.Lock()
	f, err := os.OpenFile(k.path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		k.mu.Unlock()
		return nil, fmt.Errorf("lock known_hosts: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		k.mu.Unlock()
		return nil, fmt.Errorf("lock known_hosts: %w", err)
	}
	return func() {
		_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
		f.Close()
		k.mu.Unlock()
	}, nil
}

func normHosts(hosts []string) []string {
	var out []string
	for _, h := range hosts {
		if h = strings.TrimSpace(h); h == "" {
			continue
		}
		if n := HostEntry(h); !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}

// Keys returns the keys pinned for host.
func (k *KnownHosts) Keys(host string) ([]ssh.PublicKey, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	lines, err := k.read()
	if err != nil {
		return nil, err
	}
	return keysFor(lines, HostEntry(host)), nil
}

func keysFor(lines []khLine, host string) []ssh.PublicKey {
	var keys []ssh.PublicKey
	for _, l := range lines {
		if l.key != nil && l.matches(host) {
			keys = append(keys, l.key)
		}
	}
	return keys
}

// Check verifies key for a connection known under hosts (address and
// aliases such as "name.vm"), trusting on first use: a host with pinned keys
// must present one of them, else an error wrapping ErrHostKeyMismatch is
// returned and nothing is written; hosts with nothing pinned get key pinned.
func (k *KnownHosts) Check(hosts []string, key ssh.PublicKey) error {
	hosts = normHosts(hosts)
	if len(hosts) == 0 {
		return errors.New("known_hosts check: no host name")
	}
	return k.update(func(lines []khLine) ([]khLine, bool, error) {
		var unknown []string
		for _, h := range hosts {
			pinned := keysFor(lines, h)
			if len(pinned) == 0 {
				unknown = append(unknown, h)
				continue
			}
			if !slices.ContainsFunc(pinned, func(p ssh.PublicKey) bool { return bytes.Equal(p.Marshal(), key.Marshal()) }) {
				return nil, false, &HostKeyMismatchError{Host: h, Hosts: hosts, Got: key, Pinned: pinned, File: k.path}
			}
		}
		return appendPins(lines, unknown, key), len(unknown) > 0, nil
	})
}

// Pin records key as the only key of hosts, replacing what was pinned (for
// host keys the daemon generated and injected itself).
func (k *KnownHosts) Pin(hosts []string, key ssh.PublicKey) error {
	hosts = normHosts(hosts)
	if len(hosts) == 0 {
		return errors.New("known_hosts pin: no host name")
	}
	return k.update(func(lines []khLine) ([]khLine, bool, error) {
		return appendPins(forget(lines, hosts), hosts, key), true, nil
	})
}

// Forget removes every entry for hosts (a deleted VM's address and name).
// Other hosts sharing a line keep it. Forgetting unknown hosts is a no-op.
func (k *KnownHosts) Forget(hosts ...string) error {
	hosts = normHosts(hosts)
	return k.update(func(lines []khLine) ([]khLine, bool, error) {
		next := forget(lines, hosts)
		return next, !slices.EqualFunc(next, lines, func(a, b khLine) bool { return a.raw == b.raw }), nil
	})
}

// appendPins adds one line per host, so that `ssh-keygen -R` of one name
// leaves the others pinned.
func appendPins(lines []khLine, hosts []string, key ssh.PublicKey) []khLine {
	for _, h := range hosts {
		lines = append(lines, khLine{raw: knownhosts.Line([]string{h}, key), hosts: []string{h}, key: key})
	}
	return lines
}

func forget(lines []khLine, hosts []string) []khLine {
	var out []khLine
	for _, l := range lines {
		if l.key == nil {
			out = append(out, l)
			continue
		}
		var keep []string
		for _, h := range l.hosts {
			drop := false
			for _, f := range hosts {
				if h == f || strings.HasPrefix(h, "|1|") && hashedMatch(h, f) {
					drop = true
				}
			}
			if !drop {
				keep = append(keep, h)
			}
		}
		switch {
		case len(keep) == len(l.hosts):
			out = append(out, l)
		case len(keep) > 0:
			out = append(out, khLine{raw: strings.Join(keep, ",") + " " + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(l.key))), hosts: keep, key: l.key})
		}
	}
	return out
}

// HostKeyAlgorithms returns the algorithms of the keys pinned for any of
// hosts, for ssh.ClientConfig.HostKeyAlgorithms, so a server offering several
// host keys is asked for the pinned kind. Nil when nothing is pinned.
func (k *KnownHosts) HostKeyAlgorithms(hosts ...string) []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	lines, err := k.read()
	if err != nil {
		return nil
	}
	var algos []string
	for _, h := range normHosts(hosts) {
		for _, key := range keysFor(lines, h) {
			for _, a := range algorithmsFor(key.Type()) {
				if !slices.Contains(algos, a) {
					algos = append(algos, a)
				}
			}
		}
	}
	return algos
}

func algorithmsFor(keyType string) []string {
	if keyType == ssh.KeyAlgoRSA {
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
	}
	return []string{keyType}
}

// Callback returns an ssh.HostKeyCallback that checks (trust on first use)
// the dialled address together with aliases, e.g. the VM's "name.vm", so the
// system ssh finds the pinned key under either name.
func (k *KnownHosts) Callback(aliases ...string) ssh.HostKeyCallback {
	return func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		return k.Check(append([]string{hostname}, aliases...), key)
	}
}
