package privops

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// polFixture is a managed layout with hostile objects planted in it.
type polFixture struct {
	p       *Policy
	state   string // managed root
	run     string // managed root
	outside string // not managed
	disk    string // state/vms/a/root.img (regular file)
	vmRun   string // run/vms/a (dir)
	evil    string // state/evil -> outside (symlinked dir)
	evilF   string // state/vms/a/shadow -> /etc/shadow (symlinked file)
}

func newPolFixture(t *testing.T) *polFixture {
	t.Helper()
	base := t.TempDir()
	f := &polFixture{
		state:   filepath.Join(base, "state"),
		run:     filepath.Join(base, "run"),
		outside: filepath.Join(base, "outside"),
	}
	f.disk = filepath.Join(f.state, "vms", "a", "root.img")
	f.vmRun = filepath.Join(f.run, "vms", "a")
	f.evil = filepath.Join(f.state, "evil")
	f.evilF = filepath.Join(f.state, "vms", "a", "shadow")
	for _, d := range []string{filepath.Dir(f.disk), f.vmRun, f.outside} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, file := range []string{f.disk, filepath.Join(f.outside, "secret.img")} {
		if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(f.outside, f.evil); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/shadow", f.evilF); err != nil {
		t.Fatal(err)
	}
	f.p = &Policy{
		OwnerUID: 1000, OwnerGID: 1001,
		ManagedRoots: []string{f.state, f.run},
		VMMBinaries: map[string]string{
			"qemu-system-x86_64": "/usr/bin/qemu-system-x86_64",
			"firecracker":        "/usr/local/bin/firecracker",
			"jailer":             "/usr/local/bin/jailer",
		},
		BridgeName: "br-banger",
		BridgeCIDR: "172.30.0.1/24",
		DNSServer:  "127.0.0.1:5353",
		// root's own jail base, outside the owner's directories
		JailerChrootBase: filepath.Join(base, "banger-jail"),
	}
	if err := f.p.Check(); err != nil {
		t.Fatal(err)
	}
	return f
}

// wantInvalid asserts err wraps ErrInvalidArgument and names field.
func wantInvalid(t *testing.T, name string, err error, field string) {
	t.Helper()
	if !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("%s: got %v, want ErrInvalidArgument", name, err)
		return
	}
	if field != "" && !strings.Contains(err.Error(), field) {
		t.Errorf("%s: error %q does not name %q", name, err, field)
	}
}

func TestPolicyCheck(t *testing.T) {
	f := newPolFixture(t)
	for name, mut := range map[string]func(p *Policy){
		"no roots":          func(p *Policy) { p.ManagedRoots = nil },
		"root is /":         func(p *Policy) { p.ManagedRoots = []string{"/"} },
		"relative root":     func(p *Policy) { p.ManagedRoots = []string{"state"} },
		"unclean root":      func(p *Policy) { p.ManagedRoots = []string{"/var/lib/banger/../.."} },
		"no vmm":            func(p *Policy) { p.VMMBinaries = nil },
		"relative vmm":      func(p *Policy) { p.VMMBinaries = map[string]string{"qemu": "qemu"} },
		"vmm name path":     func(p *Policy) { p.VMMBinaries = map[string]string{"/bin/qemu": "/bin/qemu"} },
		"bad bridge":        func(p *Policy) { p.BridgeName = "eth0 up" },
		"bridge is tap":     func(p *Policy) { p.BridgeName = "bgtap-br" },
		"bad cidr":          func(p *Policy) { p.BridgeCIDR = "172.30.0.0/24" },
		"v6 cidr":           func(p *Policy) { p.BridgeCIDR = "fd00::1/64" },
		"bad tap prefix":    func(p *Policy) { p.TapPrefix = "tap prefix" },
		"long tap prefix":   func(p *Policy) { p.TapPrefix = "abcdefghijk" },
		"bad dm prefix":     func(p *Policy) { p.DMPrefix = "a/b" },
		"negative owner id": func(p *Policy) { p.OwnerUID = -1 },
	} {
		p := *f.p
		mut(&p)
		if err := p.Check(); err == nil {
			t.Errorf("%s: policy accepted", name)
		}
	}
}

