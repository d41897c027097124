package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/store"
)

// The leak checker compares what the host holds for one test environment
// with the VM records (`banger vm list --json`): every host object must
// belong to a VM whose record says it holds it, and a VM that runs must
// have all of them. It reads the host the way an operator would:
//
//   - links: `ip -d -j link show` in the environment's netns (taps and
//     bridges);
//   - loop devices: `losetup -J` (global), those backed by files under the
//     environment's directory;
//   - nftables: `nft -j list ruleset` in the netns, filtered to banger's
//     tables (family ip and bridge, named "banger"): the per-VM set
//     elements, and rules (each must carry a "banger:" comment, none
//     duplicated);
//   - processes: /proc, every VMM (qemu, firecracker, the Firecracker
//     double) whose command line names the environment's directory or that
//     runs in its netns;
//   - files: the VMs' state and runtime directories;
//   - leases: the store's lease table;
//   - DNS: the daemon's <name>.vm records (dig against its listener).
//
// hostState is the snapshot; findLeaks is the pure comparison, unit tested
// on canned tool output (TestLeakCheckerFindsLeaks), so the checker is
// known to be able to fail.

// hostLink is one network interface (ip -d -j link).
type hostLink struct {
	Name   string
	Kind   string // linkinfo.info_kind: tun, bridge, ...
	Master string
}

// loopDev is one loop device (losetup -J) and its backing file.
type loopDev struct {
	Name     string
	BackFile string
}

// nftRule is one rule of banger's tables.
type nftRule struct {
	Chain   string // family/chain
	Comment string
	Expr    string // the rule's expression, JSON
}

// vmmProc is one VMM process.
type vmmProc struct {
	PID, PPID int
	Comm      string
}

// hostState is a snapshot of the host objects of one environment.
type hostState struct {
	Links  []hostLink
	Loops  []loopDev
	Sets   map[string][]string // "family/set" → elements ("a . b . c" for concatenations)
	Rules  []nftRule
	VMMs   []vmmProc
	Leases []model.Lease
	// VMDirs maps a directory name under <state>/vms to the files in it;
	// RunDirs lists the names under <runtime>/vms.
	VMDirs  map[string][]string
	RunDirs []string
	// DNS maps a VM name to the addresses the daemon's DNS answers for
	// <name>.vm (nil when DNS was not checked).
	DNS map[string][]string
}

// leakPolicy is what the environment allows besides the VMs' own objects.
type leakPolicy struct {
	Dir      string // the environment's directory (loops backed by files under it are its)
	Bridge   string // the bridge banger uses
	TapPool  int    // idle pool taps allowed (prefix bgtapp)
	TapPoolP string // pool tap prefix
}

// parseIPLinks decodes `ip -d -j link show`.
func parseIPLinks(data []byte) ([]hostLink, error) {
	var raw []struct {
		IfName   string `json:"ifname"`
		Master   string `json:"master"`
		LinkInfo *struct {
			Kind string `json:"info_kind"`
		} `json:"linkinfo"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("decode ip -j link: %w", err)
	}
	res := make([]hostLink, 0, len(raw))
	for _, l := range raw {
		hl := hostLink{Name: l.IfName, Master: l.Master}
		if l.LinkInfo != nil {
			hl.Kind = l.LinkInfo.Kind
		}
		res = append(res, hl)
	}
	return res, nil
}

// parseLosetup decodes `losetup -J` (empty output: no loop devices).
func parseLosetup(data []byte) ([]loopDev, error) {
	if len(strings.TrimSpace(string(data))) == 0 {
		return nil, nil
	}
	var raw struct {
		Loops []struct {
			Name     string `json:"name"`
			BackFile string `json:"back-file"`
		} `json:"loopdevices"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("decode losetup -J: %w", err)
	}
	res := make([]loopDev, 0, len(raw.Loops))
	for _, l := range raw.Loops {
		res = append(res, loopDev{Name: l.Name, BackFile: strings.TrimSuffix(l.BackFile, " (deleted)")})
	}
	return res, nil
}

