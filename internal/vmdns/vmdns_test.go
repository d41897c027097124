package vmdns

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/bangerdev/banger/internal/testreq"
)

func start(t *testing.T) *Server {
	t.Helper()
	s := New("127.0.0.1:0", "vm", nil)
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func query(t *testing.T, s *Server, proto, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	c := &dns.Client{Net: proto, Timeout: 2 * time.Second}
	r, _, err := c.Exchange(m, s.Addr())
	if err != nil {
		t.Fatalf("%s query %s %s: %v", proto, name, dns.TypeToString[qtype], err)
	}
	return r
}

func TestAnswers(t *testing.T) {
	s := start(t)
	s.Set("web", netip.MustParseAddr("172.30.0.5"))
	s.Set("DB.vm.", netip.MustParseAddr("172.30.0.6"))
	for _, proto := range []string{"udp", "tcp"} {
		t.Run(proto, func(t *testing.T) {
			r := query(t, s, proto, "web.vm.", dns.TypeA)
			if r.Rcode != dns.RcodeSuccess || !r.Authoritative || len(r.Answer) != 1 {
				t.Fatalf("A web.vm: %v", r)
			}
			if a := r.Answer[0].(*dns.A); a.A.String() != "172.30.0.5" || a.Hdr.Ttl != RecordTTL {
				t.Fatalf("answer %v", a)
			}
			// Case-insensitive, and the answer keeps the question's case.
			r = query(t, s, proto, "Db.VM.", dns.TypeA)
			if len(r.Answer) != 1 || r.Answer[0].Header().Name != "Db.VM." || r.Answer[0].(*dns.A).A.String() != "172.30.0.6" {
				t.Fatalf("A Db.VM: %v", r)
			}
			for _, name := range []string{"nope.vm.", "sub.web.vm."} {
				r = query(t, s, proto, name, dns.TypeA)
				if r.Rcode != dns.RcodeNameError || !r.Authoritative || len(r.Ns) != 1 || r.Ns[0].Header().Rrtype != dns.TypeSOA {
					t.Fatalf("%s: want authoritative NXDOMAIN with SOA, got %v", name, r)
				}
			}
			r = query(t, s, proto, "web.vm.", dns.TypeAAAA)
			if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 || len(r.Ns) != 1 {
				t.Fatalf("AAAA web.vm: want NOERROR/NODATA, got %v", r)
			}
			r = query(t, s, proto, "vm.", dns.TypeSOA)
			if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].(*dns.SOA).Minttl != NegativeTTL {
				t.Fatalf("SOA vm: %v", r)
			}
			r = query(t, s, proto, "vm.", dns.TypeNS)
			if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
				t.Fatalf("NS vm: %v", r)
			}
			for _, name := range []string{"example.com.", "vmx.", "."} {
				r = query(t, s, proto, name, dns.TypeA)
				if r.Rcode != dns.RcodeRefused || r.Authoritative || len(r.Answer) != 0 {
					t.Fatalf("%s: want REFUSED, got %v", name, r)
				}
			}
		})
	}
}

func TestRecordsFollowUpdates(t *testing.T) {
	s := start(t)
	ip := netip.MustParseAddr("172.30.0.7")
	s.Set("app", ip)
	serial := query(t, s, "udp", "vm.", dns.TypeSOA).Answer[0].(*dns.SOA).Serial
	if r := query(t, s, "udp", "app.vm.", dns.TypeA); len(r.Answer) != 1 {
		t.Fatalf("after Set: %v", r)
	}
	s.Remove("app") // VM stopped
	if r := query(t, s, "udp", "app.vm.", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Fatalf("after Remove: %v", r)
	}
	if next := query(t, s, "udp", "vm.", dns.TypeSOA).Answer[0].(*dns.SOA).Serial; next == serial {
		t.Fatal("SOA serial did not change")
	}
	s.Remove("app") // idempotent
	s.Replace(map[string]netip.Addr{"a": netip.MustParseAddr("172.30.0.2"), "b.vm": netip.MustParseAddr("172.30.0.3"), "bad name": ip, "v6": netip.MustParseAddr("fd00::1")})
	for name, want := range map[string]string{"a.vm.": "172.30.0.2", "b.vm.": "172.30.0.3"} {
		r := query(t, s, "udp", name, dns.TypeA)
		if len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != want {
			t.Fatalf("%s after Replace: %v", name, r)
		}
	}
	if _, ok := s.Lookup("bad name"); ok {
		t.Fatal("invalid name stored")
	}
	if _, ok := s.Lookup("v6"); ok {
		t.Fatal("IPv6 address stored as an A record")
	}
	s.Replace(nil)
	if r := query(t, s, "udp", "a.vm.", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Fatalf("after Replace(nil): %v", r)
	}
}

