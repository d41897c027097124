package privops

// Fuzz targets for every validator of the one set (validators.go), the
// helper's Policy validators built on it, and the decoding of every helper
// request. `go test` runs the seeds (f.Add and testdata/fuzz/<Target>/);
// `make fuzz` (scripts/fuzz) explores for FUZZTIME each.
//
// Properties checked everywhere: no panic; every refusal wraps
// ErrInvalidArgument; whatever the helper (Policy) accepts, the in-process
// path (the plain validator) accepts too; accepted values keep the
// documented shape (no '/', NUL or newline in names, clean paths ...).

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/bangerdev/banger/internal/rpc"
)

func fuzzPolicy(t testing.TB) *Policy {
	root := t.TempDir()
	p := &Policy{
		OwnerUID: 1000, OwnerGID: 1001, ManagedRoots: []string{root},
		VMMBinaries: map[string]string{"firecracker": "/usr/bin/firecracker", "jailer": "/usr/bin/jailer",
			"qemu-system-x86_64": "/usr/bin/qemu-system-x86_64"},
		BridgeName: "br-banger", BridgeCIDR: "172.30.0.1/24", DNSServer: "127.0.0.1:5353",
		JailerChrootBase: filepath.Join(filepath.Dir(root), "jail"),
	}
	if err := p.Check(); err != nil {
		t.Fatal(err)
	}
	return p
}

// refusal fails t unless err is nil or wraps ErrInvalidArgument.
func refusal(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil && !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("%s: error without ErrInvalidArgument: %v", what, err)
	}
}

// helperImpliesLocal fails t when the helper accepted what the in-process
// path refuses.
func helperImpliesLocal(t *testing.T, what string, helper, local error) {
	t.Helper()
	refusal(t, what+" (helper)", helper)
	refusal(t, what+" (in-process)", local)
	if helper == nil && local != nil {
		t.Fatalf("%s: the helper accepts what the in-process path refuses: %v", what, local)
	}
}

func plainName(s string) bool {
	return s != "" && !strings.ContainsAny(s, "/ \t\n\r\x00") && s != "." && s != ".."
}

