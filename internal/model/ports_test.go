package model

import (
	"errors"
	"strings"
	"testing"
)

func TestParsePortForward(t *testing.T) {
	for spec, want := range map[string]PortForward{
		"18080:8080":          {"127.0.0.1", 18080, 8080, "tcp"},
		"18080:8080/tcp":      {"127.0.0.1", 18080, 8080, "tcp"},
		"18080:8080/TCP":      {"127.0.0.1", 18080, 8080, "tcp"},
		"0.0.0.0:8443:443":    {"0.0.0.0", 8443, 443, "tcp"},
		"192.168.1.5:80:8080": {"192.168.1.5", 80, 8080, "tcp"},
		"[::1]:8080:80":       {"::1", 8080, 80, "tcp"},
		"[::]:8080:80/tcp":    {"::", 8080, 80, "tcp"},
		" 1:65535 ":           {"127.0.0.1", 1, 65535, "tcp"},
		"127.0.0.1:00080:080": {"127.0.0.1", 80, 80, "tcp"},
	} {
		got, err := ParsePortForward(spec)
		if err != nil || got != want {
			t.Errorf("ParsePortForward(%q) = %+v, %v; want %+v", spec, got, err, want)
		}
	}
	for _, spec := range []string{
		"", "8080", "a:b", "0:80", "80:0", "65536:80", "80:65536", "80:80/udp", "80:80/", "-1:80",
		"1.2.3:80:80", "::1:80:80", "[::1:80:80", "[1.2.3.4]:80:80", "[fe80::1%eth0]:80:80",
		"localhost:80:80", "224.0.0.1:80:80", "1.2.3.4:80:80:80", "[::ffff:1.2.3.4]:80:80", "+80:80", "8 0:80",
	} {
		if got, err := ParsePortForward(spec); !errors.Is(err, ErrBadPortSpec) {
			t.Errorf("ParsePortForward(%q) = %+v, %v; want ErrBadPortSpec", spec, got, err)
		} else if !strings.Contains(err.Error(), "HOSTPORT:GUESTPORT") {
			t.Errorf("error for %q does not show the form: %v", spec, err)
		}
	}
}

func TestValidatePortForwards(t *testing.T) {
	f := func(s string) PortForward {
		p, err := ParsePortForward(s)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	ok := [][]PortForward{
		nil,
		{f("8080:80"), f("8081:80")},
		{f("127.0.0.1:8080:80"), f("127.0.0.2:8080:80")},
		{f("0.0.0.0:8080:80"), f("[::1]:8080:80")},
	}
	for _, fw := range ok {
		if err := ValidatePortForwards(fw); err != nil {
			t.Errorf("%v: %v", fw, err)
		}
	}
	bad := [][]PortForward{
		{f("8080:80"), f("8080:81")},
		{f("0.0.0.0:8080:80"), f("127.0.0.1:8080:81")},
		{f("127.0.0.1:8080:80"), f("0.0.0.0:8080:81")},
		{f("[::]:8080:80"), f("[::1]:8080:81")},
		{{HostAddr: "127.0.0.1", HostPort: 0, GuestPort: 80, Proto: "tcp"}},
		{{HostAddr: "127.0.0.1", HostPort: 80, GuestPort: 80, Proto: "udp"}},
		{{HostAddr: "::ffff:127.0.0.1", HostPort: 80, GuestPort: 80, Proto: "tcp"}},
	}
	for _, fw := range bad {
		if err := ValidatePortForwards(fw); !errors.Is(err, ErrBadPortSpec) {
			t.Errorf("%v: %v, want ErrBadPortSpec", fw, err)
		}
	}
}

func FuzzParsePortForward(f *testing.F) {
	for _, s := range []string{"18080:8080", "0.0.0.0:8443:443/tcp", "[::1]:80:80", "80:80/udp", "[::1:80", "1.2.3.4:80:80:80"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePortForward(s)
		if err != nil {
			if !errors.Is(err, ErrBadPortSpec) {
				t.Fatalf("error without ErrBadPortSpec: %v", err)
			}
			return
		}
		if p.HostPort < 1 || p.HostPort > 65535 || p.GuestPort < 1 || p.GuestPort > 65535 || p.Proto != "tcp" {
			t.Fatalf("%q parsed to out-of-range %+v", s, p)
		}
		// The canonical form parses back to the same forward.
		again, err := ParsePortForward(p.String())
		if err != nil || again != p {
			t.Fatalf("%q -> %+v -> %q -> %+v, %v", s, p, p.String(), again, err)
		}
		if err := ValidatePortForwards([]PortForward{p}); err != nil {
			t.Fatalf("%+v does not validate: %v", p, err)
		}
	})
}
