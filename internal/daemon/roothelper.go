package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"

	"github.com/bangerdev/banger/internal/buildinfo"
	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/privops"
	"github.com/bangerdev/banger/internal/rpc"
)

// runRootHelper serves the privileged operations to the owner daemon of
// ownerUID until ctx ends. The layout is the system layout unless BANGER_*
// directory variables say otherwise (tests).
func runRootHelper(ctx context.Context, build buildinfo.Info, ownerUID int, logger *slog.Logger) error {
	layout, err := paths.FromEnv()
	if err != nil {
		return err
	}
	if os.Getenv("BANGER_MODE") == "" && os.Getenv("BANGER_RUNTIME_DIR") == "" {
		layout = paths.System()
	}
	cfg, err := config.Load(layout.ConfigFile(), config.DetectHost(), os.Getenv)
	if err != nil {
		return err
	}
	ownerGID := ownerUID
	if u, err := user.LookupId(strconv.Itoa(ownerUID)); err == nil {
		if g, err := strconv.Atoi(u.Gid); err == nil {
			ownerGID = g
		}
	}
	bins := map[string]string{}
	for _, b := range []string{cfg.QEMU.Binary, cfg.Firecracker.Binary, cfg.Firecracker.Jailer} {
		if p, err := exec.LookPath(b); err == nil {
			bins[baseName(b)] = p
		}
	}
	policy := privops.Policy{
		OwnerUID: ownerUID, OwnerGID: ownerGID,
		ManagedRoots: layout.ManagedRoots(),
		VMMBinaries:  bins,
		BridgeName:   cfg.Network.Bridge, BridgeCIDR: cfg.Network.CIDR,
		// Resolver routing is pinned here, from root's config: the owner
		// cannot route another domain or point the host at its own server.
		DNSServer: pinnedDNSServer(cfg.Network.DNSAddr, logger),
		DNSDomain: DNSDomain,
		// The jailer's chroot base is root's own directory, never one
		// the owner can write (system mode: /var/lib/banger-jail).
		JailerChrootBase: layout.JailerChrootBase(),
	}
	if err := (&privops.Policy{ManagedRoots: policy.ManagedRoots, JailerChrootBase: policy.JailerChrootBase}).CheckJailBase(); err != nil {
		logger.Warn("firecracker jailer unavailable through the root helper: its chroot base would lie in the owner's directories (jailer mode needs system mode)", "chroot_base", policy.JailerChrootBase)
		policy.JailerChrootBase = ""
	}
	local := privops.NewLocal(hostexec.Real{Logger: logger}, logger)
	local.Firewall = firewallConfig(cfg)
	// Every path is resolved below the managed roots on descriptors, and
	// only the owner's processes running a configured VMM may be signalled.
	local.Roots = policy.ManagedRoots
	local.SignalOwnerUID = ownerUID
	local.JailerChrootBase = policy.JailerChrootBase
	for _, p := range bins {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real // /proc/PID/exe names the resolved file
		}
		local.VMMPaths = append(local.VMMPaths, p)
	}
	srv, err := privops.NewServer(local, privops.ServerConfig{
		Policy: policy, Logger: logger, Version: build.Version, Commit: build.Commit,
		// root (banger system status, doctor) may ping it too.
		AllowedUIDs: []uint32{uint32(ownerUID), 0},
	})
	if err != nil {
		return err
	}
	hi := &helperImages{dir: paths.HelperCacheDir, mirror: cfg.Images.Mirror, owner: [2]int{ownerUID, ownerGID},
		runner: hostexec.Real{Logger: logger}, systemd: os.Getenv("INVOCATION_ID") != "", logger: logger}
	srv.Handle(methodImageRootfs, rpc.Typed(hi.build))
	// The helper's own directory: root's, 0755 (under systemd it is the
	// unit's RuntimeDirectory), never the owner's runtime dir.
	if err := os.MkdirAll(filepath.Dir(layout.HelperSocket()), 0o755); err != nil {
		return err
	}
	ln, err := privops.Listen(layout.HelperSocket(), ownerUID, ownerGID)
	if err != nil {
		return fmt.Errorf("root helper socket: %w", err)
	}
	logger.Info("root helper serving", "socket", layout.HelperSocket(), "owner_uid", ownerUID)
	return srv.Serve(ctx, ln)
}

// pinnedDNSServer is the DNS server the helper routes the VM domain to:
// the configured dns_listen as ip:port ("" = none, when it is not one).
func pinnedDNSServer(addr string, logger *slog.Logger) string {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || ap.Port() == 0 {
		logger.Warn("resolver routing disabled: network.dns_listen is not ip:port", "dns_listen", addr)
		return ""
	}
	return ap.String()
}

// firewallConfig is what guests may reach on the host, from root's own
// config: banger's DNS port on the gateway (when the DNS server listens
// there or on all addresses) and the resolvers written into guests (the
// host's non-loopback nameservers), which --nat VMs may query on port 53
// even when they are on the LAN.
func firewallConfig(cfg *config.Config) privops.FirewallConfig {
	var fw privops.FirewallConfig
	if ap, err := netip.ParseAddrPort(cfg.Network.DNSAddr); err == nil && !ap.Addr().IsLoopback() {
		fw.DNSPorts = append(fw.DNSPorts, ap.Port())
	}
	for _, r := range hostResolvers("/etc/resolv.conf") {
		if a, err := netip.ParseAddr(r); err == nil {
			fw.Resolvers = append(fw.Resolvers, a)
		}
	}
	return fw
}

func baseName(p string) string {
	for i := len(p) - 1; i >= 0; i-- {
		if p[i] == '/' {
			return p[i+1:]
		}
	}
	return p
}
