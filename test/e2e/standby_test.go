package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/e2b/sdktest"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/vm"
)

// standbyReady returns how many standby VMs are ready, summed over the
// templates.
func (e *env) standbyReady() int {
	e.t.Helper()
	var ts []api.TemplateInfo
	if err := json.Unmarshal([]byte(e.must("image", "templates", "--json")), &ts); err != nil {
		e.t.Fatal(err)
	}
	n := 0
	for _, t := range ts {
		n += t.Standby
	}
	return n
}

// fullDaemonLog is the whole daemon log (daemonLog is its tail).
func (e *env) fullDaemonLog() string {
	data, _ := os.ReadFile(filepath.Join(e.dir, "bangerd.log"))
	return string(data)
}

// waitStandby waits until a standby VM is ready.
func (e *env) waitStandby(limit time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(limit)
	for e.standbyReady() == 0 {
		if time.Now().After(deadline) {
			e.t.Fatalf("no standby VM ready after %s\n%s", limit, e.must("image", "templates"))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// TestE2EStandby: after `image warm` the daemon keeps a standby VM of a
// plain create's shape ready (paused: it uses no CPU); `--no-standby`
// restores beside it; the next creates claim one each (the pool refills
// in between). A claimed VM has its own identity like any
// restored VM (hostname, machine-id, MAC, address, pinned host key, RNG)
// and answers over ssh under its name; standby VMs never show in
// `vm list`; removing the template drops the standby and leaves nothing
// behind.
func TestE2EStandby(t *testing.T) {
	e := newEnv(t, envOptions{TapPool: 2, Templates: true, Standby: 1})
	// Warming the image asks for a standby of a plain create's shape.
	e.must("image", "warm")
	e.waitStandby(3 * time.Minute)
	// A create that opts out restores beside it (and leaves it alone).
	before := e.fullDaemonLog()
	e.must("vm", "create", "--name", "s1", "--no-standby")
	if v := e.show("s1"); v.Runtime.Template == "" {
		t.Fatalf("s1 did not restore a template: %+v", v)
	}
	if strings.Contains(e.fullDaemonLog()[len(before):], `"standby claimed"`) {
		t.Error("--no-standby claimed the standby VM")
	}
	// A ready standby is paused: its VMM uses no CPU while it waits.
	if cpu := e.standbyCPU(3 * time.Second); cpu > 0.03 {
		t.Errorf("the waiting standby's VMM used %.0f%% of a core", cpu*100)
	}

	var vms [2]*model.VM
	var ids [2]guestIdentity
	for i, name := range []string{"s2", "s3"} {
		if i > 0 {
			e.waitStandby(3 * time.Minute)
		}
		before := e.fullDaemonLog()
		t0 := time.Now()
		e.must("vm", "create", "--name", name)
		took := time.Since(t0)
		claimed := false
		for _, l := range strings.Split(e.fullDaemonLog()[len(before):], "\n") {
			var rec struct{ Msg, VM string }
			if json.Unmarshal([]byte(l), &rec) == nil && rec.Msg == "standby claimed" && rec.VM == name {
				claimed = true
				t.Logf("daemon: %s", l)
			}
		}
		if !claimed {
			t.Fatalf("create %s did not claim the standby VM", name)
		}
		v := e.show(name)
		if v.State != model.StateRunning || v.Runtime.Standby || v.Runtime.Template == "" {
			t.Fatalf("%s after create: %+v", name, v)
		}
		vms[i], ids[i] = v, e.identity(v.IP)
		t.Logf("%s claimed in %s: %+v", name, took.Round(time.Millisecond), ids[i])
	}
	e.checkRestoredIdentities(t, vms, ids)
	e.mustSSH(vms[0].IP, "echo only-s2 > /root/only-s2 && sync")
	if got := e.mustSSH(vms[1].IP, "test -e /root/only-s2 && echo present || echo absent"); got != "absent" {
		t.Fatalf("a file written in s2 is visible in s3: %q", got)
	}
	if got := e.mustSSH(vms[0].IP, "cat /etc/hostname; grep -c s2 /etc/hosts"); got != "s2\n1" {
		t.Errorf("s2's /etc/hostname and /etc/hosts: %q", got)
	}

	// Only the user's VMs are listed; a standby refilled meanwhile is not.
	e.waitStandby(3 * time.Minute)
	var names []string
	for _, v := range e.list() {
		names = append(names, v.Name)
	}
	if strings.Join(names, ",") != "s1,s2,s3" {
		t.Errorf("vm list: %v, want s1,s2,s3", names)
	}
	for _, n := range []string{"s1", "s2", "s3"} {
		e.must("vm", "delete", n)
	}

	// Removing the template drops its standby VM: nothing is left.
	e.must("image", "warm", "--rm")
	deadline := time.Now().Add(time.Minute)
	for len(e.leakReport()) > 0 && time.Now().Before(deadline) {
		time.Sleep(500 * time.Millisecond)
	}
	e.assertNoLeaks("after the template was removed")
}

// standbyCPU is the CPU time the standby VMs' VMMs (named guest=standby-…)
// used over d, as a fraction of one core.
func (e *env) standbyCPU(d time.Duration) float64 {
	e.t.Helper()
	ticks := func() int64 {
		var sum int64
		for pid := range e.nsPIDs() {
			cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			if !strings.Contains(string(cmdline), "guest=standby-") {
				continue
			}
			stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
			if err != nil {
				continue
			}
			// Fields after the command's closing parenthesis: utime and
			// stime are the 12th and 13th.
			f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
			if len(f) > 12 {
				u, _ := strconv.ParseInt(f[11], 10, 64)
				s, _ := strconv.ParseInt(f[12], 10, 64)
				sum += u + s
			}
		}
		return sum
	}
	t0 := ticks()
	time.Sleep(d)
	return float64(ticks()-t0) / 100 / d.Seconds() // USER_HZ = 100
}

// TestE2EE2BStandby: an E2B sandbox create claims the standby VM, and the
// SDK drives the claimed VM (commands through envd) under its new name.
func TestE2EE2BStandby(t *testing.T) {
	sdktest.Install(t)
	e := newEnv(t, envOptions{TapPool: 2, Templates: true, Standby: 1})
	key := lastLine(e.must("e2b", "key", "create", "--name", "a"))
	e.must("image", "warm")
	e.waitStandby(3 * time.Minute)
	url, log := e.startE2B()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	script := sdktest.Script(t, "standby.mjs", []byte(`import { Sandbox } from 'e2b'
const t0 = Date.now()
const sb = await Sandbox.create('base')
const took = Date.now() - t0
const r = await sb.commands.run('hostname; cat /etc/machine-id')
console.log(took + 'ms ' + r.stdout.trim().replace(/\n/g, ' '))
await sb.kill()
console.log(sb.sandboxId)
`))
	before := e.fullDaemonLog()
	out := sdktest.RunNode(t, ctx, script, sdktest.Env(url, key), "ip", "netns", "exec", e.ns)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) < 2 {
		t.Fatalf("sdk output: %q\n%s", out, log.String())
	}
	id := lastLine(out)
	var claimed string
	for _, l := range strings.Split(e.fullDaemonLog()[len(before):], "\n") {
		var rec struct{ Msg, VM, ID string }
		if json.Unmarshal([]byte(l), &rec) == nil && rec.Msg == "standby claimed" && rec.ID == id {
			claimed = rec.VM
		}
	}
	if claimed == "" {
		t.Fatalf("sandbox %s was not a claimed standby VM (sdk: %q)", id, out)
	}
	// The guest answers with the sandbox VM's name and its own machine-id.
	if f := strings.Fields(lines[len(lines)-2]); len(f) != 3 || f[1] != claimed || f[2] != vm.MachineID(id) {
		t.Fatalf("sandbox %s (VM %s) ran: %q", id, claimed, lines[len(lines)-2])
	}
	t.Logf("sandbox from a standby VM: %s", lines[len(lines)-2])
	if vms := e.list(); len(vms) != 0 {
		t.Errorf("VMs left after the SDK killed its sandbox: %+v", vms)
	}
}