// parseNFTRuleset decodes `nft -j list ruleset`, keeping banger's tables:
// set elements by "family/set" and rules.
func parseNFTRuleset(data []byte) (map[string][]string, []nftRule, error) {
	sets := map[string][]string{}
	var rules []nftRule
	if len(strings.TrimSpace(string(data))) == 0 {
		return sets, nil, nil
	}
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, nil, fmt.Errorf("decode nft -j: %w", err)
	}
	for _, item := range doc.Nftables {
		if raw, ok := item["set"]; ok {
			var s struct {
				Family string            `json:"family"`
				Table  string            `json:"table"`
				Name   string            `json:"name"`
				Elem   []json.RawMessage `json:"elem"`
			}
			if err := json.Unmarshal(raw, &s); err != nil {
				return nil, nil, fmt.Errorf("decode nft set: %w", err)
			}
			if s.Table != "banger" {
				continue
			}
			key := s.Family + "/" + s.Name
			els := []string{}
			for _, el := range s.Elem {
				els = append(els, nftElem(el))
			}
			sort.Strings(els)
			sets[key] = els
		}
		if raw, ok := item["rule"]; ok {
			var r struct {
				Family  string          `json:"family"`
				Table   string          `json:"table"`
				Chain   string          `json:"chain"`
				Comment string          `json:"comment"`
				Expr    json.RawMessage `json:"expr"`
			}
			if err := json.Unmarshal(raw, &r); err != nil {
				return nil, nil, fmt.Errorf("decode nft rule: %w", err)
			}
			if r.Table != "banger" {
				continue
			}
			rules = append(rules, nftRule{Chain: r.Family + "/" + r.Chain, Comment: r.Comment, Expr: string(r.Expr)})
		}
	}
	return sets, rules, nil
}

// nftElem renders one set element: a string, a concatenation ("a . b"), or
// anything else as its JSON.
func nftElem(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var c struct {
		Concat []json.RawMessage `json:"concat"`
	}
	if json.Unmarshal(raw, &c) == nil && len(c.Concat) > 0 {
		parts := make([]string, len(c.Concat))
		for i, p := range c.Concat {
			parts[i] = nftElem(p)
		}
		return strings.Join(parts, " . ")
	}
	var e struct {
		Elem struct {
			Val json.RawMessage `json:"val"`
		} `json:"elem"`
	}
	if json.Unmarshal(raw, &e) == nil && len(e.Elem.Val) > 0 {
		return nftElem(e.Elem.Val)
	}
	return string(raw)
}