func TestValidateNetwork(t *testing.T) {
	p := newPolFixture(t).p
	if err := p.ValidateBridge(BridgeSpec{Name: "br-banger", CIDR: "172.30.0.1/24", MTU: 1500}); err != nil {
		t.Fatal(err)
	}
	for name, spec := range map[string]BridgeSpec{
		"host interface": {Name: "eth0", CIDR: "172.30.0.1/24"},
		"docker bridge":  {Name: "docker0", CIDR: "172.30.0.1/24"},
		"other address":  {Name: "br-banger", CIDR: "10.0.0.1/8"},
		"other prefix":   {Name: "br-banger", CIDR: "172.30.0.1/16"},
		"garbage cidr":   {Name: "br-banger", CIDR: "172.30.0.1/24; rm -rf /"},
		"mtu":            {Name: "br-banger", CIDR: "172.30.0.1/24", MTU: 100000},
	} {
		wantInvalid(t, "bridge "+name, p.ValidateBridge(spec), "bridge")
	}
	wantInvalid(t, "delete lo", p.ValidateBridgeName("lo"), "bridge")

	good := TapSpec{Name: "bgtap3f2a", Bridge: "br-banger", Owner: 1000, Group: 1001}
	if err := p.ValidateTap(good); err != nil {
		t.Fatal(err)
	}
	if err := p.ValidateTap(TapSpec{Name: "bgtap-x", Bridge: "br-banger", Owner: -1, Group: -1}); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*TapSpec){
		"no prefix":       func(s *TapSpec) { s.Name = "eth0" },
		"prefix only":     func(s *TapSpec) { s.Name = "bgtap" },
		"too long":        func(s *TapSpec) { s.Name = "bgtap0123456789a" },
		"space":           func(s *TapSpec) { s.Name = "bgtap 1" },
		"newline":         func(s *TapSpec) { s.Name = "bgtap1\n" },
		"slash":           func(s *TapSpec) { s.Name = "bgtap/../lo" },
		"upper":           func(s *TapSpec) { s.Name = "bgtapABC" },
		"unicode":         func(s *TapSpec) { s.Name = "bgtapé" },
		"dot":             func(s *TapSpec) { s.Name = "bgtap.1" },
		"other bridge":    func(s *TapSpec) { s.Bridge = "docker0" },
		"root owner":      func(s *TapSpec) { s.Owner = 0 },
		"foreign group":   func(s *TapSpec) { s.Group = 0 },
		"negative owner":  func(s *TapSpec) { s.Owner = -7 },
		"empty":           func(s *TapSpec) { s.Name = "" },
		"nul":             func(s *TapSpec) { s.Name = "bgtap\x00x" },
		"dash first pfx":  func(s *TapSpec) { s.Name = "-bgtap1" },
		"prefix in mid":   func(s *TapSpec) { s.Name = "xbgtap1" },
		"prefix homoglyp": func(s *TapSpec) { s.Name = "bgtаp1" }, // Cyrillic а
	} {
		s := good
		mut(&s)
		wantInvalid(t, "tap "+name, p.ValidateTap(s), "tap.")
	}
	wantInvalid(t, "delete eth0", p.ValidateTapName("tap", "eth0"), "tap")

	vmnet := VMNetSpec{VMIP: "172.30.0.7", MAC: "02:ba:ac:1e:00:07", Tap: "bgtap7", Bridge: "br-banger", NAT: true, AllowLAN: true}
	if err := p.ValidateVMNet(vmnet); err != nil {
		t.Fatal(err)
	}
	if err := p.ValidateVMNet(VMNetSpec{VMIP: "172.30.0.254", MAC: "02:ba:ac:1e:00:fe", Tap: "bgtap1", Bridge: "br-banger"}); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*VMNetSpec){
		"outside network": func(s *VMNetSpec) { s.VMIP = "10.0.0.7" },
		"host lan":        func(s *VMNetSpec) { s.VMIP = "192.168.1.10" },
		"gateway":         func(s *VMNetSpec) { s.VMIP = "172.30.0.1" },
		"network":         func(s *VMNetSpec) { s.VMIP = "172.30.0.0" },
		"broadcast":       func(s *VMNetSpec) { s.VMIP = "172.30.0.255" },
		"cidr":            func(s *VMNetSpec) { s.VMIP = "172.30.0.0/24" },
		"v6":              func(s *VMNetSpec) { s.VMIP = "::ffff:172.30.0.7" },
		"injection":       func(s *VMNetSpec) { s.VMIP = "172.30.0.7 accept" },
		"bad tap":         func(s *VMNetSpec) { s.Tap = "eth0" },
		"no tap":          func(s *VMNetSpec) { s.Tap = "" },
		"tap injection":   func(s *VMNetSpec) { s.Tap = "bgtap1\" }" },
		"other bridge":    func(s *VMNetSpec) { s.Bridge = "docker0" },
		"no mac":          func(s *VMNetSpec) { s.MAC = "" },
		"multicast mac":   func(s *VMNetSpec) { s.MAC = "03:ba:ac:1e:00:07" },
		"global mac":      func(s *VMNetSpec) { s.MAC = "00:16:3e:00:00:07" },
		"upper mac":       func(s *VMNetSpec) { s.MAC = "02:BA:AC:1E:00:07" },
		"long mac":        func(s *VMNetSpec) { s.MAC = "02:ba:ac:1e:00:07:00:00" },
		"mac injection":   func(s *VMNetSpec) { s.MAC = "02:ba:ac:1e:00:07 } ; flush ruleset" },
		"lan without nat": func(s *VMNetSpec) { s.NAT = false },
	} {
		s := vmnet
		mut(&s)
		wantInvalid(t, "vmnet "+name, p.ValidateVMNet(s), "vmnet.")
	}
	if err := p.ValidateBridge(BridgeSpec{Name: "br-banger", CIDR: "172.30.0.1/24", Uplink: "eth0"}); err != nil {
		t.Fatal(err)
	}
	for name, uplink := range map[string]string{"bridge": "br-banger", "tap": "bgtap9", "hostile": "eth0\"; drop"} {
		wantInvalid(t, "uplink "+name, p.ValidateBridge(BridgeSpec{Name: "br-banger", CIDR: "172.30.0.1/24", Uplink: uplink}), "bridge.uplink")
	}

	// Resolver routing is pinned to the policy's server and domain.
	res := ResolverSpec{Bridge: "br-banger", Server: "127.0.0.1:5353", Domain: "vm", Enable: true}
	for _, d := range []string{"vm", "~vm", "vm.", "~vm."} {
		res := res
		res.Domain = d
		if err := p.ValidateResolver(res); err != nil {
			t.Fatalf("domain %q: %v", d, err)
		}
	}
	if err := p.ValidateResolver(ResolverSpec{Bridge: "br-banger"}); err != nil {
		t.Fatalf("disable: %v", err)
	}
	for name, mut := range map[string]func(*ResolverSpec){
		"root domain":    func(s *ResolverSpec) { s.Domain = "~." },
		"empty domain":   func(s *ResolverSpec) { s.Domain = "" },
		"bad label":      func(s *ResolverSpec) { s.Domain = "-vm" },
		"space":          func(s *ResolverSpec) { s.Domain = "v m" },
		"com":            func(s *ResolverSpec) { s.Domain = "com" },
		"github":         func(s *ResolverSpec) { s.Domain = "~github.com" },
		"subdomain":      func(s *ResolverSpec) { s.Domain = "dev.vm" },
		"remote server":  func(s *ResolverSpec) { s.Server = "8.8.8.8:53" },
		"other port":     func(s *ResolverSpec) { s.Server = "127.0.0.1:5354" },
		"gateway server": func(s *ResolverSpec) { s.Server = "172.30.0.1:5353" },
		"owner listener": func(s *ResolverSpec) { s.Server = "127.0.0.2:5353" },
		"no port":        func(s *ResolverSpec) { s.Server = "127.0.0.1" },
		"port 0":         func(s *ResolverSpec) { s.Server = "127.0.0.1:0" },
		"other bridge":   func(s *ResolverSpec) { s.Bridge = "eth0" },
		"newline domain": func(s *ResolverSpec) { s.Domain = "vm\nserver=1.2.3.4" },
	} {
		s := res
		mut(&s)
		wantInvalid(t, "resolver "+name, p.ValidateResolver(s), "resolver.")
	}
	unpinned := *p
	unpinned.DNSServer = ""
	wantInvalid(t, "resolver without a configured server", unpinned.ValidateResolver(res), "resolver.server")
	for name, mut := range map[string]func(*Policy){
		"root domain":    func(p *Policy) { p.DNSDomain = "." },
		"remote server":  func(p *Policy) { p.DNSServer = "8.8.8.8:53" },
		"server no port": func(p *Policy) { p.DNSServer = "127.0.0.1" },
	} {
		bad := *p
		mut(&bad)
		if err := bad.Check(); err == nil {
			t.Errorf("policy with %s passed Check", name)
		}
	}
}

