package e2b

import (
	"context"
	"os"
	"os/user"
	"strconv"
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
	f := newFixture(t, "guest-token")
	env := sdktest.Env(f.api.URL, keyA)
	env["OTHER_API_KEY"] = keyB
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	env["EXPECT_USER"] = u.Username // the fake envd runs everything as the test's user
	env["EXPECT_HOME"] = f.home
	env["EXPECT_ROOT_UID"] = strconv.Itoa(os.Geteuid())
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out := sdktest.Check(t, ctx, env)
	t.Log(out)
}
