package api

import "github.com/bangerdev/banger/internal/model"

// Parameters of vm.start, vm.stop, vm.restart and vm.stats are Ref; vm.kill
// takes VMKillParams and vm.set VMSetParams (api.go). All but vm.stats
// return the updated *model.VM.

// VMStats is the result of vm.stats.
type VMStats struct {
	Name          string        `json:"name"`
	ID            string        `json:"id"`
	State         model.VMState `json:"state"`
	PID           int           `json:"pid,omitempty"`            // VMM pid; 0 when not running
	CPUSeconds    float64       `json:"cpu_seconds"`              // user+system CPU time of the VMM
	RSSBytes      int64         `json:"rss_bytes"`                // resident memory of the VMM
	UptimeSeconds int64         `json:"uptime_seconds,omitempty"` // since the VMM started
	VCPU          int           `json:"vcpu"`
	MemoryMiB     int64         `json:"memory_mib"`
	RootDisk      DiskUsage     `json:"root_disk"`
	WorkDisk      DiskUsage     `json:"work_disk"`
}

// DiskUsage is the apparent size of a disk file and the space it takes on
// the host.
type DiskUsage struct {
	Path           string `json:"path,omitempty"`
	SizeBytes      int64  `json:"size_bytes"`
	AllocatedBytes int64  `json:"allocated_bytes"`
}