// findLeaks compares the host with the records and lists every problem:
// objects no VM holds, and running VMs missing objects they need.
func findLeaks(vms []*model.VM, h hostState, p leakPolicy) []string {
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	byID := map[string]*model.VM{}
	running := map[string]*model.VM{}
	for _, vm := range vms {
		byID[vm.ID] = vm
		if vm.State == model.StateRunning {
			running[vm.ID] = vm
		}
	}

	// Links: a tap belongs to a running VM, or is an idle pool tap (at most
	// the pool size); the only bridge is banger's.
	wantTaps := map[string]string{}
	for _, vm := range running {
		if vm.Runtime.Tap == "" {
			add("running VM %s has no tap", vm.Name)
			continue
		}
		wantTaps[vm.Runtime.Tap] = vm.Name
	}
	haveLinks := map[string]bool{}
	idlePool := 0
	for _, l := range h.Links {
		haveLinks[l.Name] = true
		switch {
		case strings.HasPrefix(l.Name, "bgtap"):
			if wantTaps[l.Name] != "" {
				continue
			}
			if p.TapPoolP != "" && strings.HasPrefix(l.Name, p.TapPoolP) {
				idlePool++
				continue
			}
			add("leaked tap %s", l.Name)
		case l.Kind == "bridge" && l.Name != p.Bridge:
			add("unexpected bridge %s", l.Name)
		}
	}
	if idlePool > p.TapPool {
		add("%d idle pool taps, pool size is %d (pool taps leaked)", idlePool, p.TapPool)
	}
	for tap, name := range wantTaps {
		if !haveLinks[tap] {
			add("running VM %s: its tap %s is gone", name, tap)
		}
	}

	// Loop devices backed by the environment's files: only those a running
	// VM records.
	wantLoops := map[string]bool{}
	for _, vm := range running {
		for _, l := range vm.Runtime.Loops {
			wantLoops[l] = true
		}
	}
	for _, l := range h.Loops {
		if p.Dir != "" && strings.HasPrefix(l.BackFile, p.Dir+"/") && !wantLoops[l.Name] {
			add("leaked loop %s (%s)", l.Name, l.BackFile)
		}
	}

	// nftables: the per-VM elements are exactly the running VMs'.
	want := map[string][]string{"bridge/bind": {}, "bridge/lan_taps": {}, "ip/nat_vms": {}, "ip/lan_vms": {}}
	for _, vm := range running {
		if vm.Runtime.Tap != "" && vm.IP != "" {
			want["bridge/bind"] = append(want["bridge/bind"], fmt.Sprintf("%s . %s . %s", vm.Runtime.Tap, strings.ToLower(vm.MAC), vm.IP))
		}
		if vm.NAT {
			want["ip/nat_vms"] = append(want["ip/nat_vms"], vm.IP)
		}
		if vm.AllowLAN {
			want["ip/lan_vms"] = append(want["ip/lan_vms"], vm.IP)
			want["bridge/lan_taps"] = append(want["bridge/lan_taps"], vm.Runtime.Tap)
		}
	}
	for set, w := range want {
		got, ok := h.Sets[set]
		if !ok {
			if len(w) > 0 {
				add("nft set %s is missing; want %v", set, w)
			}
			continue
		}
		sort.Strings(w)
		if strings.Join(got, ",") != strings.Join(w, ",") {
			add("nft set %s holds %v, want %v", set, got, w)
		}
	}
	seen := map[string]bool{}
	for _, r := range h.Rules {
		if !strings.HasPrefix(r.Comment, "banger:") {
			add("nft rule in %s without a banger comment: %s", r.Chain, r.Expr)
		}
		k := r.Chain + "\x00" + r.Comment + "\x00" + r.Expr
		if seen[k] {
			add("nft rule %s %q is duplicated", r.Chain, r.Comment)
		}
		seen[k] = true
	}

	// VMM processes: a running VM's (and its children, such as the
	// Firecracker double's qemu); every running VM's VMM is alive.
	wantPIDs := map[int]bool{}
	for _, vm := range running {
		wantPIDs[vm.Runtime.PID] = true
	}
	alive := map[int]bool{}
	for _, pr := range h.VMMs {
		alive[pr.PID] = true
		if !wantPIDs[pr.PID] && !wantPIDs[pr.PPID] {
			add("leaked VMM pid %d (%s)", pr.PID, pr.Comm)
		}
	}
	for _, vm := range running {
		if !alive[vm.Runtime.PID] {
			add("running VM %s: its VMM pid %d is gone", vm.Name, vm.Runtime.PID)
		}
	}

	// Leases: each belongs to a VM that records that address.
	for _, l := range h.Leases {
		vm := byID[l.VMID]
		if vm == nil || vm.IP != l.IP {
			add("leaked lease %s of vm %s", l.IP, l.VMID)
		}
	}

	// Files: runtime dirs only for running VMs; a VM dir only for a VM with
	// disks (or a failed first start's console log); no scratch files.
	for _, d := range h.RunDirs {
		if running[d] == nil {
			add("leaked runtime dir vms/%s", d)
		}
	}
	for d, files := range h.VMDirs {
		vm := byID[d]
		if vm != nil && !vm.Runtime.Provisioned && vm.Runtime.LogPath != "" && len(files) == 1 && files[0] == "console.log" {
			continue // a failed first start keeps its console log for `vm logs`
		}
		if vm == nil || !vm.Runtime.Provisioned {
			add("leaked VM dir vms/%s %v", d, files)
			continue
		}
		for _, f := range files {
			if strings.HasSuffix(f, ".new") || strings.HasSuffix(f, ".tmp") || strings.HasPrefix(f, ".") {
				add("leaked scratch file vms/%s/%s", d, f)
			}
		}
	}

	// DNS: <name>.vm answers for running VMs only, with their address.
	if h.DNS != nil {
		for _, vm := range vms {
			got := h.DNS[vm.Name]
			switch {
			case vm.State == model.StateRunning && (len(got) != 1 || got[0] != vm.IP):
				add("DNS %s.vm answers %v, want %s", vm.Name, got, vm.IP)
			case vm.State != model.StateRunning && len(got) > 0:
				add("DNS %s.vm answers %v for a VM that is %s", vm.Name, got, vm.State)
			}
		}
	}
	sort.Strings(problems)
	return problems
}

