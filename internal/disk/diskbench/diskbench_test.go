package diskbench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/bangerdev/banger/internal/disk"
	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/privops"
)

// BenchmarkCoWCreate measures disk.CoW.Create for 1, 4 and 16 GiB images
// on every strategy the host can run, against copy in the same run, and
// prints a table and JSON. It runs its measurement once:
//
//	go test -run '^$' -bench CoWCreate -benchtime 1x ./internal/disk/diskbench
//
// -short leaves out 16 GiB. Environment: BANGER_BENCH_RUNS (creates per
// case, default 3), BANGER_BENCH_DIR (work directory, default a temp dir),
// BANGER_BENCH_JSON (also write the JSON report to this file).
func BenchmarkCoWCreate(b *testing.B) {
	ctx := context.Background()
	workdir := os.Getenv("BANGER_BENCH_DIR")
	if workdir == "" {
		workdir = b.TempDir()
	}
	runs, _ := strconv.Atoi(os.Getenv("BANGER_BENCH_RUNS"))
	sizes := DefaultSizes()
	if testing.Short() {
		sizes = sizes[:2]
	}
	r := hostexec.Real{}
	targets, notes, cleanup, err := Targets(ctx, workdir, privops.NewLocal(r, nil), r)
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := cleanup(); err != nil {
			b.Error(err)
		}
	}()
	var rep Report
	ran := false
	for b.Loop() {
		if ran {
			continue
		}
		ran = true
		rep, err = Run(ctx, Config{Targets: targets, Sizes: sizes, Runs: runs, Logf: b.Logf})
		if err != nil {
			b.Fatal(err)
		}
	}
	rep.Notes = append(rep.Notes, notes...)
	if testing.Short() {
		rep.Notes = append(rep.Notes, "-short: 16GiB left out")
	}
	for _, row := range rep.Rows {
		b.ReportMetric(row.MedianSeconds, fmt.Sprintf("s/%s-%s", strings.ReplaceAll(row.Target, "/", "-"), human(row.SizeBytes)))
	}
	var out bytes.Buffer
	out.WriteString("\nCoW create time per strategy (median; images sparse with 1/16 data; page cache warm)\n")
	_ = rep.WriteTable(&out)
	_ = rep.WriteJSON(&out)
	fmt.Print(out.String())
	if path := os.Getenv("BANGER_BENCH_JSON"); path != "" {
		var js bytes.Buffer
		_ = rep.WriteJSON(&js)
		if err := os.WriteFile(path, js.Bytes(), 0o644); err != nil {
			b.Error(err)
		}
	}
}

func TestWriteImage(t *testing.T) {
	path := t.TempDir() + "/img"
	if err := WriteImage(path, 64<<20, 4<<20); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	used := st.Sys().(*syscall.Stat_t).Blocks * 512
	if st.Size() != 64<<20 || used < 4<<20 || used > 6<<20 {
		t.Errorf("size %d, %d bytes allocated; want 64 MiB with ~4 MiB of data", st.Size(), used)
	}
	if err := WriteImage(path, 1<<20, 0); err == nil {
		t.Error("overwrote an existing image")
	}
}

// TestRunSmall runs the benchmark on small images to keep its code honest.
func TestRunSmall(t *testing.T) {
	ctx := context.Background()
	cp, _ := disk.New(disk.Copy, nil, nil)
	targets := []Target{{Name: "copy", FS: disk.FilesystemName(t.TempDir()), CoW: cp, Dir: t.TempDir()}}
	if os.Geteuid() == 0 {
		r := hostexec.Real{}
		s, err := MountScratch(ctx, r, privops.NewLocal(r, nil), "btrfs", t.TempDir(), 512<<20)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := s.Close(context.Background()); err != nil {
				t.Error(err)
			}
			if err := s.Close(context.Background()); err != nil {
				t.Errorf("second Close: %v", err)
			}
		})
		rl, _ := disk.New(disk.Reflink, nil, nil)
		targets = append(targets, Target{Name: "reflink/btrfs", FS: "btrfs", CoW: rl, Dir: s.Dir})
	}
	rep, err := Run(ctx, Config{Targets: targets, Sizes: []int64{16 << 20, 64 << 20}, Runs: 2})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Rows) != 2*len(targets) {
		t.Fatalf("rows %+v", rep.Rows)
	}
	for _, row := range rep.Rows {
		if row.MedianSeconds <= 0 || row.MinSeconds > row.MedianSeconds || row.MaxSeconds < row.MedianSeconds || row.Runs != 2 {
			t.Errorf("row %+v", row)
		}
		if row.DataBytes != row.SizeBytes/16 {
			t.Errorf("data %d for size %d", row.DataBytes, row.SizeBytes)
		}
		if row.Strategy == disk.Copy && row.RatioToCopy != 1 {
			t.Errorf("copy ratio %v", row.RatioToCopy)
		}
	}
	var tab, js bytes.Buffer
	if err := rep.WriteTable(&tab); err != nil || !strings.Contains(tab.String(), "vs copy") || !strings.Contains(tab.String(), "64MiB") {
		t.Errorf("table %q %v", tab.String(), err)
	}
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(js.Bytes(), &back); err != nil || len(back.Rows) != len(rep.Rows) || back.Rows[0].RatioToCopy != 1 {
		t.Errorf("json round trip: %v %+v", err, back)
	}
	for _, tg := range targets {
		if es, _ := os.ReadDir(tg.Dir); len(es) != 0 {
			t.Errorf("%s left %v", tg.Name, es)
		}
	}
}

func TestMountScratchRejectsUnknownFS(t *testing.T) {
	rec := &hostexec.Recorder{}
	if _, err := MountScratch(context.Background(), rec, nil, "ext4", t.TempDir(), 1<<30); err == nil {
		t.Error("accepted ext4")
	}
	if len(rec.Calls()) != 0 {
		t.Errorf("ran %q", rec.Lines())
	}
}
