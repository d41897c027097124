package config

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"net/url"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/privops"
)

// field describes one config key: how to reach its value, what it accepts
// and how to check it. The list order is the order of example.toml.
type field struct {
	key      string              // "vm.vcpu"
	accepted string              // shown in errors
	size     bool                // int64 MiB written as "2G" or a number of MiB
	ptr      func(c *Config) any // *string, *int, *int64 or *bool
	check    func(c *Config) error
}

// Accepted ranges.
const (
	maxVCPU        = model.MaxVCPU
	minMemoryMiB   = model.MinMemoryMiB
	minDiskMiB     = model.MinDiskMiB
	maxTapPoolSize = 64
	maxStandby     = 4
)

var (
	logLevels = []string{"debug", "info", "warn", "error"}
	drivers   = []string{"auto", "qemu", "firecracker"}
	machines  = []string{"microvm", "q35"}
	cows      = []string{"auto", "dm", "reflink", "copy"}
)

func fields() []field {
	return []field{
		{key: "log_level", accepted: strings.Join(logLevels, ", "),
			ptr: func(c *Config) any { return &c.LogLevel }, check: func(c *Config) error { return oneOf(c.LogLevel, logLevels) }},
		{key: "operations_retention_days", accepted: "a whole number of days from 1 to 3650",
			ptr: func(c *Config) any { return &c.OperationsRetentionDays }, check: func(c *Config) error { return between(int64(c.OperationsRetentionDays), 1, 3650) }},

		{key: "vm.vcpu", accepted: fmt.Sprintf("a whole number from 1 to %d", maxVCPU),
			ptr: func(c *Config) any { return &c.VM.VCPU }, check: func(c *Config) error { return between(int64(c.VM.VCPU), 1, maxVCPU) }},
		{key: "vm.memory", size: true, accepted: `a size such as "2G" or "512M" (or a number of MiB), at least ` + model.FormatMiB(minMemoryMiB),
			ptr: func(c *Config) any { return &c.VM.MemoryMiB }, check: func(c *Config) error { return atLeastMiB(c.VM.MemoryMiB, minMemoryMiB) }},
		{key: "vm.disk_size", size: true, accepted: `a size such as "8G" (or a number of MiB), at least ` + model.FormatMiB(minDiskMiB),
			ptr: func(c *Config) any { return &c.VM.DiskSizeMiB }, check: func(c *Config) error { return atLeastMiB(c.VM.DiskSizeMiB, minDiskMiB) }},
		{key: "vm.image", accepted: "an image name (see `banger image list`)",
			ptr: func(c *Config) any { return &c.VM.Image }, check: func(c *Config) error { return storeName(c.VM.Image) }},
		{key: "vm.kernel", accepted: "a kernel name (see `banger kernel list`)",
			ptr: func(c *Config) any { return &c.VM.Kernel }, check: func(c *Config) error { return storeName(c.VM.Kernel) }},
		{key: "vm.driver", accepted: strings.Join(drivers, ", "),
			ptr: func(c *Config) any { return &c.VM.Driver }, check: func(c *Config) error { return oneOf(c.VM.Driver, drivers) }},

		{key: "vm.templates", accepted: "true or false",
			ptr: func(c *Config) any { return &c.VM.Templates }},
		{key: "vm.standby", accepted: fmt.Sprintf("a whole number from 0 (none) to %d", maxStandby),
			ptr: func(c *Config) any { return &c.VM.Standby }, check: func(c *Config) error { return between(int64(c.VM.Standby), 0, maxStandby) }},

		{key: "network.bridge", accepted: "an interface name: 1-15 of [a-z0-9-], not starting with '-'",
			ptr: func(c *Config) any { return &c.Network.Bridge }, check: func(c *Config) error { return ifName(c.Network.Bridge) }},
		{key: "network.cidr", accepted: `the bridge's IPv4 address with a prefix from /8 to /30, e.g. "172.30.0.1/24"`,
			ptr: func(c *Config) any { return &c.Network.CIDR }, check: func(c *Config) error { return bridgeCIDR(c.Network.CIDR) }},
		{key: "network.tap_pool_size", accepted: fmt.Sprintf("a whole number from 0 (no pool) to %d", maxTapPoolSize),
			ptr: func(c *Config) any { return &c.Network.TapPoolSize }, check: func(c *Config) error { return between(int64(c.Network.TapPoolSize), 0, maxTapPoolSize) }},
		{key: "network.dns_listen", accepted: `an IP address and port, e.g. "127.0.0.1:5354"`,
			ptr: func(c *Config) any { return &c.Network.DNSAddr }, check: func(c *Config) error { return hostPort(c.Network.DNSAddr) }},
		{key: "network.uplink", accepted: `"" (any interface but the bridge) or an interface name`,
			ptr: func(c *Config) any { return &c.Network.Uplink }, check: func(c *Config) error { return optional(c.Network.Uplink, ifName) }},

		{key: "images.mirror", accepted: `"" (use the host's apt sources) or an http, https or file URL`,
			ptr: func(c *Config) any { return &c.Images.Mirror }, check: func(c *Config) error { return optional(c.Images.Mirror, mirrorURL) }},
		{key: "images.suite", accepted: "a Debian suite name such as bookworm",
			ptr: func(c *Config) any { return &c.Images.Suite }, check: func(c *Config) error { return suite(c.Images.Suite) }},

		{key: "firecracker.binary", accepted: "a program name on PATH or an absolute path",
			ptr: func(c *Config) any { return &c.Firecracker.Binary }, check: func(c *Config) error { return program(c.Firecracker.Binary) }},
		{key: "firecracker.jailer", accepted: "a program name on PATH or an absolute path",
			ptr: func(c *Config) any { return &c.Firecracker.Jailer }, check: func(c *Config) error { return program(c.Firecracker.Jailer) }},
		{key: "firecracker.use_jailer", accepted: "true or false",
			ptr: func(c *Config) any { return &c.Firecracker.UseJailer }},

		{key: "qemu.binary", accepted: "a program name on PATH or an absolute path",
			ptr: func(c *Config) any { return &c.QEMU.Binary }, check: func(c *Config) error { return program(c.QEMU.Binary) }},
		{key: "qemu.machine", accepted: strings.Join(machines, ", "),
			ptr: func(c *Config) any { return &c.QEMU.Machine }, check: func(c *Config) error { return oneOf(c.QEMU.Machine, machines) }},

		{key: "disk.cow", accepted: strings.Join(cows, ", "),
			ptr: func(c *Config) any { return &c.Disk.CoW }, check: func(c *Config) error { return oneOf(c.Disk.CoW, cows) }},

		{key: "update.manifest_url", accepted: `"" (the URL built into banger) or an http, https or file URL`,
			ptr: func(c *Config) any { return &c.Update.ManifestURL }, check: func(c *Config) error { return optional(c.Update.ManifestURL, mirrorURL) }},
		{key: "update.pubkey_file", accepted: `"" (the key built into banger) or the absolute path of a PEM public key`,
			ptr: func(c *Config) any { return &c.Update.PubKeyFile }, check: func(c *Config) error { return optional(c.Update.PubKeyFile, absPath) }},
	}
}