func TestValidateDisk(t *testing.T) {
	f := newPolFixture(t)
	p := f.p
	if err := p.ValidateLoop(LoopSpec{File: f.disk, ReadOnly: true}); err != nil {
		t.Fatal(err)
	}
	for name, file := range map[string]string{
		"etc shadow":       "/etc/shadow",
		"dotdot":           f.state + "/../outside/secret.img",
		"dotdot inside":    f.state + "/vms/../vms/a/root.img",
		"symlinked dir":    filepath.Join(f.evil, "secret.img"),
		"symlinked file":   f.evilF,
		"relative":         "vms/a/root.img",
		"missing":          filepath.Join(f.state, "vms", "a", "nope.img"),
		"directory":        filepath.Dir(f.disk),
		"block device":     "/dev/sda",
		"newline":          f.disk + "\n",
		"empty":            "",
		"prefix lookalike": f.state + "x/root.img",
		"unclean":          f.state + "//vms/a/root.img",
	} {
		wantInvalid(t, "loop "+name, p.ValidateLoop(LoopSpec{File: file}), "loop.file")
	}

	for _, dev := range []string{"/dev/loop0", "/dev/loop123"} {
		if err := p.ValidateLoopDevice("device", dev); err != nil {
			t.Errorf("%s: %v", dev, err)
		}
	}
	for _, dev := range []string{"/dev/sda", "/dev/loop", "/dev/loop0p1", "/dev/loop-control", "/dev/../dev/loop0", "loop0", "/dev/loop0 ", "/dev/loop99999999", "/dev/mapper/banger-x"} {
		wantInvalid(t, "loop device "+dev, p.ValidateLoopDevice("device", dev), "device")
	}

	snap := SnapshotSpec{Name: "banger-3f2a", Origin: "/dev/loop0", COW: "/dev/loop1", SizeBytes: 8 << 30}
	if err := p.ValidateSnapshot(snap); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*SnapshotSpec){
		"foreign dm":    func(s *SnapshotSpec) { s.Name = "cryptroot" },
		"prefix only":   func(s *SnapshotSpec) { s.Name = "banger-" },
		"slash":         func(s *SnapshotSpec) { s.Name = "banger-../../x" },
		"space":         func(s *SnapshotSpec) { s.Name = "banger-a b" },
		"too long":      func(s *SnapshotSpec) { s.Name = "banger-" + strings.Repeat("a", 100) },
		"origin disk":   func(s *SnapshotSpec) { s.Origin = "/dev/sda" },
		"cow mapper":    func(s *SnapshotSpec) { s.COW = "/dev/mapper/root" },
		"same device":   func(s *SnapshotSpec) { s.COW = s.Origin },
		"zero size":     func(s *SnapshotSpec) { s.SizeBytes = 0 },
		"odd size":      func(s *SnapshotSpec) { s.SizeBytes = 1000 },
		"negative size": func(s *SnapshotSpec) { s.SizeBytes = -512 },
	} {
		s := snap
		mut(&s)
		wantInvalid(t, "snapshot "+name, p.ValidateSnapshot(s), "snapshot.")
	}
	wantInvalid(t, "remove foreign dm", p.ValidateDMName("name", "vg0-root"), "name")
}