func TestDig(t *testing.T) {
	testreq.Tools(t, "dig")
	s := start(t)
	s.Set("web", netip.MustParseAddr("172.30.0.5"))
	_, port, _ := net.SplitHostPort(s.Addr())
	dig := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("dig", append([]string{"@127.0.0.1", "-p", port, "+time=2", "+tries=1"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("dig %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	if out := strings.TrimSpace(dig("+short", "web.vm")); out != "172.30.0.5" {
		t.Fatalf("dig +short web.vm = %q", out)
	}
	if out := strings.TrimSpace(dig("+short", "+tcp", "web.vm")); out != "172.30.0.5" {
		t.Fatalf("dig +tcp web.vm = %q", out)
	}
	if out := dig("nope.vm"); !strings.Contains(out, "status: NXDOMAIN") || !strings.Contains(out, "flags: qr aa") {
		t.Fatalf("dig nope.vm:\n%s", out)
	}
	if out := dig("example.com"); !strings.Contains(out, "status: REFUSED") {
		t.Fatalf("dig example.com:\n%s", out)
	}
}

func TestMalformedAndOtherOpcodes(t *testing.T) {
	s := start(t)
	m := new(dns.Msg)
	m.SetQuestion("web.vm.", dns.TypeA)
	m.Opcode = dns.OpcodeUpdate
	r, err := dns.Exchange(m, s.Addr())
	if err != nil || r.Rcode != dns.RcodeNotImplemented {
		t.Fatalf("UPDATE: %v %v", r, err)
	}
	// Two questions: the server rejects it without SERVFAIL.
	m = new(dns.Msg)
	m.SetQuestion("web.vm.", dns.TypeA)
	m.Question = append(m.Question, m.Question[0])
	r, err = dns.Exchange(m, s.Addr())
	if err != nil || r.Rcode != dns.RcodeFormatError {
		t.Fatalf("two questions: %v %v", r, err)
	}
	// CHAOS class is refused.
	m = new(dns.Msg)
	m.SetQuestion("web.vm.", dns.TypeTXT)
	m.Question[0].Qclass = dns.ClassCHAOS
	if r, err = dns.Exchange(m, s.Addr()); err != nil || r.Rcode != dns.RcodeRefused {
		t.Fatalf("CHAOS: %v %v", r, err)
	}
	// EDNS is echoed.
	m = new(dns.Msg)
	m.SetQuestion("web.vm.", dns.TypeA)
	m.SetEdns0(1232, false)
	if r, err = dns.Exchange(m, s.Addr()); err != nil || r.IsEdns0() == nil {
		t.Fatalf("EDNS: %v %v", r, err)
	}
}

func TestConcurrentUpdatesAndQueries(t *testing.T) {
	s := start(t)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				name := fmt.Sprintf("vm%d-%d", w, i%10)
				s.Set(name, netip.AddrFrom4([4]byte{172, 30, byte(w), byte(i % 200)}))
				if i%3 == 0 {
					s.Remove(name)
				}
				if i%50 == 0 {
					s.Replace(map[string]netip.Addr{name: netip.MustParseAddr("172.30.9.9")})
				}
			}
		}()
	}
	c := &dns.Client{Timeout: 2 * time.Second}
	for i := range 300 {
		m := new(dns.Msg)
		m.SetQuestion(fmt.Sprintf("vm%d-%d.vm.", i%4, i%10), dns.TypeA)
		r, _, err := c.Exchange(m, s.Addr())
		if err != nil {
			t.Fatal(err)
		}
		if r.Rcode != dns.RcodeSuccess && r.Rcode != dns.RcodeNameError {
			t.Fatalf("rcode %s under concurrent updates", dns.RcodeToString[r.Rcode])
		}
	}
	close(stop)
	wg.Wait()
}

func TestLifecycle(t *testing.T) {
	s := New("127.0.0.1:0", "vm", nil)
	ctx, cancel := context.WithCancel(context.Background())
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx); err == nil {
		t.Fatal("second Start succeeded")
	}
	addr := s.Addr()
	if strings.HasSuffix(addr, ":0") {
		t.Fatalf("Addr = %s, want the bound port", addr)
	}
	// The same port is taken for TCP too.
	if _, err := net.Listen("tcp", addr); err == nil {
		t.Fatal("TCP port not bound")
	}
	// A second server on the same address fails with a helpful error.
	s2 := New(addr, "vm", nil)
	if err := s2.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "config.toml") {
		t.Fatalf("second server on %s: %v", addr, err)
	}
	// Cancelling the context stops the server and frees the port.
	cancel()
	deadline := time.Now().Add(5 * time.Second)
	for {
		pc, err := net.ListenPacket("udp", addr)
		if err == nil {
			pc.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("port %s still bound after cancel: %v", addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err == nil {
		t.Fatal("Start after Close succeeded")
	}
}

// fakeWriter captures a reply for the fuzz test.
type fakeWriter struct {
	dns.ResponseWriter
	msg *dns.Msg
}

func (f *fakeWriter) WriteMsg(m *dns.Msg) error { f.msg = m; return nil }

func FuzzServeDNS(f *testing.F) {
	s := New("127.0.0.1:0", "vm", nil)
	s.Set("web", netip.MustParseAddr("172.30.0.5"))
	for _, name := range []string{"web.vm.", "x.vm.", "vm.", "example.com.", "a.b.web.vm."} {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		b, _ := m.Pack()
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		req := new(dns.Msg)
		if err := req.Unpack(data); err != nil {
			return
		}
		w := &fakeWriter{}
		s.ServeDNS(w, req)
		if w.msg == nil {
			t.Fatal("no reply")
		}
		if w.msg.Rcode == dns.RcodeServerFailure {
			t.Fatalf("SERVFAIL for %v", req)
		}
		if _, err := w.msg.Pack(); err != nil {
			t.Fatalf("reply does not pack: %v", err)
		}
	})
}
