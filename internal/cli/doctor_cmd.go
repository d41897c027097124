package cli

import (
	"context"
	"errors"
	"fmt"
	"github.com/bangerdev/banger/internal/buildinfo"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"net/netip"
	"sync"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/doctor"
	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/netw"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/rpc"
	"github.com/bangerdev/banger/internal/store"
	"github.com/bangerdev/banger/internal/system"
)

func (a *app) doctorCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check that this host can run banger VMs",
		Long: `Run named checks in parallel and print PASS, WARN or FAIL for each, with a
hint on how to fix what is not right: architecture, KVM, VMM binaries, host
tools, the state store schema, the daemon and version drift, and the VM
defaults derived from this host (with where each value came from).

Exits 1 when any check FAILs. WARN means banger works, with a limitation.`,
		Example: `  banger doctor
  banger doctor --json | jq '.[] | select(.status != "PASS")'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			checks, err := a.doctorChecks()
			if err != nil {
				return err
			}
			outs := doctor.Run(cmd.Context(), checks, 20*time.Second)
			if asJSON {
				if err := printJSON(a.env.Stdout, outs); err != nil {
					return err
				}
			} else {
				a.printOutcomes(outs)
			}
			if doctor.Failed(outs) {
				return silentExit(1)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}

func (a *app) printOutcomes(outs []doctor.Outcome) {
	w := a.env.Stdout
	counts := map[doctor.Status]int{}
	for _, o := range outs {
		counts[o.Status]++
		label := string(o.Status)
		if isTTY(w) && os.Getenv("NO_COLOR") == "" {
			color := map[doctor.Status]string{doctor.Pass: "32", doctor.Warn: "33", doctor.Fail: "31"}[o.Status]
			label = "\x1b[" + color + "m" + label + "\x1b[0m"
		}
		fmt.Fprintf(w, "%s  %-22s %s\n", label, o.Name, o.Message)
		if o.Hint != "" && o.Status != doctor.Pass {
			fmt.Fprintf(w, "      %s %s\n", dim(w, "fix:"), o.Hint)
		}
	}
	fmt.Fprintf(w, "\n%d passed, %d warnings, %d failed\n", counts[doctor.Pass], counts[doctor.Warn], counts[doctor.Fail])
}

func (a *app) doctorChecks() ([]doctor.Check, error) {
	layout, err := a.layout()
	if err != nil {
		return nil, err
	}
	runner := hostexec.Real{}
	cfg, cfgErr := config.Load(layout.ConfigFile(), config.DetectHost(), a.env.Getenv)
	checks := []doctor.Check{doctor.HostArch(), testBuildCheck()}
	configCheck := doctor.Check{Name: "config", Run: func(ctx context.Context) doctor.Result {
		if cfgErr != nil {
			return doctor.Result{Status: doctor.Fail, Message: cfgErr.Error(), Hint: "fix " + layout.ConfigFile() + " (see docs/config.md)"}
		}
		if _, err := os.Stat(layout.ConfigFile()); errors.Is(err, os.ErrNotExist) {
			return doctor.Result{Status: doctor.Pass, Message: "no " + layout.ConfigFile() + "; using defaults"}
		}
		return doctor.Result{Status: doctor.Pass, Message: layout.ConfigFile() + " valid"}
	}}
	checks = append(checks, configCheck)
	if cfgErr != nil {
		cfg = config.Defaults(config.DetectHost())
	}
	kvmProbe := kvmProber(cfg.QEMU.Binary, cfg.QEMU.Machine)
	checks = append(checks, doctor.KVM(kvmProbe))
	checks = append(checks, doctor.Check{Name: "vm defaults", Run: func(ctx context.Context) doctor.Result {
		p := cfg.Provenance
		return doctor.Result{Status: doctor.Pass, Message: fmt.Sprintf("vcpu=%d (%s), memory=%s (%s), disk=%s (%s)",
			cfg.VM.VCPU, p["vm.vcpu"], model.FormatMiB(cfg.VM.MemoryMiB), p["vm.memory"], model.FormatMiB(cfg.VM.DiskSizeMiB), p["vm.disk_size"])}
	}})
	checks = append(checks, doctor.VMMBinaries(runner, cfg.QEMU.Binary, cfg.Firecracker.Binary, cfg.Firecracker.Jailer, kvmProbe)...)
	checks = append(checks, doctor.Tools(doctor.RequiredTools)...)
	checks = append(checks, doctor.Check{Name: "state store", Run: func(ctx context.Context) doctor.Result {
		// The store is the daemon's: ask it (the CLI may not be able to
		// read it, e.g. root's or a group member's CLI in system mode).
		var res api.StoreStatus
		err := rpc.NewClient(layout.DaemonSocket()).Call(ctx, api.MethodStoreStatus, nil, &res)
		if errors.Is(err, rpc.ErrUnreachable) {
			return doctor.Result{Status: doctor.Pass, Message: "daemon not running: it checks (and migrates) the store when it starts"}
		}
		if err != nil {
			return doctor.Result{Status: doctor.Fail, Message: err.Error(), Hint: "check permissions of " + layout.StateDir}
		}
		switch store.MigrationStatus(res.Status) {
		case store.MigrationsOK:
			return doctor.Result{Status: doctor.Pass, Message: "schema up to date (" + res.Detail + ")"}
		case store.MigrationsNeeded:
			return doctor.Result{Status: doctor.Pass, Message: res.Detail + "; the daemon migrates it at start"}
		default:
			return doctor.Result{Status: doctor.Fail, Message: res.Detail, Hint: "this banger is older than the state store: upgrade banger (`banger update`)"}
		}
	}})
	checks = append(checks, a.networkChecks(layout, cfg, runner)...)
	checks = append(checks, doctor.Check{Name: "daemon", Run: func(ctx context.Context) doctor.Result {
		p, err := a.ping(ctx, rpc.NewClient(layout.DaemonSocket()))
		if errors.Is(err, rpc.ErrUnreachable) {
			if layout.Mode == paths.ModeSystem {
				return doctor.Result{Status: doctor.Fail, Message: "the system daemon does not answer at " + layout.DaemonSocket(), Hint: "`sudo banger system restart`; see `journalctl -u bangerd`"}
			}
			return doctor.Result{Status: doctor.Pass, Message: "not running (started on demand by the CLI)"}
		}
		if err != nil {
			if layout.Mode == paths.ModeSystem {
				return doctor.Result{Status: doctor.Fail, Message: err.Error(), Hint: "`sudo banger system restart`; see `journalctl -u bangerd`"}
			}
			return doctor.Result{Status: doctor.Fail, Message: err.Error(), Hint: "restart it: `banger daemon stop`, then any banger command"}
		}
		if !p.Build.Same(a.env.Build) && layout.Mode == paths.ModeSystem {
			return doctor.Result{Status: doctor.Warn, Message: fmt.Sprintf("system daemon %s, CLI %s", p.Build.Version, a.env.Build.Version),
				Hint: "`sudo banger system install` from the build you want (see the versions check)"}
		}
		if !p.Build.Same(a.env.Build) {
			return doctor.Result{Status: doctor.Warn, Message: fmt.Sprintf("daemon %s, CLI %s", p.Build.Version, a.env.Build.Version),
				Hint: "run `banger daemon stop`; the next command starts the matching daemon"}
		}
		return doctor.Result{Status: doctor.Pass, Message: fmt.Sprintf("running %s (pid %d)", strings.TrimSpace(p.Build.Version), p.PID)}
	}})
	checks = append(checks, system.DoctorChecks(system.DoctorProbe{Root: a.env.SystemRoot, CLI: a.env.Build})...)
	return checks, nil
}

// networkChecks inspect the bridge, forwarding, banger's nft table, the DNS
// server and resolver routing. The bridge and DNS server exist while the
// daemon runs, so those checks only run then.
func (a *app) networkChecks(layout paths.Layout, cfg *config.Config, runner hostexec.Runner) []doctor.Check {
	ncfg := netw.Config{Bridge: cfg.Network.Bridge, CIDR: cfg.Network.CIDR, TapPoolSize: cfg.Network.TapPoolSize}.WithDefaults()
	c := rpc.NewClient(layout.DaemonSocket())
	var once sync.Once
	var running bool
	var natIPs []netip.Addr
	probe := func(ctx context.Context) bool {
		once.Do(func() {
			var list api.VMList
			// Standby VMs too: their NAT entries are the daemon's.
			if err := c.Call(ctx, api.MethodVMList, api.VMListParams{RunningOnly: true, Standby: true}, &list); err != nil {
				return
			}
			running = true
			for _, vm := range list.VMs {
				if ip, err := netip.ParseAddr(vm.IP); err == nil && vm.NAT {
					natIPs = append(natIPs, ip)
				}
			}
		})
		return running
	}
	notRunning := doctor.Result{Status: doctor.Pass, Message: "not checked: the daemon is not running (it sets this up when it starts)"}
	whenRunning := func(name string, fn func(ctx context.Context) doctor.Result) doctor.Check {
		return doctor.Check{Name: name, Run: func(ctx context.Context) doctor.Result {
			if !probe(ctx) {
				return notRunning
			}
			return fn(ctx)
		}}
	}
	return []doctor.Check{
		{Name: "tun device", Run: func(ctx context.Context) doctor.Result {
			if os.Geteuid() == 0 {
				return doctor.Result{Status: doctor.Pass, Message: "running as root: VMMs open their taps as root"}
			}
			return netw.CheckTunDevice(netw.TunDevicePath)
		}},
		whenRunning("bridge", func(ctx context.Context) doctor.Result { return netw.CheckBridge(ncfg) }),
		whenRunning("ip forwarding", func(ctx context.Context) doctor.Result {
			return netw.CheckIPForward(netw.IPForwardPath, len(natIPs) > 0)
		}),
		whenRunning("nat table", func(ctx context.Context) doctor.Result { return netw.CheckNATTable(ctx, runner, ncfg, natIPs) }),
		whenRunning("dns server", func(ctx context.Context) doctor.Result {
			return netw.CheckDNS(ctx, cfg.Network.DNSAddr, model.DNSDomain)
		}),
		whenRunning("dns routing", func(ctx context.Context) doctor.Result {
			return netw.CheckResolverRouting(ctx, runner, ncfg, cfg.Network.DNSAddr, model.DNSDomain)
		}),
	}
}

// testBuildCheck warns when this banger is a test build that honours the
// test-only knobs (see buildinfo.TestKnobs).
func testBuildCheck() doctor.Check {
	return doctor.Check{Name: "build", Run: func(ctx context.Context) doctor.Result {
		if buildinfo.TestKnobs {
			return doctor.Result{Status: doctor.Warn, Message: "test build (-tags bangertest): honours BANGER_TEST_CRASH_AT and passes FAKEFC_* to Firecracker",
				Hint: "install a release build (`make build`, `banger update`)"}
		}
		return doctor.Result{Status: doctor.Pass, Message: "release build " + buildinfo.Version}
	}}
}
