package config

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

const gib = int64(1) << 30

func noEnv(string) string { return "" }

func TestDefaultsFromHost(t *testing.T) {
	cases := []struct {
		h          HostInfo
		vcpu       int
		mem        int64
		vcpuSource string
		memSource  string
	}{
		{HostInfo{1, 2 * gib}, 1, 512, "host: 1 CPUs / 4, at least 1", "host: 2 GiB RAM / 8, at least 512M"},
		{HostInfo{2, 24 * gib}, 1, 3072, "host: 2 CPUs / 4, at least 1", "host: 24 GiB RAM / 8"},
		{HostInfo{8, 24 * gib}, 2, 3072, "host: 8 CPUs / 4", "host: 24 GiB RAM / 8"},
		{HostInfo{64, 128 * gib}, 4, 8192, "host: 64 CPUs / 4, capped at 4", "host: 128 GiB RAM / 8, capped at 8G"},
		{HostInfo{16, 128 * gib}, 4, 8192, "host: 16 CPUs / 4", "host: 128 GiB RAM / 8, capped at 8G"},
		// 7.7 GiB / 8 = 985 MiB -> rounded down to 768.
		{HostInfo{12, 7*gib + 700<<20}, 3, 768, "host: 12 CPUs / 4", "host: 7.7 GiB RAM / 8"},
		{HostInfo{0, 0}, 1, 1024, "default (host CPU count unknown)", "default (host memory unknown)"},
	}
	for _, c := range cases {
		cfg := Defaults(c.h)
		if cfg.VM.VCPU != c.vcpu || cfg.VM.MemoryMiB != c.mem {
			t.Errorf("Defaults(%+v): vcpu %d memory %d, want %d %d", c.h, cfg.VM.VCPU, cfg.VM.MemoryMiB, c.vcpu, c.mem)
		}
		if cfg.VM.MemoryMiB%256 != 0 {
			t.Errorf("Defaults(%+v): memory %d not a multiple of 256", c.h, cfg.VM.MemoryMiB)
		}
		if got := cfg.Provenance["vm.vcpu"]; got != c.vcpuSource {
			t.Errorf("Defaults(%+v): vcpu provenance %q, want %q", c.h, got, c.vcpuSource)
		}
		if got := cfg.Provenance["vm.memory"]; got != c.memSource {
			t.Errorf("Defaults(%+v): memory provenance %q, want %q", c.h, got, c.memSource)
		}
		if cfg.VM.DiskSizeMiB != 8192 || cfg.Provenance["vm.disk_size"] != SourceDefault {
			t.Errorf("Defaults: disk %d (%s)", cfg.VM.DiskSizeMiB, cfg.Provenance["vm.disk_size"])
		}
		if err := cfg.Validate(); err != nil {
			t.Errorf("Defaults(%+v) invalid: %v", c.h, err)
		}
		for _, s := range cfg.Settings() {
			if s.Source == "" {
				t.Errorf("no provenance for %s", s.Key)
			}
		}
	}
}

