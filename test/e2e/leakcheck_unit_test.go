package e2e

import (
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/model"
)

// Canned tool output in the shapes ip, losetup and nft print.
const (
	cannedLinks = `[{"ifindex":1,"ifname":"lo","linkinfo":null},
{"ifindex":2,"ifname":"br-banger","linkinfo":{"info_kind":"bridge"}},
{"ifindex":3,"ifname":"bgtapp0011","master":"br-banger","linkinfo":{"info_kind":"tun"}},
{"ifindex":4,"ifname":"bgtapp2233","master":"br-banger","linkinfo":{"info_kind":"tun"}},
{"ifindex":5,"ifname":"bgtap0a0b0c0d","master":"br-banger","linkinfo":{"info_kind":"tun"}},
{"ifindex":6,"ifname":"br-other","linkinfo":{"info_kind":"bridge"}}]`
	cannedLoops = `{"loopdevices":[
{"name":"/dev/loop0","back-file":"/tmp/bge2e-x/state/vms/a/root.cow (deleted)"},
{"name":"/dev/loop1","back-file":"/srv/someone-else.img"}]}`
	cannedNFT = `{"nftables":[{"metainfo":{"version":"1.0.6"}},
{"table":{"family":"ip","name":"banger","handle":1}},
{"set":{"family":"ip","name":"nat_vms","table":"banger","type":"ipv4_addr","handle":2,"elem":["172.30.0.2","172.30.0.9"]}},
{"set":{"family":"ip","name":"lan_vms","table":"banger","type":"ipv4_addr","handle":3}},
{"set":{"family":"ip","name":"private","table":"banger","type":"ipv4_addr","flags":["interval"],"elem":[{"prefix":{"addr":"10.0.0.0","len":8}}]}},
{"set":{"family":"bridge","name":"bind","table":"banger","type":["ifname","ether_addr","ipv4_addr"],"elem":[{"concat":["bgtapp0011","52:54:00:00:00:02","172.30.0.2"]}]}},
{"set":{"family":"ip","name":"nat_vms","table":"other","type":"ipv4_addr","elem":["10.9.9.9"]}},
{"rule":{"family":"ip","table":"banger","chain":"input","handle":7,"comment":"banger:dns","expr":[{"accept":null}]}},
{"rule":{"family":"ip","table":"banger","chain":"input","handle":8,"comment":"banger:dns","expr":[{"accept":null}]}},
{"rule":{"family":"ip","table":"banger","chain":"forward","handle":9,"expr":[{"drop":null}]}},
{"rule":{"family":"ip","table":"filter","chain":"forward","handle":9,"expr":[{"drop":null}]}}]}`
)

func TestLeakCheckerParsesToolOutput(t *testing.T) {
	links, err := parseIPLinks([]byte(cannedLinks))
	if err != nil || len(links) != 6 || links[2].Kind != "tun" || links[2].Master != "br-banger" {
		t.Fatalf("links %+v %v", links, err)
	}
	loops, err := parseLosetup([]byte(cannedLoops))
	if err != nil || len(loops) != 2 || loops[0].BackFile != "/tmp/bge2e-x/state/vms/a/root.cow" {
		t.Fatalf("loops %+v %v", loops, err)
	}
	if l, err := parseLosetup(nil); err != nil || l != nil {
		t.Fatalf("empty losetup: %v %v", l, err)
	}
	sets, rules, err := parseNFTRuleset([]byte(cannedNFT))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(sets["ip/nat_vms"], ","); got != "172.30.0.2,172.30.0.9" {
		t.Errorf("nat_vms %q (the other table's set must not leak in)", got)
	}
	if got := strings.Join(sets["bridge/bind"], ","); got != "bgtapp0011 . 52:54:00:00:00:02 . 172.30.0.2" {
		t.Errorf("bind %q", got)
	}
	if len(rules) != 3 {
		t.Errorf("rules %+v, want banger's three", rules)
	}
	if _, _, err := parseNFTRuleset([]byte("{")); err == nil {
		t.Error("bad nft JSON accepted")
	}
}