func TestValidateLaunch(t *testing.T) {
	f := newPolFixture(t)
	p := f.p
	good := LaunchSpec{
		Argv:    []string{"qemu-system-x86_64", "-machine", "microvm", "-qmp", "unix:" + f.vmRun + "/qmp.sock,server"},
		Dir:     f.vmRun,
		LogPath: filepath.Join(f.state, "vms", "a", "vmm.log"),
		PIDFile: filepath.Join(f.vmRun, "vmm.pid"),
		UID:     1000, GID: 1001,
		Env: []string{"PATH=/usr/bin:/bin", "LANG=C.UTF-8"},
	}
	out, err := p.ValidateLaunch(good)
	if err != nil {
		t.Fatal(err)
	}
	if out.Argv[0] != "/usr/bin/qemu-system-x86_64" || good.Argv[0] != "qemu-system-x86_64" {
		t.Fatalf("argv[0] not resolved (or input mutated): %v / %v", out.Argv, good.Argv)
	}
	abs := good
	abs.Argv = append([]string{"/usr/local/bin/firecracker"}, "--api-sock", f.vmRun+"/fc.sock")
	if out, err := p.ValidateLaunch(abs); err != nil || out.Argv[0] != "/usr/local/bin/firecracker" {
		t.Fatalf("absolute configured path: %v %v", out.Argv, err)
	}

	for name, c := range map[string]struct {
		mut   func(*LaunchSpec)
		field string
	}{
		"shell":              {func(s *LaunchSpec) { s.Argv = []string{"/bin/sh", "-c", "id"} }, "argv[0]"},
		"sh basename":        {func(s *LaunchSpec) { s.Argv = []string{"sh"} }, "argv[0]"},
		"lookalike path":     {func(s *LaunchSpec) { s.Argv = []string{"/tmp/qemu-system-x86_64"} }, "argv[0]"},
		"relative lookalike": {func(s *LaunchSpec) { s.Argv = []string{"./qemu-system-x86_64"} }, "argv[0]"},
		"dotdot to vmm":      {func(s *LaunchSpec) { s.Argv = []string{"/usr/bin/../bin/qemu-system-x86_64"} }, "argv[0]"},
		"unconfigured vmm":   {func(s *LaunchSpec) { s.Argv = []string{"qemu-system-aarch64"} }, "argv[0]"},
		"empty argv":         {func(s *LaunchSpec) { s.Argv = nil }, "argv"},
		"empty arg":          {func(s *LaunchSpec) { s.Argv = []string{"firecracker", ""} }, "argv[1]"},
		"nul arg":            {func(s *LaunchSpec) { s.Argv = []string{"firecracker", "a\x00b"} }, "argv[1]"},
		"huge arg":           {func(s *LaunchSpec) { s.Argv = []string{"firecracker", strings.Repeat("a", 1<<20)} }, "argv[1]"},
		"too many args":      {func(s *LaunchSpec) { s.Argv = append([]string{"firecracker"}, make([]string, 1000)...) }, "argv"},
		"dir outside":        {func(s *LaunchSpec) { s.Dir = "/root" }, "launch.dir"},
		"dir symlink":        {func(s *LaunchSpec) { s.Dir = f.evil }, "launch.dir"},
		"log shadow":         {func(s *LaunchSpec) { s.LogPath = "/etc/shadow" }, "launch.log_path"},
		"log via symlink":    {func(s *LaunchSpec) { s.LogPath = filepath.Join(f.evil, "x.log") }, "launch.log_path"},
		"log is symlink":     {func(s *LaunchSpec) { s.LogPath = f.evilF }, "launch.log_path"},
		"log dotdot":         {func(s *LaunchSpec) { s.LogPath = f.state + "/../outside/x.log" }, "launch.log_path"},
		"pid outside":        {func(s *LaunchSpec) { s.PIDFile = "/run/sshd.pid" }, "launch.pid_file"},
		"pid relative":       {func(s *LaunchSpec) { s.PIDFile = "vmm.pid" }, "launch.pid_file"},
		"keep root":          {func(s *LaunchSpec) { s.UID, s.GID = -1, -1 }, "launch.uid"},
		"as root":            {func(s *LaunchSpec) { s.UID, s.GID = 0, 0 }, "launch.uid"},
		"other user":         {func(s *LaunchSpec) { s.UID = 1002 }, "launch.uid"},
		"root group":         {func(s *LaunchSpec) { s.GID = 0 }, "launch.uid"},
		"ld_preload":         {func(s *LaunchSpec) { s.Env = []string{"LD_PRELOAD=/tmp/x.so"} }, "LD_PRELOAD"},
		"ld_library_path":    {func(s *LaunchSpec) { s.Env = []string{"LD_LIBRARY_PATH=/tmp"} }, "LD_LIBRARY_PATH"},
		"glibc tunables":     {func(s *LaunchSpec) { s.Env = []string{"GLIBC_TUNABLES=x"} }, "GLIBC_TUNABLES"},
		"env no key":         {func(s *LaunchSpec) { s.Env = []string{"=x"} }, "env[0]"},
		"env no equals":      {func(s *LaunchSpec) { s.Env = []string{"PATH"} }, "env[0]"},
		"env bad key":        {func(s *LaunchSpec) { s.Env = []string{"A B=c"} }, "env[0]"},
	} {
		s := good
		s.Argv = append([]string(nil), good.Argv...)
		c.mut(&s)
		_, err := p.ValidateLaunch(s)
		wantInvalid(t, "launch "+name, err, c.field)
	}

	// A root owner may keep root.
	rootP := *p
	rootP.OwnerUID, rootP.OwnerGID = 0, 0
	s := good
	s.UID, s.GID = -1, -1
	if _, err := rootP.ValidateLaunch(s); err != nil {
		t.Fatalf("root owner keeping root: %v", err)
	}
}