// absPath accepts an absolute, clean path.
func absPath(v string) error {
	if !filepath.IsAbs(v) || filepath.Clean(v) != v {
		return errors.New("not an absolute clean path")
	}
	return nil
}

// format renders the field's current value in TOML syntax.
func (f field) format(c *Config) string {
	switch p := f.ptr(c).(type) {
	case *string:
		return quote(*p)
	case *int:
		return strconv.Itoa(*p)
	case *int64:
		if f.size {
			if *p > 0 {
				return quote(model.FormatMiB(*p))
			}
			return strconv.FormatInt(*p, 10)
		}
		return strconv.FormatInt(*p, 10)
	case *bool:
		return strconv.FormatBool(*p)
	}
	return "?"
}

// apply copies the decoded TOML document onto c, recording source as the
// provenance of each key set, and returns every problem found: unknown
// keys, wrong types, unparsable sizes. Value ranges are left to validate.
func (c *Config) apply(doc map[string]any, source string) []string {
	byKey := map[string]field{}
	sections := map[string][]string{}
	var topKeys []string
	for _, f := range fields() {
		byKey[f.key] = f
		if sec, name, ok := strings.Cut(f.key, "."); ok {
			if _, seen := sections[sec]; !seen {
				topKeys = append(topKeys, "["+sec+"]")
			}
			sections[sec] = append(sections[sec], name)
		} else {
			topKeys = append(topKeys, f.key)
		}
	}

	var problems []string
	for _, k := range sortedKeys(doc) {
		v := doc[k]
		if f, ok := byKey[k]; ok {
			if p := c.set(f, v, source); p != "" {
				problems = append(problems, p)
			}
			continue
		}
		names, isSection := sections[k]
		if !isSection {
			problems = append(problems, fmt.Sprintf("unknown key %q%s (known: %s)", k, suggest(k, topKeys), strings.Join(topKeys, ", ")))
			continue
		}
		table, ok := v.(map[string]any)
		if !ok {
			problems = append(problems, fmt.Sprintf("%s = %s: must be a table, written [%s] on its own line", k, describe(v), k))
			continue
		}
		for _, sub := range sortedKeys(table) {
			full := k + "." + sub
			f, ok := byKey[full]
			if !ok {
				problems = append(problems, fmt.Sprintf("unknown key %q in [%s]%s (known: %s)", full, k, suggest(sub, names), strings.Join(names, ", ")))
				continue
			}
			if p := c.set(f, table[sub], source); p != "" {
				problems = append(problems, p)
			}
		}
	}
	return problems
}