func TestDefaultValues(t *testing.T) {
	c := Defaults(HostInfo{8, 16 * gib})
	got := map[string]string{}
	for _, s := range c.Settings() {
		got[s.Key] = s.Value
	}
	want := map[string]string{
		"log_level": `"info"`, "vm.vcpu": "2", "vm.memory": `"2G"`, "vm.disk_size": `"8G"`,
		"vm.image": `"debian-bookworm"`, "vm.kernel": `"debian"`, "vm.driver": `"auto"`, "vm.templates": "true",
		"network.bridge": `"br-banger"`, "network.cidr": `"172.30.0.1/24"`, "network.tap_pool_size": "2",
		"network.dns_listen": `"127.0.0.1:5354"`, "network.uplink": `""`, "images.mirror": `""`,
		"images.suite": `"bookworm"`, "firecracker.binary": `"firecracker"`, "firecracker.jailer": `"jailer"`,
		"firecracker.use_jailer": "false", "qemu.binary": `"qemu-system-x86_64"`, "qemu.machine": `"microvm"`,
		"vm.standby": "1", "disk.cow": `"auto"`, "update.manifest_url": `""`, "update.pubkey_file": `""`,
		"operations_retention_days": "30",
	}
	if len(got) != len(want) {
		t.Errorf("Settings has %d keys, want %d", len(got), len(want))
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("default %s = %s, want %s", k, got[k], v)
		}
	}
}

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadEveryKey(t *testing.T) {
	path := writeConfig(t, `
log_level = "DEBUG"
operations_retention_days = 7
[vm]
vcpu = 3
memory = "3G"
disk_size = 20480
image = "alpine"
kernel = "mine"
driver = "qemu"
templates = false
standby = 2
[network]
bridge = "br-test"
cidr = "10.99.0.1/16"
tap_pool_size = 0
dns_listen = "127.0.0.53:53"
uplink = "eth0"
[images]
mirror = "http://127.0.0.1:8080/debian"
suite = "trixie"
[firecracker]
binary = "/opt/fc/firecracker"
jailer = "/opt/fc/jailer"
use_jailer = true
[qemu]
binary = "/usr/local/bin/qemu-system-x86_64"
machine = "q35"
[disk]
cow = "reflink"
[update]
manifest_url = "http://127.0.0.1:8080/manifest.json"
pubkey_file = "/etc/banger/release.pub"
`)
	c, err := Load(path, HostInfo{8, 16 * gib}, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		LogLevel:                "debug",
		OperationsRetentionDays: 7,
		VM:                      VMConfig{VCPU: 3, MemoryMiB: 3072, DiskSizeMiB: 20480, Image: "alpine", Kernel: "mine", Driver: "qemu", Standby: 2},
		Network:                 NetworkConfig{Bridge: "br-test", CIDR: "10.99.0.1/16", TapPoolSize: 0, DNSAddr: "127.0.0.53:53", Uplink: "eth0"},
		Images:                  ImagesConfig{Mirror: "http://127.0.0.1:8080/debian", Suite: "trixie"},
		Firecracker:             FirecrackerConfig{Binary: "/opt/fc/firecracker", Jailer: "/opt/fc/jailer", UseJailer: true},
		QEMU:                    QEMUConfig{Binary: "/usr/local/bin/qemu-system-x86_64", Machine: "q35"},
		Disk:                    DiskConfig{CoW: "reflink"},
		Update:                  UpdateConfig{ManifestURL: "http://127.0.0.1:8080/manifest.json", PubKeyFile: "/etc/banger/release.pub"},
	}
	got := *c
	got.Provenance = nil
	if !equalConfig(got, want) {
		t.Fatalf("Load:\n got  %+v\n want %+v", got, want)
	}
	for _, s := range c.Settings() {
		if s.Source != path {
			t.Errorf("%s provenance %q, want the file %s", s.Key, s.Source, path)
		}
	}
}

func equalConfig(a, b Config) bool {
	return a.LogLevel == b.LogLevel && a.VM == b.VM && a.Network == b.Network && a.Images == b.Images && a.Update == b.Update &&
		a.Firecracker == b.Firecracker && a.QEMU == b.QEMU && a.Disk == b.Disk
}

