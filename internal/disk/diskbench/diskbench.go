// Package diskbench measures how long disk.CoW.Create takes per strategy
// and image size, against the copy strategy in the same run, and prints a
// table and JSON. `make bench` runs it through BenchmarkCoWCreate; Run and
// Targets can be called directly by a benchmark driver.
package diskbench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/bangerdev/banger/internal/disk"
	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/privops"
)

// GiB is 1<<30 bytes.
const GiB = int64(1) << 30

// DefaultSizes returns the image sizes measured by default: 1, 4, 16 GiB.
func DefaultSizes() []int64 { return []int64{1 * GiB, 4 * GiB, 16 * GiB} }

// Target is one strategy on one filesystem.
type Target struct {
	Name string   // row label, e.g. "reflink/btrfs"
	FS   string   // filesystem of Dir
	CoW  disk.CoW // the strategy
	Dir  string   // where the image and disks are made
}

// Config says what Run measures.
type Config struct {
	Targets []Target
	Sizes   []int64 // image sizes; default DefaultSizes()
	Runs    int     // creates per target and size, the median is reported; default 3
	// DataDivisor: 1/DataDivisor of each image holds data (in 1 MiB
	// extents spread evenly), the rest is holes; default 16.
	DataDivisor int64
	Logf        func(format string, args ...any) // progress; optional
}

// Row is the result for one target and size.
type Row struct {
	Target        string        `json:"target"`
	Strategy      disk.Strategy `json:"strategy"`
	FS            string        `json:"fs"`
	SizeBytes     int64         `json:"size_bytes"`
	DataBytes     int64         `json:"data_bytes"`
	Runs          int           `json:"runs"`
	MedianSeconds float64       `json:"median_s"`
	MinSeconds    float64       `json:"min_s"`
	MaxSeconds    float64       `json:"max_s"`
	// RatioToCopy is this row's median over the copy strategy's median for
	// the same size in the same run (0 when copy was not measured).
	RatioToCopy float64 `json:"ratio_to_copy,omitempty"`
}

// Report is the outcome of Run.
type Report struct {
	Benchmark string   `json:"benchmark"`
	Rows      []Row    `json:"rows"`
	Notes     []string `json:"notes,omitempty"`
}

// Run measures Create for every target and size. Each image is written
// fresh on the target's filesystem and removed afterwards, as is every
// disk; Remove is not timed.
func Run(ctx context.Context, cfg Config) (Report, error) {
	if len(cfg.Sizes) == 0 {
		cfg.Sizes = DefaultSizes()
	}
	if cfg.Runs <= 0 {
		cfg.Runs = 3
	}
	if cfg.DataDivisor <= 0 {
		cfg.DataDivisor = 16
	}
	logf := cfg.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	rep := Report{Benchmark: "cow_create"}
	for _, size := range cfg.Sizes {
		var copyMedian float64
		var sizeRows []Row
		for _, tg := range cfg.Targets {
			row, err := measure(ctx, tg, size, size/cfg.DataDivisor, cfg.Runs, logf)
			if err != nil {
				return rep, fmt.Errorf("%s %s: %w", tg.Name, human(size), err)
			}
			if tg.CoW.Name() == disk.Copy && copyMedian == 0 {
				copyMedian = row.MedianSeconds
			}
			sizeRows = append(sizeRows, row)
		}
		for i := range sizeRows {
			if copyMedian > 0 {
				sizeRows[i].RatioToCopy = sizeRows[i].MedianSeconds / copyMedian
			}
		}
		rep.Rows = append(rep.Rows, sizeRows...)
	}
	return rep, nil
}

func measure(ctx context.Context, tg Target, size, data int64, runs int, logf func(string, ...any)) (row Row, err error) {
	work, err := os.MkdirTemp(tg.Dir, "cowbench-")
	if err != nil {
		return row, err
	}
	defer func() { err = errors.Join(err, os.RemoveAll(work)) }()
	base := filepath.Join(work, "base.img")
	logf("%s: writing a %s image with %s of data", tg.Name, human(size), human(data))
	if err := WriteImage(base, size, data); err != nil {
		return row, err
	}
	times := make([]float64, 0, runs)
	for i := range runs {
		dst := filepath.Join(work, fmt.Sprintf("disk%d.img", i))
		start := time.Now()
		h, err := tg.CoW.Create(ctx, base, dst, size)
		took := time.Since(start).Seconds()
		if err != nil {
			return row, err
		}
		times = append(times, took)
		if err := tg.CoW.Remove(ctx, h); err != nil {
			return row, err
		}
		logf("%s %s run %d: %.4fs", tg.Name, human(size), i+1, took)
	}
	slices.Sort(times)
	return Row{Target: tg.Name, Strategy: tg.CoW.Name(), FS: tg.FS, SizeBytes: size, DataBytes: data, Runs: runs,
		MedianSeconds: times[len(times)/2], MinSeconds: times[0], MaxSeconds: times[len(times)-1]}, nil
}

