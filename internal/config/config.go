// Package config loads banger's config.toml: every key optional, unknown
// keys and bad values rejected naming the key, VM defaults derived from the
// host, and the provenance of every effective value recorded for `doctor`.
//
// The file lives in the XDG config dir in user mode and in /etc/banger in
// system mode (package paths decides); example.toml in this directory
// documents every key.
package config

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/bangerdev/banger/internal/model"
)

// ErrInvalidConfig is wrapped by every validation error of Load and
// Validate.
var ErrInvalidConfig = errors.New("invalid config")

// EnvLogLevel overrides log_level when set.
const EnvLogLevel = "BANGER_LOG_LEVEL"

// Provenance values that are not a file path.
const (
	SourceDefault  = "default"
	SourceEnvLevel = "env " + EnvLogLevel
)

// DefaultOperationsRetentionDays is the default operations_retention_days.
const DefaultOperationsRetentionDays = 30

// Config is the effective configuration.
type Config struct {
	// LogLevel is debug, info, warn or error (toml log_level, default info;
	// BANGER_LOG_LEVEL overrides).
	LogLevel string
	// OperationsRetentionDays is how long finished operations stay in the
	// store's history (`banger daemon operations --all`); toml
	// operations_retention_days, default 30.
	OperationsRetentionDays int
	VM                      VMConfig
	Network                 NetworkConfig
	Images                  ImagesConfig
	Firecracker             FirecrackerConfig
	QEMU                    QEMUConfig
	Disk                    DiskConfig
	Update                  UpdateConfig
	// Provenance maps every key ("vm.vcpu") to where its value came from:
	// "default", "host: 8 CPUs / 4", the config file path, or
	// "env BANGER_LOG_LEVEL".
	Provenance map[string]string
}

// VMConfig is [vm]: defaults for new VMs.
type VMConfig struct {
	VCPU        int    // vcpu: host CPUs / 4, capped at 4, at least 1
	MemoryMiB   int64  // memory = "2G": host RAM / 8, capped at 8G, at least 512M
	DiskSizeMiB int64  // disk_size = "8G"
	Image       string // image, default "debian-bookworm"
	Kernel      string // kernel, default "debian"
	Driver      string // driver: auto | qemu | firecracker (default auto)
	// Templates: new VMs restore their image's template (default true;
	// false = every VM cold-boots, as with `vm create --cold`).
	Templates bool
	// Standby: how many VMs restored from a template are kept running,
	// identity applied, for the next create of the same shape to claim
	// (default 1; 0 disables). See docs/templates.md.
	Standby int
}

// NetworkConfig is [network].
type NetworkConfig struct {
	Bridge      string // bridge, default br-banger
	CIDR        string // cidr: the bridge's address + prefix, default 172.30.0.1/24
	TapPoolSize int    // tap_pool_size: idle taps kept ready, default 2, 0 disables
	DNSAddr     string // dns_listen: host:port of the .vm DNS server, default 127.0.0.1:5354
	Uplink      string // uplink: interface NAT leaves through; "" = any but the bridge
}

// ImagesConfig is [images].
type ImagesConfig struct {
	Mirror string // mirror: Debian mirror URL; "" = from the host's apt sources
	Suite  string // suite: default bookworm
}

// FirecrackerConfig is [firecracker].
type FirecrackerConfig struct {
	Binary    string // binary, default firecracker (looked up on PATH)
	Jailer    string // jailer, default jailer
	UseJailer bool   // use_jailer, default false
}

// QEMUConfig is [qemu].
type QEMUConfig struct {
	Binary  string // binary, default qemu-system-x86_64
	Machine string // machine: microvm | q35 (default microvm)
}

// DiskConfig is [disk].
type DiskConfig struct {
	CoW string // cow: auto | dm | reflink | copy (default auto)
}

// UpdateConfig is [update]: the release channel `banger update` uses.
// Empty values mean the defaults stamped into the build.
type UpdateConfig struct {
	ManifestURL string // manifest_url: the channel's manifest.json
	PubKeyFile  string // pubkey_file: PEM public key releases must be signed with
}

