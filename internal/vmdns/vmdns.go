// Package vmdns is the daemon's authoritative DNS server for `<name>.vm`
// (the zone is configurable). It answers over UDP and TCP on one address:
//
//   - A for the name of a running VM (records follow start/stop/delete
//     through Set and Remove, and are rebuilt from the store with Replace);
//   - NXDOMAIN, authoritative with the zone's SOA, for unknown names in the
//     zone, so resolvers cache the miss only briefly;
//   - NOERROR with no answer (and the SOA) for other types of known names;
//   - REFUSED for names outside the zone: it is not a recursive resolver;
//   - FORMERR/NOTIMP for malformed queries and other opcodes.
//
// It never answers SERVFAIL. All methods are safe for concurrent use.
package vmdns

import (
	"context"
	"errors"
	"fmt"
	"github.com/bangerdev/banger/internal/model"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// Defaults for the daemon's configuration. The port is high (no privilege
// needed) and away from mDNS's 5353.
const (
	DefaultAddr   = "127.0.0.1:10053"
	DefaultDomain = model.DNSDomain
)

// TTLs. Short, because records change when VMs start and stop, and negative
// answers are cached for the SOA minimum.
const (
	RecordTTL   = 5
	NegativeTTL = 1
)

// Server is an authoritative DNS server for one zone.
type Server struct {
	addr string
	zone string // canonical: lower case, fully qualified ("vm.")
	log  *slog.Logger

	serial atomic.Uint32

	mu      sync.RWMutex
	records map[string]netip.Addr // lower-case label -> address

	lmu      sync.Mutex
	started  bool
	closed   bool
	bound    string
	servers  []*dns.Server
	stopCtx  func() bool
	serveErr chan error
}

// New returns a server for domain (e.g. "vm") that will listen on addr
// (e.g. "127.0.0.1:5353"; port 0 picks a free port shared by UDP and TCP).
// Nothing listens until Start.
func New(addr, domain string, logger *slog.Logger) *Server {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		addr:    addr,
		zone:    dns.CanonicalName(strings.TrimPrefix(domain, ".")),
		log:     logger,
		records: map[string]netip.Addr{},
	}
	s.serial.Store(uint32(time.Now().Unix()))
	return s
}

// Zone returns the fully qualified zone name, e.g. "vm.".
func (s *Server) Zone() string { return s.zone }

// Start binds UDP and TCP on the address and serves in the background until
// Close is called or ctx is cancelled. Queries are answered as soon as Start
// returns.
func (s *Server) Start(ctx context.Context) error {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	if s.closed {
		return errors.New("dns server closed")
	}
	if s.started {
		return errors.New("dns server already started")
	}
	if s.zone == "." || s.zone == "" {
		return fmt.Errorf("dns zone %q: set a domain such as vm", s.zone)
	}
	pc, ln, err := listenBoth(ctx, s.addr)
	if err != nil {
		return fmt.Errorf("dns listen on %s: %w (pick another dns port in config.toml if it is taken)", s.addr, err)
	}
	s.bound = pc.LocalAddr().String()
	s.serveErr = make(chan error, 2)
	started := make(chan struct{}, 2)
	notify := func() { started <- struct{}{} }
	s.servers = []*dns.Server{
		{PacketConn: pc, Handler: s, NotifyStartedFunc: notify},
		{Listener: ln, Handler: s, NotifyStartedFunc: notify, ReadTimeout: 10 * time.Second, IdleTimeout: func() time.Duration { return 10 * time.Second }},
	}
	for _, srv := range s.servers {
		go func() { s.serveErr <- srv.ActivateAndServe() }()
	}
	for range s.servers {
		select {
		case <-started:
		case err := <-s.serveErr:
			s.shutdownLocked()
			pc.Close()
			ln.Close()
			return fmt.Errorf("dns serve on %s: %w", s.bound, err)
		}
	}
	s.started = true
	s.stopCtx = context.AfterFunc(ctx, func() { _ = s.Close() })
	s.log.Info("dns server listening", "addr", s.bound, "zone", s.zone)
	return nil
}

// listenBoth binds UDP and TCP on the same port. With port 0 it retries when
// the port picked for UDP is taken for TCP.
func listenBoth(ctx context.Context, addr string) (net.PacketConn, net.Listener, error) {
	var lc net.ListenConfig
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, err
	}
	var lastErr error
	for range 20 {
		pc, err := lc.ListenPacket(ctx, "udp", addr)
		if err != nil {
			return nil, nil, err
		}
		ln, err := lc.Listen(ctx, "tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		lastErr = err
		if port != "0" {
			break
		}
	}
	return nil, nil, lastErr
}

// Addr returns the bound address (ip:port) once started, else the
// configured one.
func (s *Server) Addr() string {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	if s.bound != "" {
		return s.bound
	}
	return s.addr
}

// Close stops serving and releases the port. Closing twice is fine.
func (s *Server) Close() error {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if s.stopCtx != nil {
		s.stopCtx()
	}
	return s.shutdownLocked()
}

