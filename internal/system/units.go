package system

import (
	"fmt"
	"strings"
)

// HelperCapabilities is the helper's capability bounding set: what its
// operations need and nothing else.
//
//	CAP_NET_ADMIN        bridge, taps, nftables NAT, sysctl ip_forward
//	CAP_SYS_ADMIN        loop devices, device-mapper, the jailer's mount namespace
//	CAP_CHOWN, CAP_FOWNER          ChownPath on files below banger's roots
//	CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH   open the owner's files (0700 state dir)
//	CAP_SETUID, CAP_SETGID          launch VMMs as the owner
//	CAP_KILL             signal the owner's VMMs
//	CAP_MKNOD, CAP_SYS_CHROOT       the Firecracker jailer's /dev nodes and chroot
//	CAP_SYS_RESOURCE     the jailer's resource limits
var HelperCapabilities = []string{
	"CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_CHOWN", "CAP_FOWNER", "CAP_DAC_OVERRIDE",
	"CAP_DAC_READ_SEARCH", "CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_MKNOD",
	"CAP_SYS_CHROOT", "CAP_SYS_RESOURCE",
}

// HelperRuntimeDir holds the root helper's socket. It is the helper's own
// RuntimeDirectory: systemd chowns a unit's runtime directory to the
// unit's user, so the helper (root) and the daemon (owner) cannot share one.
const HelperRuntimeDir = "/run/banger-root"

// RenderOptions change how units are rendered. They exist for tests only:
// Install always renders with the zero value.
type RenderOptions struct {
	// KillMode replaces KillMode=process in both units (the end-to-end
	// test renders control-group to show that it would kill the VMs).
	KillMode string
}

// RenderUnits renders both units (helper first) for rec.
func RenderUnits(rec *Record, o RenderOptions) ([]Unit, error) {
	if rec == nil {
		return nil, fmt.Errorf("render units: no install record")
	}
	if rec.Owner.User == "" || rec.Owner.UID <= 0 {
		return nil, fmt.Errorf("render units: the owner must be a non-root user (got %q, uid %d)", rec.Owner.User, rec.Owner.UID)
	}
	if strings.ContainsAny(rec.Owner.User, " \t\n\"'\\%$;") {
		return nil, fmt.Errorf("render units: owner name %q has characters systemd would misread", rec.Owner.User)
	}
	kill := "process"
	if o.KillMode != "" {
		switch o.KillMode {
		case "control-group", "mixed", "process", "none":
			kill = o.KillMode
		default:
			return nil, fmt.Errorf("render units: unknown KillMode %q", o.KillMode)
		}
	}
	helper := fmt.Sprintf(`# banger's root helper. Do not edit: `+"`banger system install`"+` rewrites it.
[Unit]
Description=banger root helper (privileged operations for bangerd)
After=network.target
Before=bangerd.service

[Service]
Type=simple
# ProtectSystem=strict leaves only existing ReadWritePaths writable, and the
# VMMs this helper launches write their sockets and pidfiles below
# /run/banger: make sure it exists (the owner's, as bangerd.service's
# RuntimeDirectory= makes it) before the sandbox is set up.
ExecStartPre=+/usr/bin/install -d -m 0700 -o %[2]d -g %[9]d %[8]s
ExecStart=%[1]s root-helper --owner-uid %[2]d
Environment=BANGER_MODE=system
Restart=on-failure
RestartSec=1s
# VMMs launched by the helper live in this unit's cgroup: a restart must
# only replace the helper process, never kill them.
KillMode=%[3]s
SendSIGKILL=no
TimeoutStopSec=30s
RuntimeDirectory=banger-root
RuntimeDirectoryMode=0755
RuntimeDirectoryPreserve=yes
# debootstrap trees and the image files it builds for the owner.
CacheDirectory=banger-root
CacheDirectoryMode=0711
# The Firecracker jailer's chroots: root's, outside the owner's state, so
# the root jailer never works in a tree the owner can write.
StateDirectory=banger-jail
StateDirectoryMode=0711
CapabilityBoundingSet=%[4]s
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths=-%[5]s -%[6]s -%[7]s
ProtectHome=yes
PrivateTmp=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RestrictRealtime=yes
ProtectClock=yes
ProtectHostname=yes
SystemCallArchitectures=native

[Install]
WantedBy=multi-user.target
`, DaemonPath, rec.Owner.UID, kill, strings.Join(HelperCapabilities, " "), StateDir, CacheDir, RuntimeDir, RuntimeDir, rec.Owner.GID)

	daemon := fmt.Sprintf(`# banger's owner daemon. Do not edit: `+"`banger system install`"+` rewrites it.
[Unit]
Description=banger owner daemon
Wants=bangerd-root.service
After=bangerd-root.service network.target

[Service]
Type=simple
User=%[1]s
Group=%[2]d
ExecStart=%[3]s
Environment=BANGER_MODE=system
Restart=on-failure
RestartSec=1s
# VMMs are detached from the daemon; a restart must never touch them.
KillMode=%[4]s
TimeoutStopSec=30s
RuntimeDirectory=banger
RuntimeDirectoryMode=0700
RuntimeDirectoryPreserve=yes
StateDirectory=banger
StateDirectoryMode=0700
CacheDirectory=banger
CacheDirectoryMode=0755
CapabilityBoundingSet=
AmbientCapabilities=
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths=-%[5]s -%[6]s -%[7]s
ProtectHome=read-only
PrivateTmp=yes
# No RestrictSUIDSGID= here: its seccomp filter answers openat2() with
# ENOSYS, and the daemon unpacks OCI layers with openat2(RESOLVE_IN_ROOT).
# The daemon has no capabilities, so a setuid file it makes runs as the
# owner and grants nothing the owner does not have.
LockPersonality=yes
RestrictRealtime=yes
ProtectClock=yes
ProtectHostname=yes
ProtectKernelModules=yes
ProtectKernelTunables=yes
ProtectControlGroups=yes
SystemCallArchitectures=native

[Install]
WantedBy=multi-user.target
`, rec.Owner.User, rec.Owner.GID, DaemonPath, kill, StateDir, CacheDir, RuntimeDir)
	return []Unit{{Name: HelperUnit, Content: helper}, {Name: DaemonUnit, Content: daemon}}, nil
}