// HostInfo is what the defaults are derived from.
type HostInfo struct {
	CPUs        int
	MemoryBytes int64
}

// DetectHost reads the usable CPU count and /proc/meminfo's MemTotal. A
// value it cannot read is left 0 (Defaults then uses fixed fallbacks).
func DetectHost() HostInfo {
	h := HostInfo{CPUs: runtime.NumCPU()}
	if f, err := os.Open("/proc/meminfo"); err == nil {
		h.MemoryBytes, _ = parseMemTotal(f)
		_ = f.Close()
	}
	return h
}

// parseMemTotal returns MemTotal from /proc/meminfo content, in bytes.
func parseMemTotal(r io.Reader) (int64, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == "MemTotal:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil || kb <= 0 {
				return 0, fmt.Errorf("bad MemTotal line %q", sc.Text())
			}
			if len(f) >= 3 && f[2] != "kB" {
				return 0, fmt.Errorf("unexpected MemTotal unit %q", f[2])
			}
			return kb * 1024, nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("no MemTotal line")
}

// Default values that do not depend on the host.
const (
	DefaultLogLevel    = "info"
	DefaultDiskSizeMiB = 8 * 1024
	DefaultImage       = "debian-bookworm"
	DefaultKernel      = "debian"
	DefaultDriver      = "auto"
	DefaultBridge      = "br-banger"
	DefaultCIDR        = "172.30.0.1/24"
	DefaultTapPoolSize = 2
	DefaultStandby     = 1
	DefaultDNSAddr     = "127.0.0.1:5354"
	DefaultSuite       = "bookworm"
	DefaultFirecracker = "firecracker"
	DefaultJailer      = "jailer"
	DefaultQEMU        = "qemu-system-x86_64"
	DefaultMachine     = "microvm"
	DefaultCoW         = "auto"

	maxDefaultVCPU      = 4
	maxDefaultMemoryMiB = 8 * 1024
	minDefaultMemoryMiB = 512
	fallbackMemoryMiB   = 1024
)

// Defaults returns the configuration used when config.toml sets nothing:
// vcpu = CPUs/4 capped at 4 (at least 1), memory = RAM/8 capped at 8 GiB,
// rounded down to a multiple of 256 MiB (at least 512 MiB), disk 8 GiB.
// Provenance is filled for every key.
func Defaults(h HostInfo) *Config {
	c := &Config{
		LogLevel:                DefaultLogLevel,
		OperationsRetentionDays: DefaultOperationsRetentionDays,
		VM: VMConfig{
			DiskSizeMiB: DefaultDiskSizeMiB,
			Image:       DefaultImage,
			Kernel:      DefaultKernel,
			Driver:      DefaultDriver,
			Templates:   true,
			Standby:     DefaultStandby,
		},
		Network: NetworkConfig{
			Bridge:      DefaultBridge,
			CIDR:        DefaultCIDR,
			TapPoolSize: DefaultTapPoolSize,
			DNSAddr:     DefaultDNSAddr,
		},
		Images:      ImagesConfig{Suite: DefaultSuite},
		Firecracker: FirecrackerConfig{Binary: DefaultFirecracker, Jailer: DefaultJailer},
		QEMU:        QEMUConfig{Binary: DefaultQEMU, Machine: DefaultMachine},
		Disk:        DiskConfig{CoW: DefaultCoW},
		Provenance:  map[string]string{},
	}
	for _, f := range fields() {
		c.Provenance[f.key] = SourceDefault
	}

	switch {
	case h.CPUs <= 0:
		c.VM.VCPU = 1
		c.Provenance["vm.vcpu"] = "default (host CPU count unknown)"
	default:
		v := h.CPUs / 4
		note := ""
		if v > maxDefaultVCPU {
			v, note = maxDefaultVCPU, fmt.Sprintf(", capped at %d", maxDefaultVCPU)
		}
		if v < 1 {
			v, note = 1, ", at least 1"
		}
		c.VM.VCPU = v
		c.Provenance["vm.vcpu"] = fmt.Sprintf("host: %d CPUs / 4%s", h.CPUs, note)
	}

	switch {
	case h.MemoryBytes <= 0:
		c.VM.MemoryMiB = fallbackMemoryMiB
		c.Provenance["vm.memory"] = "default (host memory unknown)"
	default:
		m := h.MemoryBytes / 8 / (1 << 20)
		m -= m % 256
		note := ""
		if m > maxDefaultMemoryMiB {
			m, note = maxDefaultMemoryMiB, ", capped at "+model.FormatMiB(maxDefaultMemoryMiB)
		}
		if m < minDefaultMemoryMiB {
			m, note = minDefaultMemoryMiB, ", at least "+model.FormatMiB(minDefaultMemoryMiB)
		}
		c.VM.MemoryMiB = m
		c.Provenance["vm.memory"] = fmt.Sprintf("host: %s RAM / 8%s", formatGiB(h.MemoryBytes), note)
	}
	return c
}