func TestValidateLaunchJailer(t *testing.T) {
	f := newPolFixture(t)
	p := f.p
	jail := p.JailerChrootBase
	good := LaunchSpec{
		Argv: []string{"jailer", "--id", "a", "--exec-file", "/usr/local/bin/firecracker", "--uid", "1000", "--gid=1001",
			"--chroot-base-dir", jail, "--daemonize", "--", "--api-sock", "/run/fc.sock"},
		Dir: f.vmRun, LogPath: filepath.Join(f.vmRun, "jailer.log"), UID: -1, GID: -1,
	}
	if _, err := p.ValidateLaunch(good); err != nil {
		t.Fatal(err)
	}
	replace := func(old, new string) func(*LaunchSpec) {
		return func(s *LaunchSpec) {
			for i, a := range s.Argv {
				if a == old {
					s.Argv[i] = new
					return
				}
			}
			t.Fatalf("no %q in argv", old)
		}
	}
	for name, mut := range map[string]func(*LaunchSpec){
		"uid 0":              replace("1000", "0"),
		"gid 0":              replace("--gid=1001", "--gid=0"),
		"exec shell":         replace("/usr/local/bin/firecracker", "/bin/sh"),
		"exec qemu":          replace("/usr/local/bin/firecracker", "/usr/bin/qemu-system-x86_64"),
		"chroot in /":        replace(jail, "/"),
		"chroot via symlink": replace(jail, filepath.Join(f.evil, "jail")),
		// #15.7: the base lay in the owner's state, where the root jailer
		// created nodes and chowned them; now it is pinned.
		"chroot in owner's state": replace(jail, filepath.Join(f.state, "jail")),
		"chroot in owner's run":   replace(jail, filepath.Join(f.run, "jail")),
		"chroot below base":       replace(jail, filepath.Join(jail, "x")),
		"chroot trailing slash":   replace(jail, jail+"/"),
		"chroot dot-dot":          replace(jail, jail+"/../banger-jail"),
		"missing id":              func(s *LaunchSpec) { s.Argv = slicesDelete(s.Argv, "--id", 2) },
		"id with slash":           replace("a", "a/../b"),
		"unknown option":          replace("--daemonize", "--parent-cgroup"),
		"missing uid":             func(s *LaunchSpec) { s.Argv = slicesDelete(s.Argv, "--uid", 2) },
		"duplicate uid": func(s *LaunchSpec) {
			s.Argv = append([]string{s.Argv[0], "--uid", "0"}, s.Argv[1:]...)
		},
		"netns elsewhere": func(s *LaunchSpec) {
			s.Argv = append([]string{s.Argv[0], "--netns", "/proc/1/ns/net"}, s.Argv[1:]...)
		},
		// #15.7: a prefix check on an uncleaned path let this through.
		"netns dot-dot": func(s *LaunchSpec) {
			s.Argv = append([]string{s.Argv[0], "--netns", "/run/netns/../../proc/1/ns/net"}, s.Argv[1:]...)
		},
		"netns nested": func(s *LaunchSpec) {
			s.Argv = append([]string{s.Argv[0], "--netns", "/run/netns/a/b"}, s.Argv[1:]...)
		},
		"cgroup unchecked key": func(s *LaunchSpec) {
			s.Argv = append([]string{s.Argv[0], "--cgroup", "../../release_agent=/tmp/x"}, s.Argv[1:]...)
		},
		"cgroup path value": func(s *LaunchSpec) {
			s.Argv = append([]string{s.Argv[0], "--cgroup", "cpuset.cpus=/etc/shadow"}, s.Argv[1:]...)
		},
		"cgroup version": func(s *LaunchSpec) {
			s.Argv = append([]string{s.Argv[0], "--cgroup-version", "3"}, s.Argv[1:]...)
		},
		"resource limit": func(s *LaunchSpec) {
			s.Argv = append([]string{s.Argv[0], "--resource-limit", "core=unlimited"}, s.Argv[1:]...)
		},
		"positional": func(s *LaunchSpec) { s.Argv = append([]string{s.Argv[0], "evil"}, s.Argv[1:]...) },
	} {
		s := good
		s.Argv = append([]string(nil), good.Argv...)
		mut(&s)
		_, err := p.ValidateLaunch(s)
		wantInvalid(t, "jailer "+name, err, "launch.")
	}
}