func TestLoadPartialKeepsOtherDefaultsAndProvenance(t *testing.T) {
	path := writeConfig(t, "[vm]\nmemory = \"1G\"\n")
	c, err := Load(path, HostInfo{8, 64 * gib}, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if c.VM.MemoryMiB != 1024 || c.Provenance["vm.memory"] != path {
		t.Errorf("memory %d from %q", c.VM.MemoryMiB, c.Provenance["vm.memory"])
	}
	if c.VM.VCPU != 2 || c.Provenance["vm.vcpu"] != "host: 8 CPUs / 4" {
		t.Errorf("vcpu %d from %q", c.VM.VCPU, c.Provenance["vm.vcpu"])
	}
	if c.Network.Bridge != DefaultBridge || c.Provenance["network.bridge"] != SourceDefault {
		t.Errorf("bridge %q from %q", c.Network.Bridge, c.Provenance["network.bridge"])
	}
}

func TestLoadMissingFileAndEmpty(t *testing.T) {
	h := HostInfo{4, 8 * gib}
	for _, path := range []string{"", filepath.Join(t.TempDir(), "absent.toml"), writeConfig(t, "# only comments\n\n")} {
		c, err := Load(path, h, nil)
		if err != nil {
			t.Fatalf("Load(%q): %v", path, err)
		}
		if !equalConfig(*c, *Defaults(h)) {
			t.Errorf("Load(%q) differs from defaults: %+v", path, c)
		}
	}
	// A file that cannot be read is an error (a directory here).
	if _, err := Load(t.TempDir(), h, nil); err == nil {
		t.Error("Load(directory) succeeded")
	}
}

func TestUnknownKeys(t *testing.T) {
	cases := map[string][]string{
		"foo = 1\n":                       {`unknown key "foo"`, "known: log_level, operations_retention_days, [vm]"},
		"[vm]\nfoo = 1\n":                 {`unknown key "vm.foo" in [vm]`, "vcpu, memory"},
		"[vm]\nvpcu = 2\n":                {`"vm.vpcu"`, `did you mean "vcpu"?`},
		"loglevel = \"info\"\n":           {`"loglevel"`, `did you mean "log_level"?`},
		"[netwrok]\nbridge = \"x\"\n":     {`"netwrok"`, `did you mean "[network]"?`},
		"vm.vcpu = 2\nvm.color = \"r\"\n": {`"vm.color"`},
		"[network.extra]\nx = 1\n":        {`"network.extra"`},
		"[[vm]]\nvcpu = 1\n":              {"vm = an array of tables: must be a table"},
		"vm = 3\n":                        {"vm = 3: must be a table"},
	}
	for body, wants := range cases {
		path := writeConfig(t, body)
		_, err := Load(path, HostInfo{4, 8 * gib}, noEnv)
		if !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("Load(%q) = %v, want ErrInvalidConfig", body, err)
			continue
		}
		for _, w := range append(wants, path) {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("Load(%q) = %q, want it to mention %q", body, err, w)
			}
		}
	}
}

