package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/stagefleet/stagefleet/internal/loadtest"
)

// errTargetsMissed is a load test that ran and missed a target: main
// exits 1 on it, and 2 on a run that could not start, so that a script
// can tell a service that fell short from a test that did not run.
var errTargetsMissed = errors.New("targets missed")

// runLoadtest runs stagefleet loadtest: the report goes to stdout,
// progress and warnings to stderr. It fails on a run that cannot start
// (with --strict, also on a setting of the target that makes the scenario
// impossible), and with errTargetsMissed on a missed target.
func runLoadtest(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("stagefleet loadtest", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg loadtest.Config
	fs.StringVar(&cfg.API, "api", "http://127.0.0.1:3000", "stagefleet serve's URL (this machine only); several instances separated by commas are called in turn")
	fs.StringVar(&cfg.Emulator, "emulator", "", "the IVS emulator's URL (default: the one GET /api/health names, else "+loadtest.DefaultEmulator+")")
	fs.StringVar(&cfg.APIKey, "api-key", os.Getenv("API_SECRET_KEY"), "x-api-key to send ($API_SECRET_KEY)")
	scenario := fs.String("scenario", string(loadtest.Storm), "steady, storm, flap, drain or million")
	fs.IntVar(&cfg.Viewers, "viewers", 0, "viewers over all broadcasts (default: steady 600, storm and drain 2000, flap capacity + (capacity - threshold) per broadcast, million 1000000)")
	fs.Float64Var(&cfg.Rate, "rate", 0, "viewer arrivals per second over all broadcasts (default: steady 20, storm and drain 200, flap 10, million 10000 as a ceiling)")
	fs.DurationVar(&cfg.Hold, "hold", 0, "how long a viewer stays once seated; in flap, the pause at each end of a wave; in million, the audience's hold after the renewals (default: steady 10s, storm 30s, flap 5s, drain and million 10s)")
	fs.IntVar(&cfg.Concurrency, "concurrency", 0, "million: viewers seated or renewed at once (default 256)")
	fs.IntVar(&cfg.Renewals, "renewals", 0, "million: rounds of renewals once everyone is seated, each renewing every seat once (default 1)")
	fs.Func("process", "NAME=PID of a process of the deployment whose peak memory the report gives; repeatable", func(s string) error {
		p, err := loadtest.ParseProcess(s)
		if err != nil {
			return err
		}
		cfg.Processes = append(cfg.Processes, p)
		return nil
	})
	fs.StringVar(&cfg.Redis, "redis", "", "the deployment's Redis (redis://127.0.0.1:PORT), whose commands, CPU and memory per API request the report gives")
	// Zero defaults: loadtest.Config's own (named in the help) apply.
	fs.DurationVar(&cfg.Heartbeat, "heartbeat", 0, "how often a seated viewer sends a heartbeat (default 15s)")
	fs.IntVar(&cfg.Broadcasts, "broadcasts", 0, "shows at once, each with its own host (default 1)")
	fs.IntVar(&cfg.Capacity, "capacity", 0, "the server's STAGE_CAPACITY (default: as the API reports it)")
	fs.IntVar(&cfg.Threshold, "threshold", 0, "the server's SCALE_UP_THRESHOLD, which flap swings around (default: capacity - capacity/10, as serve's defaults)")
	fs.IntVar(&cfg.Waves, "waves", 0, "flap: how many times the audience swings up and down (default 4)")
	fs.DurationVar(&cfg.Stabilization, "stabilization", 0, "the server's SCALE_DOWN_STABILIZATION: the flap check's window (default 1m0s)")
	fs.DurationVar(&cfg.DrainWait, "drain-wait", 0, "drain: how long to wait for the replica stages to go once everyone left (default: --stabilization + 10s)")
	fs.DurationVar(&cfg.Timeout, "timeout", 0, "stop the run after this long, whatever it is doing (default: the scenario's length + hold + drain wait + 2m)")
	// The API does not report these: given, they are checked against the
	// scenario before it starts.
	fs.IntVar(&cfg.MaxStages, "max-stages", 0, "the server's MAX_STAGES, to warn when it cannot seat the audience's peak (default: unknown)")
	fs.IntVar(&cfg.StageQuota, "stage-quota", 0, "the server's STAGE_QUOTA, to warn when the run's stages would exceed it (default: unknown)")
	fs.Func("rate-limit", "the server's RATE_LIMIT_MAX_REQUESTS/RATE_LIMIT_WINDOW_MS as a duration, e.g. 1000/1m (serve's default) or off, to warn when it would refuse the scenario's requests (default: unknown)", func(s string) error {
		l, err := loadtest.ParseRateLimit(s)
		if err != nil {
			return err
		}
		cfg.RateLimit = &l
		return nil
	})
	fs.BoolVar(&cfg.Strict, "strict", false, "refuse to start (exit status 2) when the target's settings make the scenario impossible")
	progressMode := fs.String("progress", "auto", "progress on stderr: auto (a line in place on a terminal, else a line every 5s), on (a line in place), off")
	asJSON := fs.Bool("json", false, "write the report as JSON")
	chartFile := fs.String("chart", "", "write an SVG chart of viewers, seats, refusals and stages over time to this file")
	logLevel := fs.String("log-level", "warn", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	var err error
	if cfg.Scenario, err = loadtest.ParseScenario(*scenario); err != nil {
		return fmt.Errorf("--scenario: %w", err)
	}

	var progress *loadtest.ProgressWriter
	switch *progressMode {
	case "auto":
		progress = loadtest.NewProgressWriter(stderr, isTerminal(stderr))
	case "on":
		progress = loadtest.NewProgressWriter(stderr, true)
	case "off":
	default:
		return fmt.Errorf("--progress %q: use auto, on or off", *progressMode)
	}
	// Log lines and warnings go through the progress line, which clears
	// itself first.
	errOut := stderr
	if progress != nil {
		cfg.Progress = progress.Show
		errOut = progress
	}
	if cfg.Logger, err = newLogger(errOut, *logLevel); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	cfg.Warn = func(w string) { fmt.Fprintln(errOut, "stagefleet loadtest: warning:", w) }
	// The chart's file is created first, so that a path that cannot be
	// written fails before the run rather than after it.
	var chart *os.File
	if *chartFile != "" {
		if chart, err = os.Create(*chartFile); err != nil {
			return fmt.Errorf("--chart: %w", err)
		}
		defer chart.Close()
	}

	rep, err := loadtest.Run(ctx, cfg)
	if progress != nil {
		progress.Clear()
	}
	if err != nil {
		if chart != nil {
			chart.Close()
			os.Remove(*chartFile)
		}
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(rep)
	} else {
		err = rep.WriteText(stdout)
	}
	if err != nil {
		return fmt.Errorf("writing the report: %w", err)
	}
	if chart != nil {
		if err := rep.WriteChart(chart); err != nil {
			chart.Close()
			os.Remove(*chartFile) // nothing half-written
			return err
		}
		if err := chart.Close(); err != nil {
			return fmt.Errorf("--chart: %w", err)
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("interrupted: %w", err)
	}
	if !rep.Pass {
		return fmt.Errorf("%w: %s", errTargetsMissed, strings.Join(rep.Missed(), ", "))
	}
	return nil
}

// isTerminal says whether w is a terminal, where a progress line that
// rewrites itself makes sense.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