func formatGiB(b int64) string {
	g := float64(b) / (1 << 30)
	s := strconv.FormatFloat(g, 'f', 1, 64)
	return strings.TrimSuffix(s, ".0") + " GiB"
}

// Load returns the defaults for h overlaid with the file at path (a
// missing file, or path "", means defaults only) and with the environment
// read through env (nil means none). Unknown keys and invalid values are
// rejected with an error wrapping ErrInvalidConfig that names the file, the
// key, the value and what is accepted.
func Load(path string, h HostInfo, env func(string) string) (*Config, error) {
	var data []byte
	if path != "" {
		var err error
		data, err = os.ReadFile(path)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("read config %s: %w", path, err)
		}
	}
	return parse(data, path, h, env)
}

// parse is Load without the file system; source names the file in errors
// and provenance.
func parse(data []byte, source string, h HostInfo, env func(string) string) (*Config, error) {
	c := Defaults(h)
	if len(bytes.TrimSpace(data)) > 0 {
		var doc map[string]any
		if _, err := toml.Decode(string(data), &doc); err != nil {
			return nil, fmt.Errorf("%w %s: %v", ErrInvalidConfig, source, err)
		}
		if problems := c.apply(doc, source); len(problems) > 0 {
			return nil, problemsError(source, problems)
		}
	}
	if env != nil {
		if v := strings.TrimSpace(env(EnvLogLevel)); v != "" {
			c.LogLevel = strings.ToLower(v)
			c.Provenance["log_level"] = SourceEnvLevel
		}
	}
	if problems := c.validate(); len(problems) > 0 {
		return nil, problemsError(source, problems)
	}
	return c, nil
}

func problemsError(source string, problems []string) error {
	where := ""
	if source != "" {
		where = " " + source
	}
	if len(problems) == 1 {
		return fmt.Errorf("%w%s: %s", ErrInvalidConfig, where, problems[0])
	}
	return fmt.Errorf("%w%s:\n  %s", ErrInvalidConfig, where, strings.Join(problems, "\n  "))
}

// Validate checks every value and reports all problems at once in an error
// wrapping ErrInvalidConfig.
func (c *Config) Validate() error {
	if problems := c.validate(); len(problems) > 0 {
		return problemsError("", problems)
	}
	return nil
}

func (c *Config) validate() []string {
	var problems []string
	for _, f := range fields() {
		if f.check == nil {
			continue
		}
		if err := f.check(c); err != nil {
			label := f.key
			if src := c.Provenance[f.key]; strings.HasPrefix(src, "env ") {
				label += " (from " + src + ")"
			}
			problems = append(problems, fmt.Sprintf("%s = %s: %v (accepted: %s)", label, f.format(c), err, f.accepted))
		}
	}
	return problems
}

// Setting is one effective key for display (`doctor`, `config show`).
type Setting struct {
	Key    string // "vm.memory"
	Value  string // in TOML syntax: "2G", 4, true
	Source string // provenance
}

// Settings lists every key in file order with its value and provenance.
func (c *Config) Settings() []Setting {
	var out []Setting
	for _, f := range fields() {
		src := c.Provenance[f.key]
		if src == "" {
			src = SourceDefault
		}
		out = append(out, Setting{Key: f.key, Value: f.format(c), Source: src})
	}
	return out
}
