package vmm

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/privops"
)

// TestWaitStartupToleratesExec: right after launch a VMM may still be in
// execve, its comm and command line not yet the VMM's. WaitStartup must
// treat such a live process as starting (#16.1: banger killed its own
// fresh qemu 0.7 ms after launch and reported "exited during startup").
// A process that really exited is still reported at once.
func TestWaitStartupToleratesExec(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	// Evidence the live process does not (yet) show.
	id := privops.ProcessIdentity{PID: cmd.Process.Pid, Comm: "qemu-system-x86_64", Marker: "unix:/run/x/qmp.sock,server=on"}
	readyAfter := time.Now().Add(300 * time.Millisecond)
	err := WaitStartup(context.Background(), id, 5*time.Second, func(context.Context) bool { return time.Now().After(readyAfter) })
	if err != nil {
		t.Fatalf("a live process without its evidence yet: %v", err)
	}

	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	id.PID = dead.Process.Pid
	start := time.Now()
	err = WaitStartup(context.Background(), id, 5*time.Second, func(context.Context) bool { return false })
	if err == nil || !strings.Contains(err.Error(), "exited during startup") || time.Since(start) > 2*time.Second {
		t.Fatalf("an exited process: %v after %s", err, time.Since(start))
	}
}

// The polling interval doubles from 10 ms and stays at startupPollMax: a
// restore that ends at an unknown time is seen at most that late.
func TestStartupPollSchedule(t *testing.T) {
	d := 10 * time.Millisecond
	var got []time.Duration
	for range 6 {
		got = append(got, d)
		d = nextStartupPoll(d)
	}
	want := []time.Duration{10 * time.Millisecond, 20 * time.Millisecond, 40 * time.Millisecond, 40 * time.Millisecond, 40 * time.Millisecond, 40 * time.Millisecond}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("intervals %v, want %v", got, want)
		}
	}
}
