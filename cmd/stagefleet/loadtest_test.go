package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestLoadtestCommand runs stagefleet serve and then stagefleet loadtest
// --json against it, both through run, as a person would in two shells.
func TestLoadtestCommand(t *testing.T) {
	apiAddr, emuAddr := freeAddr(t), freeAddr(t)
	_, apiPort, _ := strings.Cut(apiAddr, ":")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var serveOut, serveErr syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--api-host", "127.0.0.1", "--api-port", apiPort, "--emulator-addr", emuAddr,
			"--ivs-mode", "emulator", "--rate-limit-max-requests", "0", "--scale-down-stabilization", "2s", "--log-level", "error",
			"--data-dir", t.TempDir()}, &serveOut, &serveErr)
	}()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v\n%s", err, serveErr.String())
			}
		case <-time.After(20 * time.Second):
			t.Error("serve did not stop within 20s")
		}
	}()
	waitHealthy(t, "http://"+apiAddr, done, &serveErr)

	chart := filepath.Join(t.TempDir(), "run.svg")
	var stdout, stderr bytes.Buffer
	// serve's own limits (MAX_STAGES and STAGE_QUOTA by default, its rate
	// limit off), which allow the run: no warning. The window is 2 s, as
	// in TestDrainAgainstServe: arrivals that stall a second on a loaded
	// machine would rightly have an empty replica removed and made again,
	// which the flap check counts.
	err := run(t.Context(), []string{"loadtest", "--api", "http://" + apiAddr, "--scenario", "drain", "--viewers", "60", "--rate", "60",
		"--hold", "200ms", "--stabilization", "2s", "--drain-wait", "10s", "--timeout", "1m", "--json", "--chart", chart,
		"--max-stages", "20", "--stage-quota", "100", "--rate-limit", "off"}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("loadtest: %v\nstderr:\n%s\nstdout:\n%s", err, stderr.String(), stdout.String())
	}
	var rep struct {
		Scenario string   `json:"scenario"`
		Emulator string   `json:"emulator"`
		Warnings []string `json:"warnings"`
		Viewers  struct {
			Seated int `json:"seated"`
		} `json:"viewers"`
		TimeToSeat struct {
			Count int     `json:"count"`
			P99Ms float64 `json:"p99Ms"`
		} `json:"timeToSeat"`
		Drain *struct {
			ReplicasLeft []string `json:"replicasLeft"`
		} `json:"drain"`
		Targets []struct {
			Name string `json:"name"`
			Pass bool   `json:"pass"`
		} `json:"targets"`
		Pass bool `json:"pass"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("stdout is not the JSON report: %v\n%s", err, stdout.String())
	}
	switch {
	case rep.Scenario != "drain" || rep.Viewers.Seated != 60 || rep.TimeToSeat.Count != 60:
		t.Errorf("report %+v; want a drain with 60 viewers seated", rep)
	case rep.Emulator != "http://"+emuAddr:
		t.Errorf("emulator %q; want the one /api/health names, http://%s", rep.Emulator, emuAddr)
	case rep.Drain == nil || len(rep.Drain.ReplicasLeft) != 0 || len(rep.Targets) != 5:
		t.Errorf("drain %+v, targets %+v; want no replica stage left and five targets", rep.Drain, rep.Targets)
	case rep.Warnings == nil || len(rep.Warnings) != 0:
		t.Errorf("warnings %q; want an empty list", rep.Warnings)
	}
	for _, target := range rep.Targets {
		// Time to seat is measured, not asserted: -race on a busy machine
		// stretches it.
		if !target.Pass && target.Name != "p99 time to seat" {
			t.Errorf("target %q missed", target.Name)
		}
	}
	svg, err := os.ReadFile(chart)
	if err != nil || !bytes.Contains(svg, []byte("<svg")) {
		t.Errorf("--chart wrote %d bytes (%v); want an SVG", len(svg), err)
	}
	// stderr is no terminal here: at most plain progress lines (one every
	// 5 s), nothing rewritten in place, no warning.
	for line := range strings.Lines(stderr.String()) {
		if !strings.HasSuffix(line, " joins/s\n") || strings.ContainsAny(line, "\r\033") {
			t.Errorf("stderr line %q; want only plain progress lines", line)
		}
	}

	// A run that misses a target fails, after writing its report, with
	// exit status 1: a drain that does not wait for the stabilization
	// window leaves replica stages.
	stdout.Reset()
	stderr.Reset()
	err = run(t.Context(), []string{"loadtest", "--api", "http://" + apiAddr, "--scenario", "drain", "--viewers", "60", "--rate", "60",
		"--hold", "200ms", "--stabilization", "2s", "--drain-wait", "1ms", "--timeout", "1m", "--progress", "off"}, &stdout, &stderr)
	if !errors.Is(err, errTargetsMissed) || !strings.Contains(err.Error(), "drain leaves no replica stage") || exitStatus(err) != 1 {
		t.Errorf("loadtest with replicas left = %v (exit status %d); want targets missed naming the drain, exit status 1", err, exitStatus(err))
	}
	if !strings.Contains(stdout.String(), "FAIL  drain leaves no replica stage") {
		t.Errorf("no text report with the missed target:\n%s", stdout.String())
	}
	if stderr.Len() != 0 {
		t.Errorf("stderr %q with --progress off and no warning; want nothing", stderr.String())
	}

	// --strict refuses to start a scenario the target's settings make
	// impossible: 60 viewers on one broadcast do not fit one stage of 50.
	stdout.Reset()
	stderr.Reset()
	err = run(t.Context(), []string{"loadtest", "--api", "http://" + apiAddr, "--scenario", "storm", "--viewers", "60", "--rate", "60",
		"--max-stages", "1", "--strict", "--json"}, &stdout, &stderr)
	if err == nil || errors.Is(err, errTargetsMissed) || !strings.Contains(err.Error(), "--strict") || exitStatus(err) != 2 {
		t.Errorf("loadtest --strict with MAX_STAGES too low = %v (exit status %d); want a refusal to start, exit status 2", err, exitStatus(err))
	}
	if !strings.Contains(stderr.String(), "stagefleet loadtest: warning: a broadcast's audience peaks at 60 viewers, and MAX_STAGES=1") ||
		!strings.Contains(stderr.String(), "MAX_STAGES=2 or more") {
		t.Errorf("stderr %q; want a warning naming MAX_STAGES", stderr.String())
	}
	if stdout.Len() != 0 {
		t.Errorf("stdout %q; want no report from a run that did not start", stdout.String())
	}
}

func TestExitStatus(t *testing.T) {
	tests := []struct {
		err  error
		want int
	}{
		{nil, 0},
		{flag.ErrHelp, 0},
		{fmt.Errorf("%w: p99 time to seat", errTargetsMissed), 1},
		{errors.New("unknown command \"x\""), 2},
		{fmt.Errorf("interrupted: %w", context.Canceled), 2},
	}
	for _, tt := range tests {
		if got := exitStatus(tt.err); got != tt.want {
			t.Errorf("exitStatus(%v) = %d, want %d", tt.err, got, tt.want)
		}
	}
}

// waitHealthy polls GET /api/health until serve answers.
func waitHealthy(t *testing.T, api string, done <-chan error, serveErr *syncBuffer) {
	t.Helper()
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := client.Get(api + "/api/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case err := <-done:
			t.Fatalf("serve returned before answering: %v\n%s", err, serveErr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve did not answer /api/health within 10s: %v\n%s", err, serveErr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestLoadtestCommandErrors(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		mention string
	}{
		{"remote API", []string{"loadtest", "--api", "http://10.20.30.40:3000"}, "only targets this machine"},
		{"remote emulator", []string{"loadtest", "--emulator", "http://192.168.0.9:4566"}, "--emulator"},
		{"unknown scenario", []string{"loadtest", "--scenario", "tornado"}, "tornado"},
		{"stray argument", []string{"loadtest", "extra"}, "extra"},
		{"unwritable chart", []string{"loadtest", "--chart", "/nonexistent-dir/x.svg"}, "--chart"},
		{"nothing listening", []string{"loadtest", "--api", "http://127.0.0.1:1"}, "does not answer"},
		{"unknown progress", []string{"loadtest", "--progress", "sometimes"}, "--progress"},
		{"malformed rate limit", []string{"loadtest", "--rate-limit", "1000"}, "requests/window"},
		{"negative MAX_STAGES", []string{"loadtest", "--max-stages", "-1"}, "--max-stages"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := run(t.Context(), tt.args, &stdout, &stderr)
			if err == nil || !strings.Contains(err.Error(), tt.mention) {
				t.Fatalf("run(%q) = %v; want an error naming %q", tt.args, err, tt.mention)
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout %q; want no report for a run that did not start", stdout.String())
			}
		})
	}
}