// TestValidateLaunchJailerNoBase: without a jail base in root's config the
// jailer is never launched.
func TestValidateLaunchJailerNoBase(t *testing.T) {
	f := newPolFixture(t)
	f.p.JailerChrootBase = ""
	spec := LaunchSpec{
		Argv: []string{"jailer", "--id", "a", "--exec-file", "/usr/local/bin/firecracker", "--uid", "1000", "--gid=1001",
			"--chroot-base-dir", filepath.Join(f.state, "jail"), "--daemonize", "--", "--api-sock", "/run/fc.sock"},
		Dir: f.vmRun, LogPath: filepath.Join(f.vmRun, "jailer.log"), UID: -1, GID: -1,
	}
	_, err := f.p.ValidateLaunch(spec)
	wantInvalid(t, "jailer without a base", err, "chroot base")
}

// TestPolicyCheckJailBase: a jail base overlapping the owner's directories
// is refused when the helper starts.
func TestPolicyCheckJailBase(t *testing.T) {
	f := newPolFixture(t)
	for _, base := range []string{filepath.Join(f.state, "jail"), f.run, filepath.Dir(f.state), "/", "rel/jail", "/var/lib/jail/"} {
		p := *f.p
		p.JailerChrootBase = base
		if err := p.Check(); err == nil {
			t.Errorf("jail base %q accepted", base)
		}
	}
	p := *f.p
	p.JailerChrootBase = filepath.Join(filepath.Dir(f.state), "banger-jail")
	if err := p.Check(); err != nil {
		t.Error(err)
	}
}

