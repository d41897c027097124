package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// NetworkEnvPath is the per-VM network file of the guest contract
// (image.GuestNetworkEnv).
const NetworkEnvPath = "/etc/banger/network.env"

// BootNetwork is `banger-agent --network`, the boot-time network step of
// the guest contract (banger-network.service runs it when the daemon wrote
// the agent into the VM): it reads network.env (else the kernel arguments
// banger.ip= banger.gw= banger.dns= banger.mac=) and applies them like the
// contract's banger-network script, over netlink, waiting up to wait for
// the interface to appear. One static binary instead of a shell and half a
// dozen `ip` runs: under emulation, early in boot, that is seconds.
func (g *Guest) BootNetwork(ctx context.Context, wait time.Duration) (string, error) {
	id, err := g.networkConfig()
	if err != nil {
		return "", err
	}
	deadline := time.Now().Add(wait)
	for {
		iface, err := g.setNetwork(id)
		if err == nil || !errors.Is(err, errNoInterface) || time.Now().After(deadline) {
			return iface, err
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// networkConfig reads the network settings: network.env first, each key
// missing there from the kernel command line.
func (g *Guest) networkConfig() (Identity, error) {
	vals := map[string]string{}
	if f, err := os.Open(g.path(NetworkEnvPath)); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			k, v, ok := strings.Cut(sc.Text(), "=")
			if !ok {
				continue
			}
			v = strings.Trim(strings.TrimSpace(v), `"'`)
			if k = strings.TrimSpace(k); v != "" {
				vals[k] = v
			}
		}
		f.Close()
		if err := sc.Err(); err != nil {
			return Identity{}, fmt.Errorf("network: %s: %w", NetworkEnvPath, err)
		}
	}
	if cmdline, err := os.ReadFile(filepath.Join(g.ProcRoot, "cmdline")); err == nil {
		for _, a := range strings.Fields(string(cmdline)) {
			for arg, key := range map[string]string{"banger.ip=": "ADDRESS", "banger.gw=": "GATEWAY", "banger.dns=": "DNS", "banger.mac=": "MAC"} {
				if v, ok := strings.CutPrefix(a, arg); ok && vals[key] == "" && v != "" {
					vals[key] = v
				}
			}
		}
	}
	if vals["ADDRESS"] == "" {
		return Identity{}, errors.New("network: no address (no " + NetworkEnvPath + ", no banger.ip=)")
	}
	id := Identity{Address: vals["ADDRESS"], Gateway: vals["GATEWAY"], MAC: strings.ToLower(vals["MAC"])}
	for _, s := range strings.FieldsFunc(vals["DNS"], func(r rune) bool { return r == ',' || r == ' ' }) {
		id.DNS = append(id.DNS, s)
	}
	return id, nil
}
