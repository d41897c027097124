package e2e

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// clockSample is one reading of a guest's clocks against the host's.
type clockSample struct {
	host   time.Time     // midpoint of the request's round trip
	rtt    time.Duration // round trip of the request (the uncertainty is half)
	offset time.Duration // guest wall clock minus host wall clock at host
	uptime float64       // guest /proc/uptime (seconds, 10 ms resolution)
}

// guestClock keeps one ssh session open to a guest that prints its wall
// clock and uptime for every line it reads, so a reading costs one round
// trip of an open connection rather than an ssh login.
type guestClock struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
}

func (e *env) openGuestClock(t *testing.T, host string) *guestClock {
	t.Helper()
	args := append([]string{"netns", "exec", e.ns, "ssh"}, e.sshArgs()...)
	args = append(args, "root@"+host, `while read -r _; do echo "$(date +%s.%N) $(cut -d' ' -f1 /proc/uptime)"; done`)
	cmd := exec.Command("ip", args...)
	cmd.Env = e.environ()
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	g := &guestClock{cmd: cmd, in: in, out: bufio.NewReader(out)}
	t.Cleanup(func() { _ = in.Close(); _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return g
}

// sample takes n readings and returns the one with the shortest round trip.
func (g *guestClock) sample(n int) (clockSample, error) {
	var best clockSample
	for i := range n {
		t0 := time.Now()
		if _, err := io.WriteString(g.in, "\n"); err != nil {
			return best, err
		}
		line, err := g.out.ReadString('\n')
		t1 := time.Now()
		if err != nil {
			return best, fmt.Errorf("read guest clock: %w (%q)", err, line)
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			return best, fmt.Errorf("guest clock line %q", line)
		}
		wall, err1 := strconv.ParseFloat(f[0], 64)
		up, err2 := strconv.ParseFloat(f[1], 64)
		if err1 != nil || err2 != nil {
			return best, fmt.Errorf("guest clock line %q", line)
		}
		mid := t0.Add(t1.Sub(t0) / 2)
		s := clockSample{host: mid, rtt: t1.Sub(t0), uptime: up,
			offset: time.Duration((wall - float64(mid.UnixNano())/1e9) * 1e9)}
		if i == 0 || s.rtt < best.rtt {
			best = s
		}
	}
	return best, nil
}

// TestE2EGuestClock checks a TCG guest's clocks against the host's (issue
// 16, defect 2: with tsc_early_khz fixed at 2 GHz guests ran 22% fast):
// right after `vm create` the guest's wall clock is within 1 s of the
// host's, and over 60 s neither its wall clock nor its uptime drift by more
// than 1%.
func TestE2EGuestClock(t *testing.T) {
	// Parallel: most of it is a 60 s wait on an idle guest, which overlaps
	// with another parallel test's boot (CI time).
	t.Parallel()
	e := newEnv(t, envOptions{TapPool: 1})
	e.must("vm", "create", "--name", "clk")
	v := e.show("clk")
	g := e.openGuestClock(t, v.IP)
	s1, err := g.sample(5)
	if err != nil {
		t.Fatal(err)
	}
	const window = 60 * time.Second
	time.Sleep(window)
	s2, err := g.sample(5)
	if err != nil {
		t.Fatal(err)
	}
	hostElapsed := s2.host.Sub(s1.host).Seconds()
	rate := (s2.uptime - s1.uptime) / hostElapsed
	wallDrift := (s2.offset - s1.offset).Seconds() / hostElapsed
	t.Logf("after create: offset %+.3fs (rtt %s); after %.1fs: offset %+.3fs (rtt %s); guest uptime rate %.5f×, wall drift %+.3f%%",
		s1.offset.Seconds(), s1.rtt.Round(time.Millisecond), hostElapsed, s2.offset.Seconds(), s2.rtt.Round(time.Millisecond),
		rate, wallDrift*100)
	for i, s := range []clockSample{s1, s2} {
		if math.Abs(s.offset.Seconds())-s.rtt.Seconds()/2 > 1 {
			t.Errorf("reading %d: guest wall clock %+.3fs off the host's (> 1s)", i+1, s.offset.Seconds())
		}
	}
	// 10 ms uptime resolution and the round trips over 60 s: < 0.1%.
	if math.Abs(rate-1) > 0.01 {
		t.Errorf("guest uptime ran %.4f× the host's clock over %.0fs (want within 1%%)", rate, hostElapsed)
	}
	if math.Abs(wallDrift) > 0.01 {
		t.Errorf("guest wall clock drifted %+.3f%% against the host's over %.0fs (want within 1%%)", wallDrift*100, hostElapsed)
	}
	t.Logf("kernel command line: %s", strings.TrimSpace(e.mustSSH(v.IP, "cat /proc/cmdline; cat /sys/devices/system/clocksource/clocksource0/current_clocksource")))
}