func TestBadValues(t *testing.T) {
	cases := map[string][]string{
		`log_level = "loud"`:                              {`log_level = "loud"`, "debug, info, warn, error"},
		`log_level = 3`:                                   {"log_level = 3", "must be a string"},
		"[vm]\nvcpu = 0":                                  {"vm.vcpu = 0", "1 to 64"},
		"[vm]\nvcpu = 65":                                 {"vm.vcpu = 65", "out of range"},
		"[vm]\nvcpu = \"4\"":                              {`vm.vcpu = "4"`, "whole number"},
		"[vm]\nvcpu = 1.5":                                {"vm.vcpu = 1.5", "whole number"},
		"[vm]\nvcpu = 99999999999":                        {"vm.vcpu = 99999999999"},
		"[vm]\nmemory = \"lots\"":                         {`vm.memory = "lots"`, `"2G"`},
		"[vm]\nmemory = \"64M\"":                          {`vm.memory = "64M"`, "too small", "at least 128M"},
		"[vm]\nmemory = -1":                               {"vm.memory = -1", "positive"},
		"[vm]\nmemory = true":                             {"vm.memory = true", "size"},
		"[vm]\ndisk_size = \"0\"":                         {`vm.disk_size = "0"`, "positive"},
		"[vm]\ndisk_size = \"1.5G\"":                      {`vm.disk_size = "1.5G"`},
		"[vm]\nimage = \"\"":                              {`vm.image = ""`, "empty"},
		"[vm]\nimage = \"a b\"":                           {`vm.image = "a b"`},
		"[vm]\nkernel = \"../x\"":                         {`vm.kernel = "../x"`},
		"[vm]\ndriver = \"kvm\"":                          {`vm.driver = "kvm"`, "auto, qemu, firecracker"},
		"[network]\nbridge = \"a-very-long-bridge-name\"": {"network.bridge", "1-15"},
		"[network]\nbridge = \"br 0\"":                    {`network.bridge = "br 0"`},
		"[network]\ncidr = \"172.30.0.1\"":                {`network.cidr = "172.30.0.1"`, "prefix"},
		"[network]\ncidr = \"fd00::1/64\"":                {"network.cidr", "IPv4"},
		"[network]\ncidr = \"10.0.0.1/31\"":               {"network.cidr", "/31"},
		"[network]\ncidr = \"10.0.0.255/24\"":             {"network.cidr", "broadcast"},
		"[network]\ncidr = \"10.0.0.254/24\"":             {"network.cidr", "no address left"},
		"[network]\ntap_pool_size = 65":                   {"network.tap_pool_size = 65", "0 (no pool) to 64"},
		"[network]\ntap_pool_size = -1":                   {"network.tap_pool_size = -1"},
		"[network]\ndns_listen = \"127.0.0.1\"":           {"network.dns_listen", "host:port"},
		"[network]\ndns_listen = \"localhost:53\"":        {"network.dns_listen", "IP address"},
		"[network]\ndns_listen = \"127.0.0.1:0\"":         {"network.dns_listen", "1-65535"},
		"[network]\nuplink = \"e/th\"":                    {"network.uplink"},
		"[images]\nmirror = \"ftp://x/debian\"":           {"images.mirror", "scheme"},
		"[images]\nmirror = \"https://\"":                 {"images.mirror", "no host"},
		"[images]\nsuite = \"Bookworm\"":                  {"images.suite"},
		"[firecracker]\nbinary = \"bin/fc\"":              {"firecracker.binary", "relative"},
		"[firecracker]\njailer = \"\"":                    {"firecracker.jailer", "empty"},
		"[firecracker]\nuse_jailer = \"yes\"":             {`firecracker.use_jailer = "yes"`, "true or false"},
		"[qemu]\nmachine = \"pc\"":                        {`qemu.machine = "pc"`, "microvm, q35"},
		"[qemu]\nbinary = \"\"":                           {"qemu.binary"},
		"[disk]\ncow = \"overlay\"":                       {`disk.cow = "overlay"`, "auto, dm, reflink, copy"},
	}
	for body, wants := range cases {
		path := writeConfig(t, body+"\n")
		_, err := Load(path, HostInfo{4, 8 * gib}, noEnv)
		if !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("Load(%q) = %v, want ErrInvalidConfig", body, err)
			continue
		}
		for _, w := range append(wants, path, "accepted: ") {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("Load(%q) = %q, want it to mention %q", body, err, w)
			}
		}
	}
}

func TestAllProblemsReported(t *testing.T) {
	path := writeConfig(t, "[vm]\nvcpu = 0\ndriver = \"x\"\n[disk]\ncow = \"y\"\n")
	_, err := Load(path, HostInfo{4, 8 * gib}, noEnv)
	if err == nil {
		t.Fatal("accepted")
	}
	for _, k := range []string{"vm.vcpu", "vm.driver", "disk.cow"} {
		if !strings.Contains(err.Error(), k) {
			t.Errorf("error %q misses %s", err, k)
		}
	}
}

func TestSyntaxError(t *testing.T) {
	path := writeConfig(t, "[vm\nvcpu = 2\n")
	_, err := Load(path, HostInfo{4, 8 * gib}, noEnv)
	if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "toml: line ") {
		t.Fatalf("syntax error = %v", err)
	}
}

func TestEnvOverride(t *testing.T) {
	path := writeConfig(t, "log_level = \"warn\"\n")
	env := func(k string) string {
		if k == EnvLogLevel {
			return " Debug "
		}
		return ""
	}
	c, err := Load(path, HostInfo{4, 8 * gib}, env)
	if err != nil {
		t.Fatal(err)
	}
	if c.LogLevel != "debug" || c.Provenance["log_level"] != "env BANGER_LOG_LEVEL" {
		t.Fatalf("log level %q from %q", c.LogLevel, c.Provenance["log_level"])
	}
	c, err = Load(path, HostInfo{4, 8 * gib}, noEnv)
	if err != nil || c.LogLevel != "warn" || c.Provenance["log_level"] != path {
		t.Fatalf("without env: %q from %q, %v", c.LogLevel, c.Provenance["log_level"], err)
	}
	_, err = Load(path, HostInfo{4, 8 * gib}, func(string) string { return "loud" })
	if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "env BANGER_LOG_LEVEL") {
		t.Fatalf("bad env value: %v", err)
	}
}

