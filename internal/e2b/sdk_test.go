package e2b

import (
	"context"
	"os"
	"os/user"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/e2b/sdktest"
)

// TestSDKAgainstFakeBackend runs the real e2b SDK against this API with
// an in-memory backend and one real envd server on loopback (no VMs):
// the wire format of every call the SDK makes. Needs node and npm (and
// the npm registry once, to fill the test cache).
func TestSDKAgainstFakeBackend(t *testing.T) {
	if testing.Short() {
		t.Skip("integration: runs node with the e2b SDK")
	}
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// One retry, on a fresh fixture, for one known intermittent failure:
	// under CI's full load (e2e guests booting beside this test) a Connect
	// stream through the router was once cut mid-way (the SDK's fetch
	// reported "terminated"); it has not reproduced on its own. Any other
	// failure, or the same one twice, fails the test.
	for attempt := 1; ; attempt++ {
		f := newFixture(t, "guest-token")
		env := sdktest.Env(f.api.URL, keyA)
		env["OTHER_API_KEY"] = keyB
		env["EXPECT_USER"] = u.Username // the fake envd runs everything as the test's user
		env["EXPECT_HOME"] = f.home
		env["EXPECT_ROOT_UID"] = strconv.Itoa(os.Geteuid())
		out, err := sdktest.TryCheck(t, ctx, env)
		if err == nil {
			t.Log(out)
			return
		}
		if attempt == 1 && strings.Contains(out, "terminated") {
			t.Logf("attempt 1 hit a cut stream (%v); retrying once on a fresh fixture:\n%s", err, out)
			continue
		}
		t.Fatalf("sdk check (attempt %d): %v\n%s", attempt, err, out)
	}
}