// slicesDelete removes the first occurrence of key and the n-1 elements
// after it.
func slicesDelete(s []string, key string, n int) []string {
	for i, a := range s {
		if a == key {
			return append(s[:i:i], s[i+n:]...)
		}
	}
	return s
}

func TestValidateSignalAndChown(t *testing.T) {
	f := newPolFixture(t)
	p := f.p
	id := ProcessIdentity{PID: 4242, Comm: "qemu-system-x86_64", Marker: f.vmRun + "/qmp.sock"}
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR1} {
		if err := p.ValidateSignal(id, sig); err != nil {
			t.Errorf("%v: %v", sig, err)
		}
	}
	if err := p.ValidateSignal(ProcessIdentity{PID: 99, Comm: "/usr/local/bin/firecracker", Marker: "vm-abc"}, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		id    ProcessIdentity
		sig   syscall.Signal
		field string
	}{
		"pid 1":         {ProcessIdentity{PID: 1, Comm: id.Comm, Marker: id.Marker}, syscall.SIGTERM, "signal.pid"},
		"pid 0":         {ProcessIdentity{PID: 0, Comm: id.Comm, Marker: id.Marker}, syscall.SIGTERM, "signal.pid"},
		"pid -1 (all)":  {ProcessIdentity{PID: -1, Comm: id.Comm, Marker: id.Marker}, syscall.SIGKILL, "signal.pid"},
		"no marker":     {ProcessIdentity{PID: 4242, Comm: id.Comm}, syscall.SIGTERM, "signal.marker"},
		"tiny marker":   {ProcessIdentity{PID: 4242, Comm: id.Comm, Marker: "/"}, syscall.SIGTERM, "signal.marker"},
		"no comm":       {ProcessIdentity{PID: 4242, Marker: id.Marker}, syscall.SIGTERM, "signal.comm"},
		"sshd":          {ProcessIdentity{PID: 4242, Comm: "sshd", Marker: id.Marker}, syscall.SIGTERM, "signal.comm"},
		"systemd":       {ProcessIdentity{PID: 4242, Comm: "systemd", Marker: id.Marker}, syscall.SIGKILL, "signal.comm"},
		"SIGSTOP":       {id, syscall.SIGSTOP, "signal"},
		"SIGSEGV":       {id, syscall.SIGSEGV, "signal"},
		"signal 0":      {id, 0, "signal"},
		"signal 99":     {id, 99, "signal"},
		"neg signal":    {id, -9, "signal"},
		"nul in marker": {ProcessIdentity{PID: 4242, Comm: id.Comm, Marker: "abc\x00def"}, syscall.SIGTERM, "signal.marker"},
	} {
		wantInvalid(t, "signal "+name, p.ValidateSignal(c.id, c.sig), c.field)
	}

	sock := filepath.Join(f.vmRun, "fc.sock")
	if err := os.WriteFile(sock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.ValidateChown(sock, 1000, 1001); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		path     string
		uid, gid int
		field    string
	}{
		"shadow":        {"/etc/shadow", 1000, 1001, "chown.path"},
		"symlink file":  {f.evilF, 1000, 1001, "chown.path"},
		"symlinked dir": {filepath.Join(f.evil, "secret.img"), 1000, 1001, "chown.path"},
		"dotdot":        {f.run + "/../outside/secret.img", 1000, 1001, "chown.path"},
		"missing":       {filepath.Join(f.vmRun, "nope"), 1000, 1001, "chown.path"},
		"to root":       {sock, 0, 0, "chown.uid"},
		"to other":      {sock, 1002, 1001, "chown.uid"},
		"keep uid":      {sock, -1, 1001, "chown.uid"},
	} {
		wantInvalid(t, "chown "+name, p.ValidateChown(c.path, c.uid, c.gid), c.field)
	}
}

