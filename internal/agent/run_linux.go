package agent

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"sync"
	"time"
)

// GuestOptions configure RunGuest.
type GuestOptions struct {
	TokenFile string // TokenPath
	PortName  string // virtio-serial port name (PortName); "" = none
	VsockPort uint32 // 0 = no vsock listener
	System    System
	Logger    *slog.Logger

	// SerialRetry is how often a missing or disconnected virtio-serial port
	// is polled (default 50ms: a port without a host connection reads EOF
	// at once and cannot be waited on).
	SerialRetry time.Duration

	Builtins map[string]Builtin // Server.Builtins
}

// RunGuest is banger-agent's main loop: it reads the token, then serves
// sessions on the virtio-serial port (one at a time, a new one whenever the
// host reconnects) and on the vsock port (one per connection) until ctx
// ends. A transport the VM does not have is skipped; the agent keeps
// looking for the serial port, because the module may load late.
func RunGuest(ctx context.Context, o GuestOptions) error {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	token := ""
	if data, err := os.ReadFile(o.TokenFile); err != nil {
		log.Warn("no agent token: every request will be refused until an identity sets one", "file", o.TokenFile, "err", err)
	} else if token, err = ParseToken(data); err != nil {
		log.Warn("bad agent token file: every request will be refused", "file", o.TokenFile, "err", err)
		token = ""
	}
	retry := o.SerialRetry
	if retry <= 0 {
		retry = 50 * time.Millisecond
	}
	// One Server for both transports, so a token rotated over one holds for
	// the other.
	base := Server{Token: token, System: o.System, Logger: log, Builtins: o.Builtins}
	serial := &base
	var wg sync.WaitGroup
	if o.PortName != "" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			serveSerial(ctx, serial, o.PortName, retry, log)
		}()
	}
	if o.VsockPort != 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			serveVsock(ctx, serial, o.VsockPort, log)
		}()
	}
	wg.Wait()
	return ctx.Err()
}

func serveSerial(ctx context.Context, srv *Server, name string, retry time.Duration, log *slog.Logger) {
	var dev string
	warned := false
	for ctx.Err() == nil {
		p, err := FindSerialPort("/sys", "/dev", name)
		if err == nil {
			dev = p
			break
		}
		if !warned {
			log.Info("waiting for the virtio-serial port", "port", name, "err", err)
			warned = true
		}
		sleep(ctx, 500*time.Millisecond)
	}
	if dev == "" {
		return
	}
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		log.Error("open virtio-serial port", "dev", dev, "err", err)
		return
	}
	defer f.Close()
	log.Info("serving on virtio-serial", "dev", dev)
	go func() {
		<-ctx.Done()
		_ = f.SetDeadline(time.Now())
	}()
	eof := newEOFReader(f)
	for ctx.Err() == nil {
		start := time.Now()
		err := srv.Serve(ctx, serialPort{transportFile{f, "virtio-serial"}, eof})
		if err != nil && ctx.Err() == nil {
			log.Debug("virtio-serial session ended", "err", err)
		}
		// Without a host connection reads return EOF at once.
		if time.Since(start) < retry {
			sleep(ctx, retry)
		}
	}
}

// transportFile is an *os.File that names its transport for Health.
type transportFile struct {
	*os.File
	name string
}

func (t transportFile) Transport() string { return t.name }

// serialPort is the virtio-serial port file with reads through an
// eofReader (see serialport.go).
type serialPort struct {
	transportFile
	eof *eofReader
}

func (p serialPort) Read(b []byte) (int, error) { return p.eof.Read(b) }

func serveVsock(ctx context.Context, srv *Server, port uint32, log *slog.Logger) {
	ln, err := ListenVsock(port)
	if err != nil {
		log.Info("no vsock listener", "port", port, "err", err)
		return
	}
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	log.Info("serving on vsock", "port", port)
	sem := make(chan struct{}, 16)
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, os.ErrClosed) {
				log.Error("vsock accept", "err", err)
			}
			return
		}
		select {
		case sem <- struct{}{}:
		default:
			log.Warn("too many vsock sessions; refusing one")
			c.Close()
			continue
		}
		go func() {
			defer func() { <-sem }()
			defer c.Close()
			if err := srv.Serve(ctx, transportFile{c, "vsock"}); err != nil && ctx.Err() == nil {
				log.Debug("vsock session ended", "err", err)
			}
		}()
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
