package agent

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// ProcSocket is one listening entry of /proc/net/{tcp,tcp6,udp,udp6}.
type ProcSocket struct {
	Proto string
	Addr  netip.Addr
	Port  int
	Inode uint64
}

// ParseProcNet reads one /proc/net/{tcp,tcp6,udp,udp6} table (proto is
// the file's name) and returns the listening TCP sockets (state 0A) or the
// unconnected UDP sockets (remote address all zero). Malformed lines are an
// error; the header line is skipped.
func ParseProcNet(data []byte, proto string) ([]ProcSocket, error) {
	v6 := strings.HasSuffix(proto, "6")
	tcp := strings.HasPrefix(proto, "tcp")
	var out []ProcSocket
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	first := true
	for sc.Scan() {
		line := sc.Text()
		if first {
			first = false
			if strings.Contains(line, "local_address") {
				continue
			}
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) < 10 {
			return nil, fmt.Errorf("%s: short line %q", proto, line)
		}
		local, port, err := parseProcAddr(f[1], v6)
		if err != nil {
			return nil, fmt.Errorf("%s: local address %q: %w", proto, f[1], err)
		}
		remote, rport, err := parseProcAddr(f[2], v6)
		if err != nil {
			return nil, fmt.Errorf("%s: remote address %q: %w", proto, f[2], err)
		}
		st, err := strconv.ParseUint(f[3], 16, 8)
		if err != nil {
			return nil, fmt.Errorf("%s: state %q: %w", proto, f[3], err)
		}
		inode, err := strconv.ParseUint(f[9], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: inode %q: %w", proto, f[9], err)
		}
		if tcp && st != 0x0A {
			continue
		}
		if !tcp && (!remote.IsUnspecified() || rport != 0) {
			continue
		}
		out = append(out, ProcSocket{Proto: proto, Addr: local, Port: port, Inode: inode})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", proto, err)
	}
	return out, nil
}

// parseProcAddr decodes "0100007F:0016": the address is hex of 32-bit
// words in host (little-endian on every architecture banger runs) order.
func parseProcAddr(s string, v6 bool) (netip.Addr, int, error) {
	a, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.Addr{}, 0, fmt.Errorf("no port")
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.Addr{}, 0, fmt.Errorf("port: %w", err)
	}
	raw, err := hex.DecodeString(a)
	if err != nil {
		return netip.Addr{}, 0, fmt.Errorf("address: %w", err)
	}
	want := 4
	if v6 {
		want = 16
	}
	if len(raw) != want {
		return netip.Addr{}, 0, fmt.Errorf("address: %d bytes, want %d", len(raw), want)
	}
	var b [16]byte
	for i := 0; i < len(raw); i += 4 {
		binary.BigEndian.PutUint32(b[i:], binary.LittleEndian.Uint32(raw[i:]))
	}
	if !v6 {
		return netip.AddrFrom4([4]byte(b[:4])), int(port), nil
	}
	return netip.AddrFrom16(b).Unmap(), int(port), nil
}

// ListPorts lists the listening sockets under procRoot ("/proc") and the
// process owning each (the first pid, in numeric order, with an fd on the
// socket's inode).
func ListPorts(procRoot string) ([]Port, error) {
	var socks []ProcSocket
	for _, proto := range []string{"tcp", "tcp6", "udp", "udp6"} {
		data, err := os.ReadFile(filepath.Join(procRoot, "net", proto))
		if err != nil {
			if os.IsNotExist(err) {
				continue // no IPv6 in this kernel
			}
			return nil, fmt.Errorf("list ports: %w", err)
		}
		s, err := ParseProcNet(data, proto)
		if err != nil {
			return nil, fmt.Errorf("list ports: %w", err)
		}
		socks = append(socks, s...)
	}
	owners := socketOwners(procRoot, socks)
	out := make([]Port, 0, len(socks))
	for _, s := range socks {
		p := Port{Proto: s.Proto, Address: s.Addr.String(), Port: s.Port}
		if o, ok := owners[s.Inode]; ok && s.Inode != 0 {
			p.PID, p.Process = o.pid, o.comm
		}
		out = append(out, p)
	}
	SortPorts(out)
	return out, nil
}

// SortPorts orders ports as Client.Ports promises: by proto, port, address.
func SortPorts(ps []Port) {
	sort.SliceStable(ps, func(i, j int) bool {
		a, b := ps[i], ps[j]
		if a.Proto != b.Proto {
			return a.Proto < b.Proto
		}
		if a.Port != b.Port {
			return a.Port < b.Port
		}
		return a.Address < b.Address
	})
}

type owner struct {
	pid  int
	comm string
}

// socketOwners maps socket inodes to the lowest pid holding them.
func socketOwners(procRoot string, socks []ProcSocket) map[uint64]owner {
	want := map[uint64]bool{}
	for _, s := range socks {
		want[s.Inode] = true
	}
	out := map[uint64]owner{}
	ents, err := os.ReadDir(procRoot)
	if err != nil {
		return out
	}
	var pids []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	sort.Ints(pids)
	for _, pid := range pids {
		dir := filepath.Join(procRoot, strconv.Itoa(pid))
		fds, err := os.ReadDir(filepath.Join(dir, "fd"))
		if err != nil {
			continue // gone, or a kernel thread
		}
		for _, fd := range fds {
			l, err := os.Readlink(filepath.Join(dir, "fd", fd.Name()))
			if err != nil || !strings.HasPrefix(l, "socket:[") {
				continue
			}
			ino, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]"), 10, 64)
			if err != nil || !want[ino] {
				continue
			}
			if _, seen := out[ino]; seen {
				continue
			}
			comm, _ := os.ReadFile(filepath.Join(dir, "comm"))
			out[ino] = owner{pid: pid, comm: strings.TrimSpace(string(comm))}
		}
	}
	return out
}
