//go:build !bangertest

package buildinfo

// TestKnobs reports whether this build honours the test-only environment
// knobs (BANGER_TEST_CRASH_AT, FAKEFC_* passed to the Firecracker driver).
// Release builds (`make build`) do not; the end-to-end tests run binaries
// built with -tags bangertest (`make build-test`), and doctor warns about
// such a build.
const TestKnobs = false
