package agent_test

import (
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/agent"
)

const procTCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 100 0 0 10 0
   2: 0500A8C0:0016 0100A8C0:D431 01 00000000:00000000 02:0009A3D2 00000000     0        0 1003 4 0000000000000000 20 4 29 10 -1
`

const procTCP6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2001 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2002 1 0000000000000000 100 0 0 10 0
`

const procUDP = `   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  100: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 3001 2 0000000000000000 0
  101: 0500A8C0:A1B2 08080808:0035 01 00000000:00000000 00:00000000 00000000     0        0 3002 2 0000000000000000 0
`

func TestParseProcNet(t *testing.T) {
	s, err := agent.ParseProcNet([]byte(procTCP), "tcp")
	if err != nil {
		t.Fatal(err)
	}
	want := []agent.ProcSocket{
		{Proto: "tcp", Addr: netip.MustParseAddr("0.0.0.0"), Port: 22, Inode: 1001},
		{Proto: "tcp", Addr: netip.MustParseAddr("127.0.0.1"), Port: 3306, Inode: 1002},
	}
	if len(s) != 2 || s[0] != want[0] || s[1] != want[1] {
		t.Fatalf("tcp = %+v", s)
	}
	s, err = agent.ParseProcNet([]byte(procTCP6), "tcp6")
	if err != nil {
		t.Fatal(err)
	}
	if len(s) != 2 || s[0].Addr.String() != "::" || s[1].Addr.String() != "::1" || s[1].Port != 8080 {
		t.Fatalf("tcp6 = %+v", s)
	}
	s, err = agent.ParseProcNet([]byte(procUDP), "udp")
	if err != nil {
		t.Fatal(err)
	}
	if len(s) != 1 || s[0].Port != 68 || s[0].Inode != 3001 {
		t.Fatalf("udp = %+v (connected sockets must be left out)", s)
	}
	for _, bad := range []string{"  0: zz:0016 00000000:0000 0A 0 0 0 0 0 1", "  0: 00000000:0016", "  0: 0000:0016 00000000:0000 0A a b c d e 1"} {
		if _, err := agent.ParseProcNet([]byte("hdr local_address\n"+bad+"\n"), "tcp"); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

func TestListPorts(t *testing.T) {
	proc := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(proc, "net"), 0o755))
	must(os.WriteFile(filepath.Join(proc, "net", "tcp"), []byte(procTCP), 0o644))
	must(os.WriteFile(filepath.Join(proc, "net", "udp"), []byte(procUDP), 0o644))
	// pid 300 holds the sshd socket, pid 40 the mysql one (and the sshd one
	// too: the lowest pid wins).
	for pid, socks := range map[string][]string{"300": {"1001"}, "40": {"1002"}, "7": {}} {
		must(os.MkdirAll(filepath.Join(proc, pid, "fd"), 0o755))
		for i, ino := range socks {
			must(os.Symlink("socket:["+ino+"]", filepath.Join(proc, pid, "fd", string(rune('3'+i)))))
		}
	}
	must(os.Symlink("/dev/null", filepath.Join(proc, "7", "fd", "0")))
	must(os.WriteFile(filepath.Join(proc, "300", "comm"), []byte("sshd\n"), 0o644))
	must(os.WriteFile(filepath.Join(proc, "40", "comm"), []byte("mysqld\n"), 0o644))
	p, err := agent.ListPorts(proc)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, x := range p {
		got = append(got, strings.Join([]string{x.Proto, x.Address, itoa(x.Port), itoa(x.PID), x.Process}, " "))
	}
	want := "tcp 0.0.0.0 22 300 sshd|tcp 127.0.0.1 3306 40 mysqld|udp 0.0.0.0 68 0 "
	if strings.Join(got, "|") != want {
		t.Fatalf("ports:\n got %q\nwant %q", strings.Join(got, "|"), want)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestListPortsLive(t *testing.T) {
	// The real /proc of the test process: at least it parses.
	if _, err := agent.ListPorts("/proc"); err != nil {
		t.Fatal(err)
	}
}

func FuzzParseProcNet(f *testing.F) {
	f.Add([]byte(procTCP), false)
	f.Add([]byte(procTCP6), true)
	f.Add([]byte(procUDP), false)
	f.Fuzz(func(t *testing.T, data []byte, v6 bool) {
		proto := "tcp"
		if v6 {
			proto = "tcp6"
		}
		s, err := agent.ParseProcNet(data, proto)
		if err != nil {
			return
		}
		for _, x := range s {
			if x.Port < 0 || x.Port > 65535 || !x.Addr.IsValid() {
				t.Fatalf("bad socket %+v", x)
			}
		}
	})
}