// set stores one TOML value, returning a problem description or "".
func (c *Config) set(f field, v any, source string) string {
	bad := func(what string) string {
		return fmt.Sprintf("%s = %s: %s (accepted: %s)", f.key, describe(v), what, f.accepted)
	}
	switch p := f.ptr(c).(type) {
	case *string:
		s, ok := v.(string)
		if !ok {
			return bad("must be a string")
		}
		if f.key == "log_level" {
			s = strings.ToLower(strings.TrimSpace(s))
		}
		*p = s
	case *bool:
		b, ok := v.(bool)
		if !ok {
			return bad("must be true or false")
		}
		*p = b
	case *int:
		n, ok := v.(int64)
		if !ok {
			return bad("must be a whole number")
		}
		if n < math.MinInt32 || n > math.MaxInt32 {
			return bad("is out of range")
		}
		*p = int(n)
	case *int64:
		switch x := v.(type) {
		case int64:
			if !f.size {
				*p = x
				break
			}
			if x <= 0 || x > 1<<40 {
				return bad("must be a positive number of MiB")
			}
			*p = x
		case string:
			if !f.size {
				return bad("must be a whole number")
			}
			mib, err := model.ParseSizeMiB(x)
			if err != nil {
				return bad(strings.TrimPrefix(err.Error(), model.ErrInvalidSize.Error()+": "))
			}
			*p = mib
		default:
			return bad("must be a size string or a number of MiB")
		}
	default:
		return bad("has an unsupported type")
	}
	c.Provenance[f.key] = source
	return ""
}

// describe renders a decoded TOML value for an error message.
func describe(v any) string {
	switch x := v.(type) {
	case string:
		return quote(x)
	case int64, float64, bool:
		return fmt.Sprint(x)
	case time.Time:
		return x.Format(time.RFC3339)
	case map[string]any:
		return "a table"
	case []map[string]any:
		return "an array of tables"
	case []any:
		return "an array"
	default:
		return fmt.Sprintf("%v", x)
	}
}

