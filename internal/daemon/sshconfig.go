package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"

	"golang.org/x/crypto/ssh"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/guest"
	"github.com/bangerdev/banger/internal/rpc"
	"github.com/bangerdev/banger/internal/sshconfig"
)

// sshConfigWriter serialises rewrites of the ssh_config file.
type sshConfigWriter struct{ mu sync.Mutex }

// refreshSSHConfig rewrites <state>/ssh/config with one block per VM that
// has an address, so `ssh NAME.vm` works through the Include that
// `banger ssh-config --install` adds, with or without DNS routing.
func (d *Daemon) refreshSSHConfig(ctx context.Context) (string, error) {
	d.sshcfg.mu.Lock()
	defer d.sshcfg.mu.Unlock()
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return "", err
	}
	opts := sshconfig.Options{
		IdentityFile:   guest.KeyPath(d.layout.SSHDir()),
		KnownHostsFile: d.layout.KnownHostsPath(),
	}
	for _, vm := range vms {
		ip, err := netip.ParseAddr(vm.IP)
		if err != nil || vm.Runtime.Standby {
			continue
		}
		opts.Hosts = append(opts.Hosts, sshconfig.Host{Name: vm.Name, IP: ip})
	}
	if err := sshconfig.Write(d.layout.SSHConfigPath(), opts); err != nil {
		return "", err
	}
	return sshconfig.Render(opts), nil
}

// afterVMChange wraps a VM-mutating handler so the ssh_config file follows
// the VMs (addresses appear on start, names go on delete).
func (d *Daemon) afterVMChange(h rpc.Handler) rpc.Handler {
	return func(ctx context.Context, params json.RawMessage) (any, error) {
		res, err := h(ctx, params)
		if _, rerr := d.refreshSSHConfig(context.WithoutCancel(ctx)); rerr != nil {
			d.logger.Warn("refresh ssh config", "err", rerr, "op_id", rpc.OpIDFrom(ctx))
		}
		return res, err
	}
}

// handleVM registers a VM-mutating method; the ssh_config follows it.
func (d *Daemon) handleVM(method string, h rpc.Handler) {
	d.srv.Handle(method, d.afterVMChange(h))
}

func (d *Daemon) registerSSHConfig() {
	d.srv.Handle(api.MethodSSHConfig, rpc.Typed(func(ctx context.Context, _ api.Empty) (*api.SSHConfig, error) {
		if _, _, err := guest.EnsureKey(d.layout.SSHDir()); err != nil {
			return nil, err
		}
		text, err := d.refreshSSHConfig(ctx)
		if err != nil {
			return nil, err
		}
		return &api.SSHConfig{Path: d.layout.SSHConfigPath(), Text: text}, nil
	}))
}

// sshCredentials answers ssh.credentials: the managed key and the host
// keys pinned for the VM (under its address and its NAME.vm alias).
func (d *Daemon) sshCredentials(ctx context.Context, p api.Ref) (*api.SSHCredentials, error) {
	vm, err := d.resolveRef(ctx, p.Ref)
	if err != nil {
		return nil, err
	}
	if _, _, err := guest.EnsureKey(d.layout.SSHDir()); err != nil {
		return nil, fmt.Errorf("banger's ssh key: %w", err)
	}
	pem, err := os.ReadFile(guest.KeyPath(d.layout.SSHDir()))
	if err != nil {
		return nil, fmt.Errorf("banger's ssh key: %w", err)
	}
	kh, err := guest.OpenKnownHosts(d.layout.KnownHostsPath())
	if err != nil {
		return nil, fmt.Errorf("banger's known_hosts: %w", err)
	}
	res := &api.SSHCredentials{PrivateKey: string(pem), HostKeys: []string{}}
	seen := map[string]bool{}
	for _, host := range []string{vm.IP, vm.Name + "." + sshconfig.DefaultDomain} {
		if host == "" {
			continue
		}
		keys, err := kh.Keys(host)
		if err != nil {
			return nil, fmt.Errorf("banger's known_hosts: %w", err)
		}
		for _, k := range keys {
			line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
			if !seen[line] {
				seen[line] = true
				res.HostKeys = append(res.HostKeys, line)
			}
		}
	}
	return res, nil
}
