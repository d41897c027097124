package fakefc

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Main is the entry point of cmd/fakefc. Called as "jailer*" it is the fake
// jailer, otherwise the fake firecracker. It returns the exit status.
func Main(args []string) int {
	if strings.HasPrefix(filepath.Base(args[0]), "jailer") {
		return jailerMain(args)
	}
	return firecrackerMain(args)
}

func firecrackerMain(args []string) int {
	fs := flag.NewFlagSet("firecracker", flag.ContinueOnError)
	apiSock := fs.String("api-sock", "/run/firecracker.socket", "path of the API socket")
	id := fs.String("id", "anonymous-instance", "microVM id")
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.String("start-time-us", "", "(jailer) ignored")
	fs.String("start-time-cpu-us", "", "(jailer) ignored")
	fs.String("parent-cpu-time-us", "", "(jailer) ignored")
	fs.String("level", "", "ignored")
	fs.String("log-path", "", "ignored")
	specVersion := fs.String("spec-version", envOr(EnvSpecVersion, "1.16.1"), "fake only: API spec version to serve (1.5.0, 1.14.1, 1.16.1)")
	specDir := fs.String("spec-dir", os.Getenv(EnvSpecDir), "fake only: directory holding firecracker-vX.yaml")
	bootMode := fs.String("boot-mode", envOr(EnvBootMode, BootNone), "fake only: none or qemu")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if *showVersion {
		fmt.Printf("Firecracker v%s\n\nSupported snapshot data format versions: v1.0.0\n", *specVersion)
		return 0
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if *specDir == "" {
		d, err := DefaultSpecDir()
		if err != nil {
			fmt.Fprintln(os.Stderr, "fakefc:", err)
			return 1
		}
		*specDir = d
	}
	spec, err := LoadAPISpec(SpecFile(*specDir, *specVersion))
	if err != nil {
		fmt.Fprintln(os.Stderr, "fakefc:", err)
		return 1
	}
	srv := NewServer(spec, *id)
	srv.Console = os.Stdout
	srv.Log = logger
	srv.Chroot = os.Getenv(EnvChroot)
	sockPath := srv.hostPath(*apiSock)
	if p := os.Getenv(EnvTrace); p != "" {
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			fmt.Fprintln(os.Stderr, "fakefc:", err)
			return 1
		}
		defer f.Close()
		srv.Trace = f
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer stop()
	exit := make(chan int, 1)
	srv.Exit = func(code int) {
		select {
		case exit <- code:
		default:
		}
	}
	var guest *qemuGuest
	switch *bootMode {
	case BootNone:
	case BootQEMU:
		guest, err = newQEMUGuest(srv, sockPath, logger)
		if err != nil {
			fmt.Fprintln(os.Stderr, "fakefc:", err)
			return 1
		}
		defer guest.cleanup()
		srv.Guest = guest
	default:
		fmt.Fprintf(os.Stderr, "fakefc: unknown boot mode %q (none, qemu)\n", *bootMode)
		return 2
	}

	if _, err := os.Stat(sockPath); err == nil {
		fmt.Fprintf(os.Stderr, "fakefc: Failed to open the API socket at %s: address in use\n", sockPath)
		return 1
	}
	ln, err := net.Listen("unix", sockPath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fakefc: Failed to open the API socket at %s: %v\n", sockPath, err)
		return 1
	}
	defer os.Remove(sockPath)
	hs := &http.Server{Handler: srv}
	go func() { _ = hs.Serve(ln) }()
	fmt.Fprintf(os.Stderr, "fakefc %s (api spec %s, boot mode %s) serving %s\n", *id, spec.Version, *bootMode, sockPath)

	code := 0
	var exited <-chan struct{}
	if guest != nil {
		exited = guest.Exited()
	}
	select {
	case <-ctx.Done():
		fmt.Fprintln(os.Stderr, "fakefc: signal received, exiting")
	case code = <-exit:
	case <-exited:
		fmt.Fprintln(os.Stderr, "fakefc: guest exited")
	}
	if guest != nil {
		_ = guest.Stop(context.Background())
	}
	_ = hs.Close()
	return code
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

var jailerID = regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`)

// jailerMain emulates the jailer without isolating anything: it validates
// the arguments like the jailer, makes <base>/<exec>/<id>/root (when
// missing) with a copy of the exec file, daemonizes (setsid + /dev/null stdio, failing
// when it is a process-group leader, as the real one does), drops to
// uid/gid and execs the copy in place with --id=<id> and the arguments after
// "--". Instead of chroot it passes FAKEFC_CHROOT so the fake firecracker
// resolves paths inside the jail.
func jailerMain(args []string) int {
	fs := flag.NewFlagSet("jailer", flag.ContinueOnError)
	id := fs.String("id", "", "")
	execFile := fs.String("exec-file", "", "")
	uid := fs.Int("uid", -1, "")
	gid := fs.Int("gid", -1, "")
	base := fs.String("chroot-base-dir", "/srv/jailer", "")
	daemonize := fs.Bool("daemonize", false, "")
	newPidNS := fs.Bool("new-pid-ns", false, "")
	fs.String("netns", "", "")
	fs.String("cgroup-version", "", "")
	fs.String("parent-cgroup", "", "")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	die := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "fake jailer: "+format+"\n", a...)
		return 1
	}
	if !jailerID.MatchString(*id) {
		return die("Invalid instance ID: %q", *id)
	}
	if !strings.Contains(filepath.Base(*execFile), "firecracker") {
		return die("Invalid filename. The filename of `--exec-file` option must contain \"firecracker\": %s", *execFile)
	}
	if *uid < 0 || *gid < 0 {
		return die("--uid and --gid are required")
	}
	if *newPidNS {
		return die("--new-pid-ns is not emulated")
	}
	execName := filepath.Base(*execFile)
	chroot := filepath.Join(*base, execName, *id, "root")
	if err := os.MkdirAll(chroot, 0o755); err != nil {
		return die("create chroot: %v", err)
	}
	target := filepath.Join(chroot, execName)
	if err := copyExec(*execFile, target); err != nil {
		return die("copy exec file: %v", err)
	}
	// Like the real jailer, the chroot itself stays root's (banger's
	// PrepareJail made it, with run/ already the VMM's): only run/ is
	// created when missing and given to the VMM's user.
	run := filepath.Join(chroot, "run")
	if _, err := os.Lstat(run); errors.Is(err, os.ErrNotExist) {
		if err := os.Mkdir(run, 0o700); err != nil {
			return die("%v", err)
		}
		if err := os.Lchown(run, *uid, *gid); err != nil {
			return die("chown %s: %v", run, err)
		}
	}
	if *daemonize {
		if syscall.Getpgrp() == os.Getpid() {
			return die("Failed to daemonize: setsid: Operation not permitted (the jailer must not be a process group leader)")
		}
		if _, err := unix.Setsid(); err != nil {
			return die("Failed to daemonize: setsid: %v", err)
		}
		devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
		if err != nil {
			return die("%v", err)
		}
		for fd := 0; fd <= 2; fd++ {
			if err := unix.Dup2(int(devnull.Fd()), fd); err != nil {
				return die("dup2: %v", err)
			}
		}
	}
	if err := os.Chdir(chroot); err != nil {
		return die("%v", err)
	}
	env := []string{EnvChroot + "=" + chroot}
	for _, k := range []string{EnvSpecDir, EnvSpecVersion, EnvBootMode, EnvQEMUAccel, EnvTrace, "PATH"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	argv := append([]string{target, "--id=" + *id, "--start-time-us=0", "--start-time-cpu-us=0"}, fs.Args()...)
	if os.Geteuid() == 0 {
		if err := syscall.Setgroups(nil); err != nil {
			return die("setgroups: %v", err)
		}
		if err := syscall.Setgid(*gid); err != nil {
			return die("setgid: %v", err)
		}
		if err := syscall.Setuid(*uid); err != nil {
			return die("setuid: %v", err)
		}
	}
	err := syscall.Exec(target, argv, env)
	return die("exec %s: %v", target, err)
}

// copyExec copies the exec file into the jail (hard link when possible,
// which is what a copy of an immutable binary amounts to).
func copyExec(src, dst string) error {
	src, err := filepath.EvalSymlinks(src)
	if err != nil {
		return err
	}
	_ = os.Remove(dst)
	if os.Link(src, dst) == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
