package image

// Guest contract, the agent (see the contract at the top of guest.go and
// internal/agent for the protocol)
//
//   - /usr/lib/banger/banger-agent: banger's guest agent, a static binary.
//     The daemon writes it into every VM's root disk at each start, from the
//     banger-agent beside its own executable, so every image (built, pulled,
//     or made by an older banger) runs the agent that matches the daemon.
//   - /etc/banger/agent.token (0600): the VM's token, written with it.
//   - systemd images: /etc/systemd/system/banger-agent.service (early, no
//     default dependencies, restarted on failure), enabled in
//     sysinit.target.wants; written per VM with the binary.
//   - systemd images: a drop-in
//     /etc/systemd/system/banger-network.service.d/50-banger-agent.conf
//     makes banger-network.service run `banger-agent --network`, which
//     applies network.env over netlink (falling back to the
//     banger-network script on failure): one static binary instead of a
//     shell and half a dozen `ip` runs, seconds early in an emulated boot.
//   - images without systemd: banger's init starts the agent (and restarts
//     it) when the binary exists.
//   - The guest kernel needs virtio_console (the virtio-serial port
//     org.banger.agent.0, QEMU) or vsock (Firecracker; port 1024); the
//     initramfs loads both.

import "github.com/bangerdev/banger/internal/ext4"

// GuestAgentBinary is where the agent lives in the guest.
const GuestAgentBinary = "/usr/lib/banger/banger-agent"

// GuestAgentToken is the VM's agent token in the guest (agent.TokenPath).
const GuestAgentToken = "/etc/banger/agent.token"

// GuestAgentUnit is the agent's systemd unit in the guest.
const GuestAgentUnit = "/etc/systemd/system/banger-agent.service"

const agentUnit = `# banger: the guest agent (see banger's guest contract).
[Unit]
Description=banger guest agent
DefaultDependencies=no
Conflicts=shutdown.target
Before=shutdown.target
ConditionPathExists=/usr/lib/banger/banger-agent

[Service]
ExecStart=/usr/lib/banger/banger-agent
Restart=always
RestartSec=1
TimeoutStopSec=3
OOMScoreAdjust=-900

[Install]
WantedBy=sysinit.target
`

// AgentBatch adds the agent to a VM's root disk: the token always, and the
// binary with its unit when binary is not nil.
func AgentBatch(b *ext4.Batch, binary []byte, token string) {
	b.Mkdir("/etc/banger", 0o755, 0, 0)
	b.WriteFile(GuestAgentToken, []byte(token+"\n"), 0o600, 0, 0)
	if binary == nil {
		return
	}
	b.Mkdir("/usr/lib/banger", 0o755, 0, 0)
	b.WriteFile(GuestAgentBinary, binary, 0o755, 0, 0)
	sd := "/etc/systemd/system"
	b.Mkdir(sd, 0o755, 0, 0)
	b.WriteFile(GuestAgentUnit, []byte(agentUnit), 0o644, 0, 0)
	b.Mkdir(sd+"/sysinit.target.wants", 0o755, 0, 0)
	b.Symlink(sd+"/sysinit.target.wants/banger-agent.service", GuestAgentUnit)
	b.Mkdir(GuestNetworkDropInDir, 0o755, 0, 0)
	b.WriteFile(GuestNetworkDropInDir+"/50-banger-agent.conf", []byte(networkAgentDropIn), 0o644, 0, 0)
}

// GuestNetworkDropInDir holds the per-VM drop-in that runs the network step
// through the agent.
const GuestNetworkDropInDir = "/etc/systemd/system/banger-network.service.d"

const networkAgentDropIn = `# banger: the network step through the agent (written per VM with it).
[Service]
ExecStart=
ExecStart=/usr/lib/banger/banger-agent --network
`
