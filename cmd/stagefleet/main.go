// Command stagefleet fans one live IVS real-time host out to as many viewers
// as come. Subcommands: serve, emulator, loadtest, version.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/stagefleet/stagefleet/internal/app"
	"github.com/stagefleet/stagefleet/internal/config"
	"github.com/stagefleet/stagefleet/internal/emulator"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `usage: stagefleet <command> [flags]

commands:
  serve      run the HTTP API (see stagefleet serve --help)
  emulator   run a local IVS real-time service (see stagefleet emulator --help)
  loadtest   load a running serve with simulated viewers (see stagefleet loadtest --help)
  version    print the version
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	if code := exitStatus(err); code != 0 {
		fmt.Fprintln(os.Stderr, "stagefleet:", err)
		os.Exit(code)
	}
}

// exitStatus is the process's exit status for run's error: 0 for none or
// for help asked for and printed, 1 for a load test that ran and missed a
// target, 2 for anything else (a usage error, a run that could not start).
func exitStatus(err error) int {
	switch {
	case err == nil || errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errTargetsMissed):
		return 1
	default:
		return 2
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command given")
	}
	switch args[0] {
	case "serve":
		return runServe(ctx, args[1:], stderr)
	case "emulator":
		return runEmulator(ctx, args[1:], stderr)
	case "loadtest":
		return runLoadtest(ctx, args[1:], stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "stagefleet", buildVersion())
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", args[0])
	}
}

func buildVersion() string {
	if version != "dev" {
		return version
	}
	if info, ok := debug.ReadBuildInfo(); ok && info.Main.Version != "" && info.Main.Version != "(devel)" {
		return info.Main.Version
	}
	return version
}

func runEmulator(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("stagefleet emulator", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := emulator.DefaultConfig()
	addr := fs.String("addr", "127.0.0.1:4566", "address to listen on (loopback unless --allow-remote)")
	allowRemote := fs.Bool("allow-remote", false, "allow an --addr that other machines can reach")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	cfg.RegisterFlags(fs, "")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	// The emulator accepts any credentials and its control API can reset
	// everything, so anyone who reaches it can do anything with it: listening
	// beyond this machine has to be asked for.
	remote := !emulator.IsLoopbackAddr(*addr)
	if remote && !*allowRemote {
		return fmt.Errorf("--addr %s is not a loopback address: the emulator accepts any credentials and its control API "+
			"can reset everything, so anyone who can reach it can use it; listen on 127.0.0.1, or pass --allow-remote", *addr)
	}
	log, err := newLogger(stderr, *logLevel)
	if err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	if remote {
		log.Warn("listening beyond loopback: anyone who reaches this address can call and reset the emulator", "addr", *addr)
	}
	cfg.Logger = log
	emu, err := emulator.New(cfg)
	if err != nil {
		return err
	}
	defer emu.Close()
	log.Info("IVS real-time emulator listening", "addr", *addr, "region", cfg.Region, "events_urls", cfg.EventsURLs)
	return emu.ListenAndServe(ctx, *addr)
}

func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, err
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l, ReplaceAttr: durationMillis})), nil
}

// durationMillis writes a time.Duration attribute as a number of
// milliseconds (a float, so sub-millisecond times survive), its key
// suffixed "_ms" unless it already ends so. The JSON handler would write
// integer nanoseconds under the bare key, which nobody reads right, and
// every other duration in the logs (the access log's duration_ms) is in
// milliseconds already.
func durationMillis(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() != slog.KindDuration {
		return a
	}
	key := a.Key
	if !strings.HasSuffix(key, "_ms") {
		key += "_ms"
	}
	return slog.Float64(key, float64(a.Value.Duration())/float64(time.Millisecond))
}

func runServe(ctx context.Context, args []string, stderr io.Writer) error {
	emuCfg := emulator.DefaultConfig()
	cfg, err := config.Load(args, os.Getenv, stderr, func(fs *flag.FlagSet) {
		emuCfg.RegisterFlags(fs, "emulator-")
	})
	if err != nil {
		return err
	}
	log, err := newLogger(stderr, cfg.LogLevel)
	if err != nil {
		return err
	}
	cfg.Version = buildVersion()
	a, err := app.New(ctx, cfg, emuCfg, log)
	if err != nil {
		return err
	}
	defer a.Close()
	return a.Run(ctx)
}