func TestLeakCheckerFindsLeaks(t *testing.T) {
	links, _ := parseIPLinks([]byte(cannedLinks))
	loops, _ := parseLosetup([]byte(cannedLoops))
	sets, rules, _ := parseNFTRuleset([]byte(cannedNFT))
	running := &model.VM{ID: "a", Name: "a", State: model.StateRunning, NAT: true, IP: "172.30.0.2", MAC: "52:54:00:00:00:02",
		Runtime: model.Runtime{Tap: "bgtapp0011", PID: 100, Provisioned: true}}
	stopped := &model.VM{ID: "b", Name: "b", State: model.StateStopped, IP: "172.30.0.3", Runtime: model.Runtime{Provisioned: true}}
	h := hostState{Links: links, Loops: loops, Sets: sets, Rules: rules,
		VMMs:    []vmmProc{{PID: 100, PPID: 1, Comm: "qemu-system-x86"}, {PID: 101, PPID: 100, Comm: "qemu-child"}, {PID: 200, PPID: 1, Comm: "qemu-system-x86"}},
		Leases:  []model.Lease{{IP: "172.30.0.2", VMID: "a"}, {IP: "172.30.0.3", VMID: "b"}, {IP: "172.30.0.4", VMID: "gone"}},
		VMDirs:  map[string][]string{"a": {"work.ext4"}, "b": {"work.ext4", "root.ext4.tmp"}, "gone": {"work.ext4"}},
		RunDirs: []string{"a", "b"},
		DNS:     map[string][]string{"a": {"172.30.0.2"}, "b": {"172.30.0.3"}}}
	got := findLeaks([]*model.VM{running, stopped}, h, leakPolicy{Dir: "/tmp/bge2e-x", Bridge: "br-banger", TapPool: 0, TapPoolP: "bgtapp"})
	want := []string{
		"leaked tap bgtap0a0b0c0d",
		"unexpected bridge br-other",
		"1 idle pool taps, pool size is 0",
		"leaked loop /dev/loop0",
		"nft set ip/nat_vms holds [172.30.0.2 172.30.0.9]",
		`nft rule ip/input "banger:dns" is duplicated`,
		"nft rule in ip/forward without a banger comment",
		"leaked VMM pid 200",
		"leaked lease 172.30.0.4 of vm gone",
		"leaked runtime dir vms/b",
		"leaked VM dir vms/gone",
		"leaked scratch file vms/b/root.ext4.tmp",
		"DNS b.vm answers [172.30.0.3] for a VM that is stopped",
	}
	all := strings.Join(got, "\n")
	for _, w := range want {
		if !strings.Contains(all, w) {
			t.Errorf("missing problem %q in:\n%s", w, all)
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d problems, want %d:\n%s", len(got), len(want), all)
	}

	// The same host with the leaks removed is clean.
	clean := hostState{
		Links:   links[:3],
		Sets:    map[string][]string{"ip/nat_vms": {"172.30.0.2"}, "bridge/bind": {"bgtapp0011 . 52:54:00:00:00:02 . 172.30.0.2"}},
		Rules:   rules[:1],
		VMMs:    h.VMMs[:2],
		Leases:  h.Leases[:2],
		VMDirs:  map[string][]string{"a": {"work.ext4"}, "b": {"work.ext4"}},
		RunDirs: []string{"a"},
		DNS:     map[string][]string{"a": {"172.30.0.2"}},
	}
	if p := findLeaks([]*model.VM{running, stopped}, clean, leakPolicy{Dir: "/tmp/bge2e-x", Bridge: "br-banger", TapPool: 0, TapPoolP: "bgtapp"}); len(p) != 0 {
		t.Errorf("clean host reported: %v", p)
	}
	// A running VM whose objects are gone is reported too.
	if p := findLeaks([]*model.VM{running}, hostState{}, leakPolicy{Bridge: "br-banger"}); len(p) < 3 {
		t.Errorf("missing objects of a running VM not reported: %v", p)
	}
}