// quote renders s as a TOML basic string, shortened for messages.
func quote(s string) string {
	if len(s) > 120 {
		s = s[:120] + "..."
	}
	return strconv.Quote(s)
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// suggest returns ` (did you mean "x"?)` for a near miss.
func suggest(k string, known []string) string {
	best, bestD := "", 3
	for _, cand := range known {
		c := strings.Trim(cand, "[]")
		if d := editDistance(strings.ToLower(k), c); d < bestD {
			best, bestD = cand, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 1 << 30
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// Checks. Each returns a short reason; the caller adds key, value and the
// accepted values.

func oneOf(v string, allowed []string) error {
	if slices.Contains(allowed, v) {
		return nil
	}
	return errors.New("not a known value")
}

func between(v, lo, hi int64) error {
	if v < lo || v > hi {
		return fmt.Errorf("out of range")
	}
	return nil
}

func atLeastMiB(v, lo int64) error {
	if v < lo {
		return fmt.Errorf("too small")
	}
	if v > 1<<40 {
		return fmt.Errorf("too large")
	}
	return nil
}

func optional(v string, check func(string) error) error {
	if v == "" {
		return nil
	}
	return check(v)
}

// storeName accepts image and kernel names: printable, no spaces or '/'.
func storeName(v string) error {
	if v == "" {
		return errors.New("empty")
	}
	if len(v) > 128 {
		return errors.New("longer than 128 bytes")
	}
	for _, r := range v {
		if r == '/' || unicode.IsSpace(r) || !unicode.IsPrint(r) {
			return fmt.Errorf("contains %q", r)
		}
	}
	return nil
}

// ifName is the interface-name rule of banger's privileged side (one home:
// privops.ValidateIfName), so a config the daemon accepts is one the root
// helper accepts too.
func ifName(v string) error {
	if privops.ValidateIfName(v) != nil {
		return errors.New("must be 1-15 bytes of [a-z0-9-], not starting with '-'")
	}
	return nil
}

// bridgeCIDR follows the bridge address plan: IPv4, /8 to /30, the address
// is the gateway (a network address means its first host), and at least
// one address must remain for VMs above the gateway.
func bridgeCIDR(v string) error {
	p, err := netip.ParsePrefix(strings.TrimSpace(v))
	if err != nil {
		return errors.New("not an address with a prefix")
	}
	if !p.Addr().Is4() {
		return errors.New("not IPv4")
	}
	bits := p.Bits()
	if bits < 8 || bits > 30 {
		return fmt.Errorf("prefix /%d is outside /8-/30", bits)
	}
	network := p.Masked().Addr()
	gw := p.Addr()
	if gw == network {
		gw = network.Next()
	}
	hostBits := 32 - bits
	n4, g4 := network.As4(), gw.As4()
	base := uint32(n4[0])<<24 | uint32(n4[1])<<16 | uint32(n4[2])<<8 | uint32(n4[3])
	g := uint32(g4[0])<<24 | uint32(g4[1])<<16 | uint32(g4[2])<<8 | uint32(g4[3])
	broadcast := base | (1<<hostBits - 1)
	if g == broadcast {
		return errors.New("the gateway is the broadcast address")
	}
	if g+1 > broadcast-1 {
		return fmt.Errorf("no address left for VMs above the gateway %s", gw)
	}
	return nil
}

func hostPort(v string) error {
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		return errors.New("not host:port")
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return errors.New("host must be an IP address")
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return errors.New("port must be 1-65535")
	}
	return nil
}

func mirrorURL(v string) error {
	u, err := url.Parse(v)
	if err != nil {
		return errors.New("not a URL")
	}
	switch u.Scheme {
	case "http", "https":
		if u.Host == "" {
			return errors.New("no host")
		}
	case "file":
		if u.Path == "" || !strings.HasPrefix(u.Path, "/") {
			return errors.New("file URL needs an absolute path")
		}
	default:
		return errors.New("scheme must be http, https or file")
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return errors.New("must not have credentials, a query or a fragment")
	}
	return nil
}

func suite(v string) error {
	if v == "" || len(v) > 64 {
		return errors.New("must be 1-64 bytes")
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return fmt.Errorf("contains %q", rune(c))
		}
	}
	return nil
}

// program accepts a bare name looked up on PATH or an absolute path.
func program(v string) error {
	if v == "" {
		return errors.New("empty")
	}
	for _, r := range v {
		if unicode.IsControl(r) {
			return errors.New("contains a control character")
		}
	}
	if strings.ContainsRune(v, '/') && !filepath.IsAbs(v) {
		return errors.New("relative paths are ambiguous")
	}
	return nil
}