func (s *Server) shutdownLocked() error {
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, srv := range s.servers {
		if err := srv.ShutdownContext(ctx); err != nil && !strings.Contains(err.Error(), "not started") {
			errs = append(errs, err)
		}
	}
	s.servers = nil
	return errors.Join(errs...)
}

// label turns a VM name (or name.vm / name.vm.) into the record key; ok is
// false for names that cannot be a single DNS label.
func (s *Server) label(name string) (string, bool) {
	n := strings.ToLower(strings.TrimSuffix(name, "."))
	n = strings.TrimSuffix(n, "."+strings.TrimSuffix(s.zone, "."))
	if n == "" || len(n) > 63 || strings.ContainsAny(n, ". \t\\") {
		return "", false
	}
	if _, ok := dns.IsDomainName(n); !ok {
		return "", false
	}
	return n, true
}

// Set points name.<zone> at ip (IPv4). Names that are not a DNS label are
// ignored with a warning.
func (s *Server) Set(name string, ip netip.Addr) {
	l, ok := s.label(name)
	if !ok || !ip.Unmap().Is4() {
		s.log.Warn("dns: ignoring record", "name", name, "ip", ip)
		return
	}
	s.mu.Lock()
	s.records[l] = ip.Unmap()
	s.mu.Unlock()
	s.serial.Add(1)
}

// Remove deletes name's record (no-op if absent).
func (s *Server) Remove(name string) {
	l, ok := s.label(name)
	if !ok {
		return
	}
	s.mu.Lock()
	delete(s.records, l)
	s.mu.Unlock()
	s.serial.Add(1)
}

// Replace swaps the whole record set atomically (daemon start: the running
// VMs from the store).
func (s *Server) Replace(records map[string]netip.Addr) {
	next := make(map[string]netip.Addr, len(records))
	for name, ip := range records {
		l, ok := s.label(name)
		if !ok || !ip.Unmap().Is4() {
			s.log.Warn("dns: ignoring record", "name", name, "ip", ip)
			continue
		}
		next[l] = ip.Unmap()
	}
	s.mu.Lock()
	s.records = next
	s.mu.Unlock()
	s.serial.Add(1)
}

// Lookup returns the address recorded for name.
func (s *Server) Lookup(name string) (netip.Addr, bool) {
	l, ok := s.label(name)
	if !ok {
		return netip.Addr{}, false
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	ip, ok := s.records[l]
	return ip, ok
}

func (s *Server) soa() *dns.SOA {
	return &dns.SOA{
		Hdr:     dns.RR_Header{Name: s.zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: NegativeTTL},
		Ns:      "ns." + s.zone,
		Mbox:    "hostmaster." + s.zone,
		Serial:  s.serial.Load(),
		Refresh: 3600,
		Retry:   600,
		Expire:  86400,
		Minttl:  NegativeTTL,
	}
}

// ServeDNS implements dns.Handler.
func (s *Server) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	_ = w.WriteMsg(s.answer(r))
}

// answer builds the reply to r (see the package comment for the rules).
func (s *Server) answer(r *dns.Msg) *dns.Msg {
	m := new(dns.Msg)
	if len(r.Question) != 1 {
		m.SetRcodeFormatError(r)
		return m
	}
	m.SetReply(r)
	m.RecursionAvailable = false
	if opt := r.IsEdns0(); opt != nil {
		m.SetEdns0(dns.DefaultMsgSize, false)
	}
	if r.Opcode != dns.OpcodeQuery {
		m.Rcode = dns.RcodeNotImplemented
		return m
	}
	q := r.Question[0]
	name := strings.ToLower(q.Name)
	if !dns.IsSubDomain(s.zone, name) || q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY {
		m.Rcode = dns.RcodeRefused
		return m
	}
	m.Authoritative = true
	nodata := func() *dns.Msg {
		m.Ns = []dns.RR{s.soa()}
		return m
	}
	if name == s.zone {
		switch q.Qtype {
		case dns.TypeSOA, dns.TypeANY:
			m.Answer = []dns.RR{s.soa()}
		case dns.TypeNS:
			m.Answer = []dns.RR{&dns.NS{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeNS, Class: dns.ClassINET, Ttl: RecordTTL}, Ns: "ns." + s.zone}}
		default:
			return nodata()
		}
		return m
	}
	label := strings.TrimSuffix(name, "."+s.zone)
	var ip netip.Addr
	ok := false
	if !strings.Contains(label, ".") {
		s.mu.RLock()
		ip, ok = s.records[label]
		s.mu.RUnlock()
	}
	if !ok {
		m.Rcode = dns.RcodeNameError
		return nodata()
	}
	if q.Qtype != dns.TypeA && q.Qtype != dns.TypeANY {
		return nodata()
	}
	m.Answer = []dns.RR{&dns.A{
		Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: RecordTTL},
		A:   net.IP(ip.AsSlice()),
	}}
	return m
}
