package doctor

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/hostexec"
)

func TestRunParallelOrderedAndRobust(t *testing.T) {
	slow := func(d time.Duration, st Status) Check {
		return Check{Name: string(st), Run: func(ctx context.Context) Result {
			select {
			case <-time.After(d):
			case <-ctx.Done():
			}
			return Result{Status: st}
		}}
	}
	checks := []Check{
		slow(200*time.Millisecond, Pass),
		slow(200*time.Millisecond, Warn),
		{Name: "panics", Run: func(ctx context.Context) Result { panic("boom") }},
		{Name: "hangs", Run: func(ctx context.Context) Result { select {} }},
	}
	start := time.Now()
	outs := Run(context.Background(), checks, 500*time.Millisecond)
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("checks did not run in parallel: %s", took)
	}
	want := []Status{Pass, Warn, Fail, Fail}
	for i, o := range outs {
		if o.Status != want[i] || o.Name != checks[i].Name {
			t.Fatalf("outcome %d = %+v, want %s", i, o, want[i])
		}
	}
	if !Failed(outs) {
		t.Fatal("Failed() = false with FAIL outcomes")
	}
}

func TestToolsMissingIsFailOrWarn(t *testing.T) {
	outs := Run(context.Background(), Tools([]Tool{
		{Name: "sh", Package: "dash"},
		{Name: "no-such-tool-xyz", Package: "nothing"},
		{Name: "no-such-tool-abc", Package: "nothing", Optional: true},
	}), time.Second)
	if outs[0].Status != Pass || outs[1].Status != Fail || outs[2].Status != Warn {
		t.Fatalf("got %+v", outs)
	}
	if outs[1].Hint != "apt-get install nothing" {
		t.Fatalf("hint %q", outs[1].Hint)
	}
}

func TestVMMBinaries(t *testing.T) {
	rec := &hostexec.Recorder{Respond: func(c hostexec.Cmd) (hostexec.Result, error) {
		switch c.Name {
		case "qemu-x":
			return hostexec.Result{Stdout: []byte("QEMU emulator version 7.2.15 (Debian 1:7.2+dfsg-7)\n")}, nil
		}
		return hostexec.Result{}, errors.New("fc: " + hostexec.ErrNotFound.Error())
	}}
	noKVM := func() (bool, string) { return false, "test" }
	outs := Run(context.Background(), VMMBinaries(rec, "qemu-x", "fc-x-missing", "jailer-x-missing", noKVM), time.Second)
	if outs[0].Status != Pass || outs[0].Message != "qemu-x 7.2.15" {
		t.Fatalf("qemu: %+v", outs[0])
	}
	if outs[1].Status != Warn || outs[2].Status != Warn {
		t.Fatalf("firecracker/jailer missing should warn: %+v", outs[1:])
	}
	outs = Run(context.Background(), []Check{KVM(noKVM)}, time.Second)
	if outs[0].Status != Warn {
		t.Fatalf("kvm: %+v", outs[0])
	}
}

func TestKVMOnPVMSaysSo(t *testing.T) {
	r := KVM(func() (bool, string) {
		return false, "/dev/kvm is a PVM device (module kvm_pvm): stock guest kernels cannot run on it, so guests run under QEMU TCG emulation"
	}).Run(context.Background())
	if r.Status != Warn || !strings.Contains(r.Message, "PVM device") || !strings.Contains(r.Message, "TCG") || strings.Contains(r.Hint, "kvm_intel") {
		t.Fatalf("PVM host: %+v", r)
	}
}