func FuzzPolicy(f *testing.F) {
	root := f.TempDir()
	p := &Policy{
		OwnerUID: 1000, OwnerGID: 1000, ManagedRoots: []string{root},
		VMMBinaries: map[string]string{"firecracker": "/usr/bin/firecracker"},
		BridgeName:  "br-banger", BridgeCIDR: "172.30.0.1/24",
	}
	for _, s := range []string{"bgtap1", "eth0", "bgtap/../x", "banger-1", "/dev/loop0", root + "/x", "/etc/shadow", "172.30.0.9", "a\x00b", "bgtapé", "02:ba:ac:1e:00:09", "02:BA:AC:1E:00:09", "02-ba-ac-1e-00-09"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		checks := map[string]error{
			"tap":    p.ValidateTapName("tap", s),
			"dm":     p.ValidateDMName("dm", s),
			"loop":   p.ValidateLoopDevice("dev", s),
			"path":   p.ValidatePath("path", s, false),
			"nat":    p.ValidateVMNet(VMNetSpec{VMIP: s, MAC: "02:ba:ac:1e:00:09", Tap: "bgtap1", Bridge: "br-banger"}),
			"mac":    p.ValidateVMNet(VMNetSpec{VMIP: "172.30.0.9", MAC: s, Tap: "bgtap1", Bridge: "br-banger"}),
			"bridge": p.ValidateBridgeName(s),
		}
		for what, err := range checks {
			if err != nil && !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("%s(%q): error without ErrInvalidArgument: %v", what, s, err)
			}
		}
		if checks["tap"] == nil && (len(s) > 15 || !strings.HasPrefix(s, "bgtap") || strings.Trim(s, "abcdefghijklmnopqrstuvwxyz0123456789-") != "") {
			t.Fatalf("tap %q accepted", s)
		}
		if checks["dm"] == nil && (!strings.HasPrefix(s, "banger-") || strings.ContainsAny(s, "/ \x00\n")) {
			t.Fatalf("dm name %q accepted", s)
		}
		if checks["loop"] == nil && (!strings.HasPrefix(s, "/dev/loop") || strings.Trim(s[len("/dev/loop"):], "0123456789") != "") {
			t.Fatalf("loop device %q accepted", s)
		}
		if checks["path"] == nil && (s != root && !strings.HasPrefix(s, root+"/") || strings.Contains(s, "/../") || strings.HasSuffix(s, "/..")) {
			t.Fatalf("path %q accepted", s)
		}
		if checks["nat"] == nil && !strings.HasPrefix(s, "172.30.0.") {
			t.Fatalf("nat address %q accepted", s)
		}
		if checks["mac"] == nil && (len(s) != 17 || strings.Trim(s, "0123456789abcdef:") != "") {
			t.Fatalf("mac %q accepted", s)
		}
		if checks["bridge"] == nil && s != "br-banger" {
			t.Fatalf("bridge %q accepted", s)
		}
	})
}