// WriteImage writes a sparse image of size bytes at path whose data
// (dataBytes, in 1 MiB extents of pseudo-random bytes spread evenly) a copy
// has to move, and syncs it.
func WriteImage(path string, size, dataBytes int64) (err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	if err := f.Truncate(size); err != nil {
		return err
	}
	const extent = 1 << 20
	n := dataBytes / extent
	if n == 0 {
		return f.Sync()
	}
	stride := (size / n) &^ (extent - 1)
	rng := rand.NewChaCha8([32]byte{'b', 'a', 'n', 'g', 'e', 'r'})
	buf := make([]byte, extent)
	for i := range n {
		_, _ = rng.Read(buf)
		if _, err := f.WriteAt(buf, i*stride); err != nil {
			return err
		}
	}
	return f.Sync()
}

// WriteTable prints the report as an aligned table.
func (r Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "target\tfs\timage\tdata\truns\tmedian\tmin\tmax\tvs copy\t")
	for _, row := range r.Rows {
		ratio := "-"
		if row.RatioToCopy > 0 {
			ratio = fmt.Sprintf("%.3fx", row.RatioToCopy)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t\n", row.Target, row.FS, human(row.SizeBytes), human(row.DataBytes),
			row.Runs, secs(row.MedianSeconds), secs(row.MinSeconds), secs(row.MaxSeconds), ratio)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(tw, "note: %s\n", n)
	}
	return tw.Flush()
}

// WriteJSON prints the report as indented JSON.
func (r Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func secs(s float64) string {
	if s < 1 {
		return fmt.Sprintf("%.1fms", s*1000)
	}
	return fmt.Sprintf("%.2fs", s)
}

func human(n int64) string {
	switch {
	case n >= GiB && n%GiB == 0:
		return fmt.Sprintf("%dGiB", n/GiB)
	case n >= 1<<20:
		return fmt.Sprintf("%dMiB", n>>20)
	default:
		return fmt.Sprintf("%dB", n)
	}
}

// Targets sets up every strategy this host can run under workdir: copy on
// workdir itself; reflink on btrfs and xfs scratch filesystems (root and
// mkfs tools needed); dm when disk.DMStatus says it can run. It returns the targets,
// notes on what was left out and why, and a cleanup that unmounts the
// scratch filesystems.
func Targets(ctx context.Context, workdir string, ops privops.Ops, r hostexec.Runner) (targets []Target, notes []string, cleanup func() error, err error) {
	var scratches []*Scratch
	cleanup = func() error {
		var errs []error
		for i := len(scratches) - 1; i >= 0; i-- {
			errs = append(errs, scratches[i].Close(context.WithoutCancel(ctx)))
		}
		scratches = nil
		return errors.Join(errs...)
	}
	mk := func(s disk.Strategy) disk.CoW {
		c, e := disk.New(s, ops, r)
		if e != nil {
			err = errors.Join(err, e)
		}
		return c
	}
	targets = append(targets, Target{Name: "copy", FS: disk.FilesystemName(workdir), CoW: mk(disk.Copy), Dir: workdir})
	if _, why := disk.DMStatus(ctx, ops, r); why == nil {
		targets = append(targets, Target{Name: "dm", FS: disk.FilesystemName(workdir), CoW: mk(disk.DM), Dir: workdir})
	} else {
		notes = append(notes, "dm not measured: "+why.Error())
	}
	for _, fs := range []string{"btrfs", "xfs"} {
		tool := "mkfs." + fs
		if os.Geteuid() != 0 {
			notes = append(notes, "reflink/"+fs+" not measured: needs root to mount a scratch filesystem")
			continue
		}
		if _, lerr := exec.LookPath(tool); lerr != nil {
			notes = append(notes, "reflink/"+fs+" not measured: "+tool+" not installed")
			continue
		}
		s, serr := MountScratch(ctx, r, ops, fs, workdir, 32*GiB)
		if serr != nil {
			notes = append(notes, fmt.Sprintf("reflink/%s not measured: %v", fs, serr))
			continue
		}
		scratches = append(scratches, s)
		targets = append(targets, Target{Name: "reflink/" + fs, FS: fs, CoW: mk(disk.Reflink), Dir: s.Dir})
	}
	if err != nil {
		return nil, nil, nil, errors.Join(err, cleanup())
	}
	return targets, notes, cleanup, nil
}