func FuzzValidateIfName(f *testing.F) {
	for _, s := range []string{"br-banger", "bgtap1", "bgtapp0a1b2c3d4", "eth0", "eth0.100", "x_y", "-x", "BR0", "", "0123456789abcdef", "bgtap", "bgtap/1", "bgtapé"} {
		f.Add(s)
	}
	p := fuzzPolicy(f)
	f.Fuzz(func(t *testing.T, s string) {
		ifErr, tapErr := ValidateIfName(s), ValidateTapName(s)
		refusal(t, "ifname", ifErr)
		helperImpliesLocal(t, "tap", p.ValidateTapName("tap", s), tapErr)
		if ifErr == nil && (len(s) > 15 || strings.Trim(s, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" || s[0] == '-') {
			t.Fatalf("interface %q accepted", s)
		}
		if tapErr == nil && (ifErr != nil || !strings.HasPrefix(s, TapNamePrefix) || s == TapNamePrefix) {
			t.Fatalf("tap %q accepted", s)
		}
		if p.ValidateBridgeName(s) == nil && s != p.BridgeName {
			t.Fatalf("bridge %q accepted", s)
		}
	})
}

func FuzzValidateBridgeSpec(f *testing.F) {
	f.Add("br-banger", "172.30.0.1/24", 1500, "")
	f.Add("br-banger", "172.30.0.0/24", 0, "eth0")
	f.Add("docker0", "0.0.0.0/0", 9000, "br-banger")
	f.Add("br-banger", "172.30.0.1/24", 100, "bgtap1")
	f.Add("bgtapx", "fd00::1/64", -1, "eth0.100")
	p := fuzzPolicy(f)
	f.Fuzz(func(t *testing.T, name, cidr string, mtu int, uplink string) {
		spec := BridgeSpec{Name: name, CIDR: cidr, MTU: mtu, Uplink: uplink}
		local := ValidateBridgeSpec(spec)
		helperImpliesLocal(t, "bridge", p.ValidateBridge(spec), local)
		if local == nil && (!plainName(name) || !plainName(uplink) && uplink != "" || uplink == name) {
			t.Fatalf("bridge %+v accepted", spec)
		}
	})
}

func FuzzValidateTapSpec(f *testing.F) {
	f.Add("bgtap1", "br-banger", 1000, 1001)
	f.Add("bgtap1", "eth0", -1, -1)
	f.Add("eth0", "br-banger", 0, 0)
	f.Add("bgtap1", "br-banger", -2, 5)
	p := fuzzPolicy(f)
	f.Fuzz(func(t *testing.T, name, bridge string, owner, group int) {
		spec := TapSpec{Name: name, Bridge: bridge, Owner: owner, Group: group}
		local := ValidateTapSpec(spec)
		helper := p.ValidateTap(spec)
		helperImpliesLocal(t, "tap", helper, local)
		if helper == nil && (bridge != p.BridgeName || owner != -1 && owner != p.OwnerUID) {
			t.Fatalf("helper accepted tap %+v", spec)
		}
	})
}

func FuzzValidateVMNetSpec(f *testing.F) {
	f.Add("172.30.0.9", "02:ba:ac:1e:00:09", "bgtap1", "br-banger", true, false)
	f.Add("172.30.0.1", "02:ba:ac:1e:00:01", "bgtap1", "br-banger", false, true)
	f.Add("8.8.8.8", "ff:ff:ff:ff:ff:ff", "eth0", "docker0", true, true)
	f.Add("172.30.0.255", "02:BA:AC:1E:00:09", "bgtap1", "br-banger", false, false)
	p := fuzzPolicy(f)
	f.Fuzz(func(t *testing.T, ip, mac, tap, bridge string, nat, lan bool) {
		spec := VMNetSpec{VMIP: ip, MAC: mac, Tap: tap, Bridge: bridge, NAT: nat, AllowLAN: lan}
		local := ValidateVMNetSpec(spec)
		helper := p.ValidateVMNet(spec)
		helperImpliesLocal(t, "vmnet", helper, local)
		if helper == nil && (!strings.HasPrefix(ip, "172.30.0.") || bridge != p.BridgeName) {
			t.Fatalf("helper accepted %+v", spec)
		}
	})
}

func FuzzValidateResolverSpec(f *testing.F) {
	f.Add("br-banger", "127.0.0.1:5353", "vm", true)
	f.Add("br-banger", "127.0.0.1:5353", "~vm.", true)
	f.Add("br-banger", "127.0.0.1:53", "com", true)
	f.Add("eth0", "", "", false)
	f.Add("br-banger", "[::1]:53", "~.", true)
	p := fuzzPolicy(f)
	f.Fuzz(func(t *testing.T, bridge, server, domain string, enable bool) {
		spec := ResolverSpec{Bridge: bridge, Server: server, Domain: domain, Enable: enable}
		local := ValidateResolverSpec(spec)
		helper := p.ValidateResolver(spec)
		helperImpliesLocal(t, "resolver", helper, local)
		if helper == nil && enable && (server != p.DNSServer || strings.Trim(domain, "~.") != "vm") {
			t.Fatalf("helper routed %+v", spec)
		}
	})
}

func FuzzValidateLoopSpec(f *testing.F) {
	for _, s := range []string{"/etc/hostname", "/etc/../etc/hostname", "relative", "", "/dev/null", "/proc/self/root/etc/hostname", "/tmp/\n"} {
		f.Add(s)
	}
	p := fuzzPolicy(f)
	f.Fuzz(func(t *testing.T, file string) {
		local := ValidateLoopSpec(LoopSpec{File: file})
		helper := p.ValidateLoop(LoopSpec{File: file})
		helperImpliesLocal(t, "loop", helper, local)
		if local == nil && (!filepath.IsAbs(file) || filepath.Clean(file) != file) {
			t.Fatalf("loop file %q accepted", file)
		}
		if helper == nil && !strings.HasPrefix(file, p.ManagedRoots[0]+"/") {
			t.Fatalf("helper accepted loop file %q", file)
		}
	})
}

func FuzzValidateSnapshotSpec(f *testing.F) {
	f.Add("banger-a", "/dev/loop7", "/dev/loop8", int64(1<<30))
	f.Add("banger-a", "/dev/loop7", "/dev/loop7", int64(512))
	f.Add("vg0-root", "/dev/sda", "/dev/loop1", int64(513))
	f.Add("banger-a+b", "/dev/loop12345678", "/dev/loop0", int64(-512))
	p := fuzzPolicy(f)
	p.SysDir = p.ManagedRoots[0] // no loop devices: none backed by anyone
	f.Fuzz(func(t *testing.T, name, origin, cow string, size int64) {
		spec := SnapshotSpec{Name: name, Origin: origin, COW: cow, SizeBytes: size}
		local := ValidateSnapshotSpec(spec)
		helperImpliesLocal(t, "snapshot", p.ValidateSnapshot(spec), local)
		helperImpliesLocal(t, "dm name", p.ValidateDMName("dm", name), ValidateDMName(name))
		helperImpliesLocal(t, "loop device", p.ValidateLoopDevice("dev", origin), ValidateLoopDevice(origin))
		if local == nil && (!plainName(name) || origin == cow || size <= 0 || size%512 != 0 ||
			!strings.HasPrefix(origin, "/dev/loop") || strings.Trim(origin[len("/dev/loop"):], "0123456789") != "") {
			t.Fatalf("snapshot %+v accepted", spec)
		}
	})
}

func FuzzValidateLaunchSpec(f *testing.F) {
	f.Add("firecracker\x00--api-sock\x00/run/fc.sock", "/run", "/run/vm.log", "/run/vm.pid", 1000, 1001, "PATH=/usr/bin")
	f.Add("/bin/sh\x00-c\x00id", "/run", "/run/x.log", "", 0, 0, "")
	f.Add("jailer\x00--id\x00a\x00--exec-file\x00firecracker\x00--uid\x001000\x00--gid\x001001\x00--chroot-base-dir\x00/jail\x00--daemonize", "/run", "/run/x.log", "", -1, -1, "LD_PRELOAD=/x.so")
	f.Add("qemu-system-x86_64\x00\x00-m", "run", "/run/../etc/x", "/run/p", -1, 5, "=x")
	p := fuzzPolicy(f)
	f.Fuzz(func(t *testing.T, argv, dir, logPath, pidFile string, uid, gid int, env string) {
		spec := LaunchSpec{Argv: strings.Split(argv, "\x00"), Dir: dir, LogPath: logPath, PIDFile: pidFile, UID: uid, GID: gid}
		if env != "" {
			spec.Env = strings.Split(env, "\n")
		}
		local := ValidateLaunchSpec(spec)
		_, helper := p.ValidateLaunch(spec)
		helperImpliesLocal(t, "launch", helper, local)
		if local == nil {
			for _, e := range spec.Env {
				if strings.HasPrefix(e, "LD_") || strings.HasPrefix(e, "GCONV_PATH=") {
					t.Fatalf("loader variable %q accepted", e)
				}
			}
			if !vmmBinaryRE.MatchString(filepath.Base(spec.Argv[0])) {
				t.Fatalf("program %q accepted", spec.Argv[0])
			}
		}
	})
}

func FuzzValidateSignalArgs(f *testing.F) {
	f.Add(4242, "firecracker", "/run/banger/vms/a/firecracker.sock\x00", 15)
	f.Add(1, "firecracker", "abcd", 9)
	f.Add(4242, "sshd", "ab", 19)
	f.Add(4242, "qemu-system-x86_64", "a\x00bcd", 0)
	p := fuzzPolicy(f)
	f.Fuzz(func(t *testing.T, pid int, comm, marker string, sig int) {
		id := ProcessIdentity{PID: pid, Comm: comm, Marker: marker}
		local := ValidateSignalArgs(id, syscall.Signal(sig))
		helperImpliesLocal(t, "signal", p.ValidateSignal(id, syscall.Signal(sig)), local)
		if local == nil && (pid <= 1 || len(marker) < 4 || strings.ContainsRune(strings.TrimSuffix(marker, "\x00"), 0) ||
			sig != 15 && sig != 9 && sig != 2 && sig != 1 && sig != 10) {
			t.Fatalf("signal %d to %+v accepted", sig, id)
		}
	})
}

func FuzzValidateChownArgs(f *testing.F) {
	f.Add("/etc/shadow", 1000, 1001)
	f.Add("/run/banger/vms/a/fc.sock", -1, 0)
	f.Add("rel/x", 0, 0)
	f.Add("/run/../etc", 1000, 1001)
	p := fuzzPolicy(f)
	f.Fuzz(func(t *testing.T, path string, uid, gid int) {
		local := ValidateChownArgs(path, uid, gid)
		helper := p.ValidateChown(path, uid, gid)
		helperImpliesLocal(t, "chown", helper, local)
		if helper == nil && (uid != p.OwnerUID || gid != p.OwnerGID || !strings.HasPrefix(path, p.ManagedRoots[0])) {
			t.Fatalf("helper chowns %q to %d:%d", path, uid, gid)
		}
	})
}

func FuzzValidateJailSpec(f *testing.F) {
	f.Add("firecracker", "vm-1", "vmlinux", "/var/lib/banger/kernels/k/vmlinux", "serial.log", 1000, 1001)
	f.Add("firecracker", "..", "../../etc/passwd", "/etc/shadow", "run", 0, 0)
	f.Add("qemu-system-x86_64", "a/b", "firecracker", "/dev/mapper/banger-a", ".", -1, 1)
	f.Add("firecracker-v1", "vm-2", "drive-root", "/dev/mapper/vg0-root", "firecracker.pid", 1000, 1001)
	p := fuzzPolicy(f)
	f.Fuzz(func(t *testing.T, exec, id, name, source, create string, uid, gid int) {
		spec := JailSpec{ExecName: exec, ID: id, UID: uid, GID: gid, Files: []JailFile{{Name: name, Source: source}}, Create: []string{create}}
		local := ValidateJailSpec(spec)
		helperImpliesLocal(t, "jail", p.ValidateJail(spec), local)
		helperImpliesLocal(t, "remove jail", p.ValidateRemoveJail(JailSpec{ExecName: exec, ID: id}), checkJailerID("id", id))
		if local == nil && (!plainName(exec) || !plainName(id) || !plainName(name) || !plainName(create) ||
			name == "run" || create == "run" || name == create || filepath.Clean(source) != source) {
			t.Fatalf("jail %+v accepted", spec)
		}
	})
}

// handlerMap collects the helper's handlers to call them without a socket.
type handlerMap map[string]rpc.Handler

func (m handlerMap) Handle(method string, h rpc.Handler) { m[method] = h }

// FuzzHelperRequest decodes params as the request of a helper method
// (rpc.Typed's decoding), validates and, when accepted, passes it to a
// fake implementation: whatever reaches the implementation must also pass
// the in-process validator of that operation (one set of rules), and
// every refusal must be a bad_request.
func FuzzHelperRequest(f *testing.F) {
	f.Add(MethodCreateTap, []byte(`{"name":"bgtap1","bridge":"br-banger","owner":1000,"group":1001}`))
	f.Add(MethodDeleteTap, []byte(`{"name":"eth0"}`))
	f.Add(MethodEnsureBridge, []byte(`{"name":"br-banger","cidr":"172.30.0.1/24","mtu":1500}`))
	f.Add(MethodChownPath, []byte(`{"path":"/etc/shadow","uid":1000,"gid":1001}`))
	f.Add(MethodSignalVMM, []byte(`{"identity":{"pid":1,"comm":"firecracker","marker":"abcd"},"signal":9}`))
	f.Add(MethodPrepareJail, []byte(`{"exec_name":"firecracker","id":"vm-1","uid":1000,"gid":1001,"files":[{"name":"vmlinux","source":"/etc/shadow"}]}`))
	f.Add(MethodLaunchVMM, []byte(`{"argv":["/bin/sh"],"dir":"/","log_path":"/x","uid":0,"gid":0}`))
	f.Add("privops.Nope", []byte(`{}`))
	f.Add(MethodEnsureVMNet, []byte(`{"vm_ip":"172.30.0.9","mac":"02:ba:ac:1e:00:09","tap":"bgtap1","bridge":"br-banger","nat":true}`))
	f.Add(MethodSetResolverRouting, []byte(`{"bridge":"br-banger","server":"127.0.0.1:5353","domain":"vm","enable":true}`))
	f.Add(MethodCreateSnapshot, []byte(`{"name":"banger-a","origin":"/dev/loop7","cow":"/dev/loop8","size_bytes":512}`))
	f.Add(MethodRemoveJail, []byte(`{"exec_name":"firecracker","id":"../.."}`))
	f.Add(MethodAttachLoop, []byte(`{"file":"/etc/shadow","read_only":true}`))
	f.Add(MethodDetachLoop, []byte(`[1,2]`))
	f.Add(MethodRemoveSnapshot, []byte(`{"name":null}`))
	f.Add(MethodDeleteBridge, []byte(`null`))
	f.Add(MethodClearVMNet, []byte(`{"vm_ip":"172.30.0.9","mac":"02:ba:ac:1e:00:09","tap":"bgtap1","bridge":"br-banger","extra":1}`))
	p := fuzzPolicy(f)
	p.SysDir = p.ManagedRoots[0]
	fake := &fakeOps{}
	handlers := handlerMap{}
	registerHelper(handlers, fake, &ServerConfig{Policy: *p})
	f.Fuzz(func(t *testing.T, method string, params []byte) {
		h, ok := handlers[method]
		if !ok {
			return
		}
		_, err := h(context.Background(), json.RawMessage(params))
		calls := fake.take()
		if err != nil {
			var re *rpc.Error
			if !errors.As(err, &re) || re.Code != rpc.CodeBadRequest {
				t.Fatalf("%s %q: refusal is not bad_request: %v", method, params, err)
			}
			if len(calls) != 0 {
				t.Fatalf("%s %q: refused but reached the implementation", method, params)
			}
			return
		}
		for _, c := range calls {
			var local error
			switch a := c.Args[0].(type) {
			case BridgeSpec:
				local = ValidateBridgeSpec(a)
			case TapSpec:
				local = ValidateTapSpec(a)
			case VMNetSpec:
				local = ValidateVMNetSpec(a)
			case ResolverSpec:
				local = ValidateResolverSpec(a)
			case LoopSpec:
				local = ValidateLoopSpec(a)
			case SnapshotSpec:
				local = ValidateSnapshotSpec(a)
			case LaunchSpec:
				local = ValidateLaunchSpec(a)
			case ProcessIdentity:
				local = ValidateSignalArgs(a, c.Args[1].(syscall.Signal))
			case JailSpec:
				if c.Method == "PrepareJail" {
					local = ValidateJailSpec(a)
				}
			case string:
				switch c.Method {
				case "DeleteBridge":
					local = ValidateIfName(a)
				case "DeleteTap":
					local = ValidateTapName(a)
				case "DetachLoop":
					local = ValidateLoopDevice(a)
				case "RemoveSnapshot":
					local = ValidateDMName(a)
				case "ChownPath":
					local = ValidateChownArgs(a, c.Args[1].(int), c.Args[2].(int))
				}
			}
			if local != nil {
				t.Fatalf("%s %q reached the implementation but the in-process path refuses it: %v", method, params, local)
			}
		}
	})
}
