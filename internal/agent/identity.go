package agent

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strings"

	"golang.org/x/crypto/ssh"
)

// MaxEntropy bounds Identity.Entropy.
const MaxEntropy = 4096

var (
	hostnamePattern  = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)
	domainPattern    = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$`)
	machineIDPattern = regexp.MustCompile(`^[0-9a-f]{32}$`)
	tokenPattern     = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// Validate checks every set field; the agent refuses an Identity that does
// not pass (CodeBadRequest) before changing anything.
func (id Identity) Validate() error {
	var errs []error
	if id.Token != "" && !tokenPattern.MatchString(id.Token) {
		errs = append(errs, errors.New("token: want 64 lowercase hex digits"))
	}
	if len(id.Entropy) > MaxEntropy {
		errs = append(errs, fmt.Errorf("entropy: %d bytes, at most %d", len(id.Entropy), MaxEntropy))
	}
	if id.MachineID != "" && !machineIDPattern.MatchString(id.MachineID) {
		errs = append(errs, fmt.Errorf("machine id %q: want 32 lowercase hex digits", id.MachineID))
	}
	if id.Hostname != "" && !hostnamePattern.MatchString(id.Hostname) {
		errs = append(errs, fmt.Errorf("hostname %q: want a DNS label", id.Hostname))
	}
	if id.Domain != "" && !domainPattern.MatchString(id.Domain) {
		errs = append(errs, fmt.Errorf("domain %q: want a DNS name", id.Domain))
	}
	if id.Domain != "" && id.Hostname == "" {
		errs = append(errs, errors.New("domain without a hostname"))
	}
	if id.MAC != "" {
		if hw, err := net.ParseMAC(id.MAC); err != nil || len(hw) != 6 {
			errs = append(errs, fmt.Errorf("mac %q: want xx:xx:xx:xx:xx:xx", id.MAC))
		}
	}
	if id.Address != "" {
		if p, err := netip.ParsePrefix(id.Address); err != nil || !p.Addr().Is4() {
			errs = append(errs, fmt.Errorf("address %q: want an IPv4 address with a prefix length", id.Address))
		}
	}
	if (id.Gateway != "" || len(id.DNS) > 0) && id.Address == "" {
		errs = append(errs, errors.New("gateway or dns without an address"))
	}
	if id.Gateway != "" {
		if a, err := netip.ParseAddr(id.Gateway); err != nil || !a.Is4() {
			errs = append(errs, fmt.Errorf("gateway %q: want an IPv4 address", id.Gateway))
		}
	}
	if len(id.DNS) > 8 {
		errs = append(errs, fmt.Errorf("dns: %d servers, at most 8", len(id.DNS)))
	}
	for _, d := range id.DNS {
		if _, err := netip.ParseAddr(d); err != nil {
			errs = append(errs, fmt.Errorf("dns server %q: want an IP address", d))
		}
	}
	if len(id.HostKey) > 0 {
		if len(id.HostKey) > 16<<10 {
			errs = append(errs, errors.New("host key: larger than 16 KiB"))
		} else if _, err := ssh.ParsePrivateKey(id.HostKey); err != nil {
			errs = append(errs, fmt.Errorf("host key: %w", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("invalid identity: %w", err)
	}
	return nil
}

// NewToken returns a fresh random token (TokenBytes, hex).
func NewToken() (string, error) {
	b := make([]byte, TokenBytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("agent token: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// ParseToken checks the contents of a token file and returns the token.
func ParseToken(data []byte) (string, error) {
	t := strings.TrimSpace(string(data))
	if !tokenPattern.MatchString(t) {
		return "", errors.New("agent token: want 64 lowercase hex digits")
	}
	return t, nil
}
