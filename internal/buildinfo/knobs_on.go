//go:build bangertest

package buildinfo

// TestKnobs: this is a test build (-tags bangertest); see knobs_off.go.
const TestKnobs = true