// hostSnapshot reads the host objects of the environment.
func (e *env) hostSnapshot(vms []*model.VM) (hostState, error) {
	var h hostState
	out, err := exec.Command("ip", "-n", e.ns, "-d", "-j", "link", "show").Output()
	if err != nil {
		return h, fmt.Errorf("ip link: %w", err)
	}
	if h.Links, err = parseIPLinks(out); err != nil {
		return h, err
	}
	out, err = exec.Command("losetup", "-J").Output()
	if err != nil {
		return h, fmt.Errorf("losetup -J: %w", err)
	}
	if h.Loops, err = parseLosetup(out); err != nil {
		return h, err
	}
	out, err = exec.Command("ip", "netns", "exec", e.ns, "nft", "-j", "list", "ruleset").Output()
	if err != nil {
		return h, fmt.Errorf("nft list ruleset: %w", err)
	}
	if h.Sets, h.Rules, err = parseNFTRuleset(out); err != nil {
		return h, err
	}
	h.VMMs = e.vmmProcs()
	ctx := context.Background()
	st, err := store.Open(ctx, e.layout.DBPath())
	if err != nil {
		return h, fmt.Errorf("open store: %w", err)
	}
	leases, err := st.ListLeases(ctx)
	st.Close()
	if err != nil {
		return h, fmt.Errorf("list leases: %w", err)
	}
	h.Leases = leases
	h.VMDirs = map[string][]string{}
	if ents, err := os.ReadDir(filepath.Join(e.layout.StateDir, "vms")); err == nil {
		for _, d := range ents {
			files, _ := os.ReadDir(filepath.Join(e.layout.StateDir, "vms", d.Name()))
			names := []string{}
			for _, f := range files {
				names = append(names, f.Name())
			}
			h.VMDirs[d.Name()] = names
		}
	}
	if ents, err := os.ReadDir(filepath.Join(e.layout.RuntimeDir, "vms")); err == nil {
		for _, d := range ents {
			h.RunDirs = append(h.RunDirs, d.Name())
		}
	}
	if _, err := exec.LookPath("dig"); err == nil {
		h.DNS = map[string][]string{}
		for _, vm := range vms {
			out, _ := exec.Command("ip", "netns", "exec", e.ns, "dig", "+short", "+time=1", "+tries=1", "@127.0.0.1", vm.Name+".vm", "A").Output()
			for _, a := range strings.Fields(string(out)) {
				h.DNS[vm.Name] = append(h.DNS[vm.Name], a)
			}
		}
	}
	return h, nil
}

// vmmProcs lists the VMM processes of the environment from /proc: in its
// netns, or naming its directory on their command line.
func (e *env) vmmProcs() []vmmProc {
	inNS := map[int]bool{}
	for pid := range e.nsPIDs() {
		inNS[pid] = true
	}
	ents, _ := os.ReadDir("/proc")
	var res []vmmProc
	for _, d := range ents {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err != nil {
			continue
		}
		c := strings.TrimSpace(string(comm))
		if !strings.HasPrefix(c, "qemu") && !strings.HasPrefix(c, "firecracker") && !strings.HasPrefix(c, "fakefc") {
			continue
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if !inNS[pid] && !strings.Contains(string(cmdline), e.dir+"/") {
			continue
		}
		res = append(res, vmmProc{PID: pid, PPID: ppid(pid), Comm: c})
	}
	return res
}

// leakReport checks the host side against the records and returns the
// problems found (see findLeaks).
func (e *env) leakReport() []string {
	e.t.Helper()
	vms := e.list()
	h, err := e.hostSnapshot(vms)
	if err != nil {
		return []string{"reading the host: " + err.Error()}
	}
	return findLeaks(vms, h, leakPolicy{Dir: e.dir, Bridge: config.DefaultBridge, TapPool: e.tapPool, TapPoolP: "bgtapp"})
}

// natElements lists the addresses in banger's nft NAT set.
func (e *env) natElements() []string {
	out, err := exec.Command("ip", "netns", "exec", e.ns, "nft", "-j", "list", "ruleset").Output()
	if err != nil {
		return []string{}
	}
	sets, _, err := parseNFTRuleset(out)
	if err != nil || sets["ip/nat_vms"] == nil {
		return []string{}
	}
	return sets["ip/nat_vms"]
}

func (e *env) assertNoLeaks(when string) {
	e.t.Helper()
	if p := e.leakReport(); len(p) > 0 {
		e.t.Errorf("%s: leaks:\n  %s", when, strings.Join(p, "\n  "))
	}
}
