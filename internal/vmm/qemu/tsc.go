package qemu

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The guest's TSC under TCG.
//
// QEMU's TCG reads the host's TSC for the guest's RDTSC (cpu_get_ticks →
// cpu_get_host_ticks), so a TCG guest's TSC ticks at the host's TSC rate.
// On microvm the guest kernel has no HPET or PM timer to calibrate the TSC
// against, so banger tells it the rate on the command line
// (tsc_early_khz=); it must be the host's real rate: a guest told 2 GHz on a
// 2.445 GHz host runs its clocks 22% fast.

// tscFreqSysfs is where some kernels publish the TSC frequency they use.
const tscFreqSysfs = "/sys/devices/system/cpu/cpu0/tsc_freq_khz"

// FallbackTSCKHz is used when the host's TSC rate cannot be found (a host
// without a readable TSC); guest clocks then run off by the ratio of the
// real rate to this one, and the daemon's clock sync steps them back.
const FallbackTSCKHz = 2000000

// Plausible TSC rates: anything outside is a failed measurement.
const (
	minTSCKHz = 100_000    // 100 MHz
	maxTSCKHz = 10_000_000 // 10 GHz
)

// errNoTSC is returned where the TSC cannot be read (not amd64).
var errNoTSC = errors.New("no readable time stamp counter on this architecture")

// HostTSCKHz returns the host's TSC frequency in kHz and where it came
// from: the kernel's sysfs file when it exists, else a measurement of the
// TSC against the monotonic clock (about 150 ms).
func HostTSCKHz() (khz int64, source string, err error) {
	if data, rerr := os.ReadFile(tscFreqSysfs); rerr == nil {
		if v, perr := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64); perr == nil && v >= minTSCKHz && v <= maxTSCKHz {
			return v, tscFreqSysfs, nil
		}
	}
	if !tscReadable {
		return 0, "", errNoTSC
	}
	khz, err = measureTSC(rdtsc, 50*time.Millisecond, 3)
	if err != nil {
		return 0, "", err
	}
	return khz, "measured against CLOCK_MONOTONIC", nil
}

// measureTSC measures the rate of counter against the monotonic clock over
// rounds windows of window each and returns the median in kHz (ticks per
// millisecond). The monotonic clock is NTP-disciplined, so the rate is the
// one that keeps a guest in step with the host's wall clock.
func measureTSC(counter func() uint64, window time.Duration, rounds int) (int64, error) {
	if rounds < 1 {
		rounds = 1
	}
	rates := make([]float64, 0, rounds)
	for range rounds {
		t0, c0 := time.Now(), counter()
		time.Sleep(window)
		c1, t1 := counter(), time.Now()
		ns := t1.Sub(t0).Nanoseconds()
		if ns <= 0 || c1 <= c0 {
			return 0, fmt.Errorf("measure tsc: counter did not advance (%d → %d in %d ns)", c0, c1, ns)
		}
		rates = append(rates, float64(c1-c0)*1e6/float64(ns))
	}
	slices.Sort(rates)
	khz := int64(rates[len(rates)/2] + 0.5)
	if khz < minTSCKHz || khz > maxTSCKHz {
		return 0, fmt.Errorf("measure tsc: %d kHz is not a plausible rate", khz)
	}
	return khz, nil
}
