package qemu

const tscReadable = true

// rdtsc returns the time stamp counter (tsc_amd64.s).
func rdtsc() uint64