func TestValidateHandBuilt(t *testing.T) {
	c := Defaults(HostInfo{4, 8 * gib})
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	c.VM.VCPU = 100
	c.QEMU.Machine = "virt"
	err := c.Validate()
	if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "vm.vcpu = 100") || !strings.Contains(err.Error(), `qemu.machine = "virt"`) {
		t.Fatalf("Validate = %v", err)
	}
	var zero Config
	if err := zero.Validate(); err == nil {
		t.Fatal("zero Config validated")
	}
}

func TestParseMemTotal(t *testing.T) {
	b, err := parseMemTotal(strings.NewReader("MemFree: 10 kB\nMemTotal:       16318536 kB\n"))
	if err != nil || b != 16318536*1024 {
		t.Fatalf("parseMemTotal = %d, %v", b, err)
	}
	for _, bad := range []string{"", "MemFree: 1 kB\n", "MemTotal: x kB\n", "MemTotal: 5 MB\n"} {
		if _, err := parseMemTotal(strings.NewReader(bad)); err == nil {
			t.Errorf("parseMemTotal(%q) accepted", bad)
		}
	}
	h := DetectHost()
	if h.CPUs < 1 || h.MemoryBytes < 64<<20 {
		t.Fatalf("DetectHost = %+v", h)
	}
}

// TestExampleDocumentsEveryKey loads example.toml as shipped (everything
// commented out = defaults) and with every "# key = value" line enabled,
// which must set every key from the file.
func TestExampleDocumentsEveryKey(t *testing.T) {
	data, err := os.ReadFile("example.toml")
	if err != nil {
		t.Fatal(err)
	}
	h := HostInfo{8, 16 * gib}
	c, err := parse(data, "example.toml", h, noEnv)
	if err != nil {
		t.Fatalf("example.toml as shipped: %v", err)
	}
	if !equalConfig(*c, *Defaults(h)) {
		t.Errorf("example.toml as shipped is not all defaults")
	}
	enabled := regexp.MustCompile(`(?m)^# ([a-z_]+ = .*)$`).ReplaceAll(data, []byte("$1"))
	c, err = parse(enabled, "example.toml", h, noEnv)
	if err != nil {
		t.Fatalf("example.toml with every key enabled: %v", err)
	}
	for _, s := range c.Settings() {
		if s.Source != "example.toml" {
			t.Errorf("example.toml does not document %s", s.Key)
		}
	}
}

func FuzzLoad(f *testing.F) {
	seeds := []string{
		"", "log_level = \"debug\"\n", "[vm]\nvcpu = 2\nmemory = \"2G\"\n", "[vm]\nfoo = 1\n",
		"[network]\ncidr = \"10.0.0.1/24\"\ntap_pool_size = 3\n", "vm = 1", "[[vm]]\n", "[vm\n",
		"[vm]\nmemory = 9999999999999\n", "a.b.c.d = 1\n", "[disk]\ncow = [1, 2]\n",
		"[images]\nmirror = \"http://[::1]:80/x\"\n", "[vm]\ndisk_size = 1979-05-27T07:32:00Z\n",
	}
	if data, err := os.ReadFile("example.toml"); err == nil {
		seeds = append(seeds, string(data), regexp.MustCompile(`(?m)^# ([a-z_]+ = .*)$`).ReplaceAllString(string(data), "$1"))
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		c, err := parse([]byte(body), "fuzz.toml", HostInfo{4, 8 * gib}, noEnv)
		if err != nil {
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("error %v does not wrap ErrInvalidConfig", err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Load accepted a config that Validate rejects: %v", err)
		}
		for _, s := range c.Settings() {
			if s.Source == "" {
				t.Fatalf("no provenance for %s", s.Key)
			}
		}
	})
}
