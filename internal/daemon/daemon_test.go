package daemon

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/buildinfo"
	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/rpc"
)

// testLayout is a user-mode layout under a temporary directory.
func testLayout(t *testing.T) paths.Layout {
	dir := t.TempDir()
	return paths.Layout{Mode: "user",
		StateDir: filepath.Join(dir, "state"), CacheDir: filepath.Join(dir, "cache"),
		RuntimeDir: filepath.Join(dir, "run"), ConfigDir: filepath.Join(dir, "config")}
}

// startDaemon runs a daemon on a temporary layout and returns a client.
func startDaemon(t *testing.T) (*Daemon, *rpc.Client) {
	t.Helper()
	layout := testLayout(t)
	cfg := config.Defaults(config.HostInfo{CPUs: 8, MemoryBytes: 16 << 30})
	ctx, cancel := context.WithCancel(context.Background())
	d, err := New(ctx, Options{Layout: layout, Config: cfg, Build: buildinfo.Info{Version: "test", Commit: "abc"}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx) }()
	c := rpc.NewClient(layout.DaemonSocket())
	deadline := time.Now().Add(5 * time.Second)
	for {
		var p api.PingResult
		if err := c.Call(ctx, api.MethodPing, nil, &p); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("daemon did not come up")
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Cleanup(func() {
		cancel()
		<-done
		d.Close()
	})
	return d, c
}

func TestVMRecordRoundTrip(t *testing.T) {
	_, c := startDaemon(t)
	ctx := context.Background()

	var vm model.VM
	if err := c.Call(ctx, api.MethodVMCreate, api.VMCreateParams{Name: "a1", NoStart: true, MemoryMiB: 512}, &vm); err != nil {
		t.Fatal(err)
	}
	if vm.Name != "a1" || vm.State != model.StateStopped || vm.VCPU != 2 || vm.MemoryMiB != 512 || vm.DiskSizeMiB != 8192 {
		t.Fatalf("unexpected record: %+v", vm)
	}
	// Same name again: already_exists.
	err := c.Call(ctx, api.MethodVMCreate, api.VMCreateParams{Name: "a1", NoStart: true}, &vm)
	if rpc.CodeOf(err) != rpc.CodeAlreadyExists {
		t.Fatalf("duplicate create: want already_exists, got %v", err)
	}
	var re *rpc.Error
	if !errors.As(err, &re) || re.OpID == "" {
		t.Fatalf("error carries no op id: %#v", err)
	}
	// Bad name: bad_request with the rule.
	err = c.Call(ctx, api.MethodVMCreate, api.VMCreateParams{Name: "-bad", NoStart: true}, &vm)
	if rpc.CodeOf(err) != rpc.CodeBadRequest {
		t.Fatalf("bad name: want bad_request, got %v", err)
	}
	// Non-positive sizes.
	err = c.Call(ctx, api.MethodVMCreate, api.VMCreateParams{Name: "neg", MemoryMiB: -5, NoStart: true}, &vm)
	if rpc.CodeOf(err) != rpc.CodeBadRequest {
		t.Fatalf("negative memory: want bad_request, got %v", err)
	}
	// Generated name.
	var gen model.VM
	if err := c.Call(ctx, api.MethodVMCreate, api.VMCreateParams{NoStart: true}, &gen); err != nil {
		t.Fatal(err)
	}
	if err := model.ValidateName(gen.Name); err != nil {
		t.Fatalf("generated name %q invalid: %v", gen.Name, err)
	}
	var list api.VMList
	if err := c.Call(ctx, api.MethodVMList, nil, &list); err != nil {
		t.Fatal(err)
	}
	if len(list.VMs) != 2 {
		t.Fatalf("list: %d VMs", len(list.VMs))
	}
	// Show by unique id prefix.
	var shown model.VM
	if err := c.Call(ctx, api.MethodVMShow, api.Ref{Ref: vm.ID[:6]}, &shown); err != nil || shown.Name != "a1" {
		t.Fatalf("show by prefix: %v %+v", err, shown)
	}
	if err := c.Call(ctx, api.MethodVMShow, api.Ref{Ref: "nope"}, &shown); rpc.CodeOf(err) != rpc.CodeNotFound {
		t.Fatalf("show missing: want not_found, got %v", err)
	}
	// Delete, then prune the rest.
	if err := c.Call(ctx, api.MethodVMDelete, api.Ref{Ref: "a1"}, &shown); err != nil {
		t.Fatal(err)
	}
	var pr api.VMPruneResult
	if err := c.Call(ctx, api.MethodVMPrune, api.VMPruneParams{}, &pr); err != nil {
		t.Fatal(err)
	}
	if len(pr.Deleted) != 1 || pr.Deleted[0] != gen.Name {
		t.Fatalf("prune: %+v", pr)
	}
	if err := c.Call(ctx, api.MethodVMList, nil, &list); err != nil || len(list.VMs) != 0 {
		t.Fatalf("after prune: %v %d", err, len(list.VMs))
	}
	// The creates were registered as operations.
	var ops api.OperationsList
	if err := c.Call(ctx, api.MethodOperationsList, api.OperationsListParams{All: true}, &ops); err != nil {
		t.Fatal(err)
	}
	if len(ops.Operations) < 3 {
		t.Fatalf("operations: %+v", ops.Operations)
	}
}

func TestParallelCreatesSameNameOneWins(t *testing.T) {
	_, c := startDaemon(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins, conflicts := 0, 0
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var vm model.VM
			err := c.Call(ctx, api.MethodVMCreate, api.VMCreateParams{Name: "same", NoStart: true}, &vm)
			mu.Lock()
			defer mu.Unlock()
			switch rpc.CodeOf(err) {
			case "":
				wins++
			case rpc.CodeAlreadyExists:
				conflicts++
			default:
				if err != nil {
					t.Errorf("unexpected error: %v", err)
				} else {
					wins++
				}
			}
		}()
	}
	wg.Wait()
	if wins != 1 || conflicts != 7 {
		t.Fatalf("wins=%d conflicts=%d", wins, conflicts)
	}
}

func TestSecondDaemonRefused(t *testing.T) {
	d, _ := startDaemon(t)
	_, err := New(context.Background(), Options{Layout: d.layout, Config: d.cfg, LockWait: 100 * time.Millisecond})
	if err == nil {
		t.Fatal("second daemon on the same layout started")
	}
}
