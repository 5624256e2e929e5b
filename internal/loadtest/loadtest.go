// Package loadtest drives a running stagefleet serve and its IVS emulator
// with simulated hosts and viewers, samples what the emulator sees, and
// reports what it measured against the service's targets.
//
// Everything it talks to must be on this machine: URLs are checked, and the
// dialer refuses any address that is not loopback.
package loadtest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// DefaultEmulator is where the emulator is looked for when the API does not
// say (serve's default EMULATOR_ADDR).
const DefaultEmulator = "http://127.0.0.1:4566"

// Config is one run.
type Config struct {
	// API is stagefleet serve's base URL; several instances of one
	// deployment, separated by commas, are called in turn.
	API string
	// Emulator is the IVS emulator's base URL; "" asks GET /api/health,
	// then falls back to DefaultEmulator.
	Emulator string
	// APIKey goes in x-api-key when set.
	APIKey   string
	Scenario Scenario
	// Viewers over all broadcasts; 0: the scenario's default.
	Viewers int
	// Rate is arrivals per second over all broadcasts; 0: the scenario's
	// default.
	Rate float64
	// Hold is how long a viewer stays once seated (in flap: the pause at
	// each end of a wave); 0: the scenario's default.
	Hold time.Duration
	// Heartbeat is how often a seated viewer renews its seat.
	Heartbeat time.Duration
	// Broadcasts is how many shows run at once, each with its own host.
	Broadcasts int
	// Capacity is the server's STAGE_CAPACITY; 0: read from the origin stage.
	Capacity int
	// Threshold is the server's SCALE_UP_THRESHOLD (flap swings around it);
	// 0: Capacity - Capacity/10, serve's default ratio.
	Threshold int
	// Waves is how many times flap swings up and down.
	Waves int
	// Stabilization is the server's SCALE_DOWN_STABILIZATION: the window of
	// the flap check.
	Stabilization time.Duration
	// DrainWait is how long drain waits for the replica stages to go once
	// everyone has left; 0: Stabilization + 10s.
	DrainWait time.Duration
	// Timeout stops the run, whatever it is doing; 0: the plan's length
	// plus Hold, DrainWait and two minutes.
	Timeout time.Duration
	// SampleEvery is how often the emulator's state is sampled.
	SampleEvery time.Duration
	// MaxStages, StageQuota and RateLimit are the server's MAX_STAGES,
	// STAGE_QUOTA and rate limit, which its API does not report; when
	// known (not 0 or nil), the scenario is checked against them before
	// the viewers start.
	MaxStages  int
	StageQuota int
	RateLimit  *RateLimit
	// Warn is given each setting of the target that makes the scenario
	// impossible, in a line naming the setting to change, before the
	// viewers start; nil: they are logged at warn.
	Warn func(string)
	// Strict refuses to start the viewers when there is such a warning.
	Strict bool
	// Concurrency is how many viewers million seats, or renews, at once;
	// 0: 256.
	Concurrency int
	// Renewals is how many rounds of renewals million runs once everyone
	// is seated, each renewing every seat once; 0: 1.
	Renewals int
	// Processes are the deployment's processes whose peak memory the
	// report gives (Linux).
	Processes []Process
	// Redis is the deployment's Redis (a redis:// URL on this machine),
	// whose commands, CPU and memory the report gives; "": not measured.
	Redis string
	// Progress, when set, is called after every sample.
	Progress func(Progress)
	Logger   *slog.Logger
}

// Progress is the state of a run, for a progress display.
type Progress struct {
	Phase     string
	Elapsed   time.Duration
	Planned   int
	Requested int
	Waiting   int
	Seated    int
	Left      int
	Refused   int
	Stages    int
}

// Phases of a run, in order.
const (
	phaseLive     = "going live"
	phaseViewers  = "viewers"
	phaseRenewals = "renewals"
	phaseDrain    = "drain wait"
)

// errTimeout is the cause of a run's context ending at Config.Timeout.
var errTimeout = errors.New("the run's timeout was reached")

// cleanupTimeout bounds what a run does after it was stopped: viewers and
// hosts leaving, the last sample.
const cleanupTimeout = 10 * time.Second

// Most viewers of a run: per viewer goroutines, or million's pool.
const (
	maxViewers        = 100_000
	maxMillionViewers = 1_000_000
)

func (cfg Config) withDefaults() (Config, error) {
	d, ok := scenarioDefaults[cfg.Scenario]
	if !ok {
		return cfg, fmt.Errorf("unknown scenario %q: use steady, storm, flap, drain or million", cfg.Scenario)
	}
	if cfg.Viewers == 0 {
		cfg.Viewers = d.viewers
	}
	if cfg.Rate == 0 {
		cfg.Rate = d.rate
	}
	if cfg.Hold == 0 {
		cfg.Hold = d.hold
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = 15 * time.Second
	}
	if cfg.Broadcasts == 0 {
		cfg.Broadcasts = 1
	}
	if cfg.Waves == 0 {
		cfg.Waves = 4
	}
	if cfg.Stabilization == 0 {
		cfg.Stabilization = 60 * time.Second
	}
	if cfg.DrainWait == 0 {
		cfg.DrainWait = cfg.Stabilization + 10*time.Second
	}
	if cfg.SampleEvery == 0 {
		cfg.SampleEvery = 250 * time.Millisecond
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = 256
	}
	if cfg.Renewals == 0 {
		cfg.Renewals = 1
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Warn == nil {
		log := cfg.Logger
		cfg.Warn = func(w string) { log.Warn(w) }
	}
	// Every viewer of the other scenarios is a goroutine with its own
	// heartbeat; million holds its audience without.
	most, more := maxViewers, " (more with --scenario million)"
	if cfg.Scenario == Million {
		most, more = maxMillionViewers, ""
	}
	switch {
	case cfg.Viewers < 0 || cfg.Viewers > most:
		return cfg, fmt.Errorf("--viewers %d: must be between 1 and %d%s", cfg.Viewers, most, more)
	case cfg.Concurrency < 1 || cfg.Concurrency > 10_000:
		return cfg, fmt.Errorf("--concurrency %d: must be between 1 and 10000", cfg.Concurrency)
	case cfg.Renewals < 0 || cfg.Renewals > 100:
		return cfg, fmt.Errorf("--renewals %d: must be between 1 and 100", cfg.Renewals)
	case cfg.Rate <= 0 || cfg.Rate > 10_000:
		return cfg, fmt.Errorf("--rate %v: must be above 0 and at most 10000 per second", cfg.Rate)
	case cfg.Hold < 0 || cfg.Heartbeat < 0 || cfg.Stabilization < 0 || cfg.DrainWait < 0 || cfg.Timeout < 0:
		return cfg, errors.New("durations must not be negative")
	case cfg.Broadcasts < 1 || cfg.Broadcasts > 50:
		return cfg, fmt.Errorf("--broadcasts %d: must be between 1 and 50", cfg.Broadcasts)
	case cfg.Capacity < 0 || cfg.Threshold < 0 || cfg.Waves < 0 || cfg.MaxStages < 0 || cfg.StageQuota < 0:
		return cfg, errors.New("--capacity, --threshold, --waves, --max-stages and --stage-quota must not be negative")
	case cfg.RateLimit != nil && (cfg.RateLimit.Requests < 0 || cfg.RateLimit.Requests > 0 && cfg.RateLimit.Window <= 0):
		return cfg, fmt.Errorf("--rate-limit %v: want 0 or more requests in a positive window", *cfg.RateLimit)
	case cfg.Scenario != Flap && cfg.Viewers < cfg.Broadcasts:
		return cfg, fmt.Errorf("--viewers %d: at least one per broadcast (%d)", cfg.Viewers, cfg.Broadcasts)
	}
	return cfg, nil
}

// run is one load test in progress.
type run struct {
	cfg        Config
	log        *slog.Logger
	c          *client
	res        *resources
	broadcasts []string
	rec        *recorder
	smp        *sampler
	// arrivals are the viewers' plan, once the capacity is known;
	// warnings, what the target's settings make impossible.
	arrivals []arrival
	warnings []string
}

// host is a broadcast's simulated host, publishing in its origin.
type host struct {
	broadcast     string
	stageArn      string
	participantID string
}

// Run runs the load test cfg describes and reports what it measured. The
// error is for a run that could not start (a bad setting, no server, no
// host going live, with Config.Strict a warning); a run stopped by
// Config.Timeout or by ctx still reports, with StoppedBy saying so.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	var apis []string
	for api := range strings.SplitSeq(cfg.API, ",") {
		if err := CheckLoopback("api", api); err != nil {
			return nil, err
		}
		apis = append(apis, strings.TrimRight(api, "/"))
	}
	if cfg.Emulator != "" {
		if err := CheckLoopback("emulator", cfg.Emulator); err != nil {
			return nil, err
		}
	}
	runCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if cfg.Timeout > 0 {
		stop := time.AfterFunc(cfg.Timeout, func() { cancel(errTimeout) })
		defer stop.Stop()
	}

	res, err := newResources(cfg.Processes, cfg.Redis)
	if err != nil {
		return nil, err
	}
	defer res.close()
	r := &run{cfg: cfg, log: cfg.Logger, c: newClient(apis, cfg.APIKey), res: res, rec: newRecorder(cfg.Logger)}
	defer r.c.close()
	if r.c.emu, err = r.findEmulator(runCtx); err != nil {
		return nil, err
	}
	id := runID()
	for b := range cfg.Broadcasts {
		r.broadcasts = append(r.broadcasts, fmt.Sprintf("loadtest-%s-%d", id, b+1))
	}
	r.smp = newSampler(r.c, cfg.SampleEvery, r.broadcasts, r.rec, cfg.Progress)
	if err := r.smp.sample(runCtx); err != nil {
		return nil, fmt.Errorf("no IVS emulator answers at %s (the load test joins viewers through its control API; pass --emulator): %w", r.c.emu, err)
	}
	var bg sync.WaitGroup
	defer bg.Wait()
	smpCtx, stopSampling := context.WithCancel(runCtx)
	defer stopSampling()
	bg.Go(func() { r.smp.run(smpCtx) })

	r.smp.setPhase(phaseLive)
	hosts, capacity, err := r.goLive(runCtx)
	defer func() { r.hostsLeave(ctx, hosts) }()
	if err != nil {
		return nil, err
	}
	if cfg.Capacity == 0 {
		cfg.Capacity = capacity
	}
	if cfg.Threshold == 0 {
		cfg.Threshold = cfg.Capacity - cfg.Capacity/10
	}
	if cfg.Scenario == Flap && cfg.Viewers == 0 {
		// Flap's audience follows from the capacity; report its peak.
		_, high := flapBounds(0, cfg.Capacity, cfg.Threshold)
		cfg.Viewers = high * cfg.Broadcasts
	}
	p, err := r.plan(cfg)
	if err != nil {
		return nil, err
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = time.Since(r.smp.start) + planLength(p) + cfg.Hold + cfg.DrainWait + 2*time.Minute
		if cfg.Scenario == Million {
			// Its pace is the deployment's, not the plan's: allow at least
			// 500 viewer requests a second.
			cfg.Timeout += time.Duration(cfg.Viewers*(1+cfg.Renewals)/500) * time.Second
		}
		stop := time.AfterFunc(cfg.Timeout-time.Since(r.smp.start), func() { cancel(errTimeout) })
		defer stop.Stop()
	}
	r.cfg, r.arrivals = cfg, p
	r.warnings = checkLimits(planDemand(p, cfg), r.targetLimits(runCtx))
	for _, w := range r.warnings {
		cfg.Warn(w)
	}
	if cfg.Strict && len(r.warnings) > 0 {
		return nil, fmt.Errorf("not starting the viewers (--strict): the target's settings make this scenario impossible (%d warning(s))", len(r.warnings))
	}

	r.smp.setPhase(phaseViewers)
	r.rec.setPlanned(len(p))
	if err := r.res.begin(runCtx, r.c.requests.Load()); err != nil {
		return nil, err
	}
	viewersStart := time.Now()
	var renewals *RenewalCounts
	var ends []BroadcastEnd
	if cfg.Scenario == Million {
		rc, held := r.million(runCtx, viewersStart, p)
		renewals = &rc
		// The show is over: the hosts stop, the operator ends it.
		r.hostsLeave(ctx, hosts)
		hosts = nil
		ends = r.endBroadcasts(runCtx, held)
	} else {
		r.viewers(runCtx, viewersStart, p)
	}
	allLeft := time.Now()

	var drained *time.Duration
	if (cfg.Scenario == Drain || cfg.Scenario == Million) && runCtx.Err() == nil {
		r.smp.setPhase(phaseDrain)
		drained = r.waitDrained(runCtx, allLeft)
	}
	stopSampling()
	bg.Wait()
	// The last sample is taken even after a timeout: the report needs it.
	finalCtx, cancelFinal := afterStop(ctx)
	defer cancelFinal()
	if err := r.smp.sample(finalCtx); err != nil {
		r.log.Warn("last sample of the emulator's state failed; the report uses the one before", "error", err)
	}

	rep := r.report(viewersStart, allLeft, drained)
	rep.Renewals, rep.Ends = renewals, ends
	rep.Resources, err = r.res.end(finalCtx, r.c.requests.Load())
	if err != nil {
		r.log.Warn("reading what the deployment used failed; the report leaves it out", "error", err)
	}
	switch {
	case context.Cause(runCtx) == errTimeout:
		rep.StoppedBy = "timeout"
	case ctx.Err() != nil:
		rep.StoppedBy = "interrupted"
	default:
		rep.StoppedBy = "completed"
	}
	rep.evaluate()
	return rep, nil
}

// runID tells one run's broadcasts from another's, so that a run starts on
// fresh origin stages whose counters only it has moved.
func runID() string {
	return strings.ToLower(rand.Text()[:6])
}

// findEmulator returns the emulator's URL: the configured one, else the one
// GET /api/health names, else DefaultEmulator. The health check also shows
// that the API answers at all.
func (r *run) findEmulator(ctx context.Context) (string, error) {
	var h struct {
		IVS struct {
			Mode     string `json:"mode"`
			Endpoint string `json:"endpoint"`
		} `json:"ivs"`
	}
	for _, api := range r.c.apis {
		res, err := r.c.callInstance(ctx, api, http.MethodGet, "/api/health", nil, &h)
		if err != nil {
			return "", fmt.Errorf("stagefleet serve does not answer at %s (start it with: stagefleet serve): %w", api, err)
		}
		if res.Status != http.StatusOK && res.Status != http.StatusServiceUnavailable {
			return "", fmt.Errorf("GET /api/health at %s: %s", api, res)
		}
	}
	if r.cfg.Emulator != "" {
		return strings.TrimRight(r.cfg.Emulator, "/"), nil
	}
	emu := DefaultEmulator
	if u, err := url.Parse(h.IVS.Endpoint); err == nil && (u.Scheme == "http" || u.Scheme == "https") {
		// An emulator listening on every interface is reachable on loopback.
		if ip := net.ParseIP(u.Hostname()); ip != nil && ip.IsUnspecified() {
			u.Host = net.JoinHostPort("127.0.0.1", u.Port())
		}
		emu = strings.TrimRight(u.String(), "/")
	} else {
		r.log.Info("the API does not name an IVS emulator; trying the default", "ivs_mode", h.IVS.Mode, "emulator", emu)
	}
	if err := CheckLoopback("emulator", emu); err != nil {
		return "", fmt.Errorf("the API's IVS endpoint is not on this machine; pass --emulator: %w", err)
	}
	return emu, nil
}

// goLive makes every broadcast's host publish and waits until each origin
// takes viewers. It returns the hosts that joined (to be made to leave,
// also on error) and the stage capacity the API reports.
func (r *run) goLive(ctx context.Context) ([]host, int, error) {
	var hosts []host
	capacity := 0
	for _, b := range r.broadcasts {
		var tok struct {
			Token    string `json:"token"`
			StageArn string `json:"stageArn"`
		}
		res, err := r.c.callAPI(ctx, http.MethodPost, "/api/token/publisher", map[string]string{"userId": "loadtest-host", "broadcastId": b}, &tok)
		switch {
		case err != nil:
			return hosts, 0, fmt.Errorf("host token for %s: %w", b, err)
		case res.Status == http.StatusUnauthorized:
			return hosts, 0, fmt.Errorf("the API refused the key (%s: %s): pass --api-key (or set API_SECRET_KEY)", res, res.Message)
		case res.Status != http.StatusOK:
			return hosts, 0, fmt.Errorf("host token for %s: %s: %s", b, res, res.Message)
		}
		var j struct {
			ParticipantID string `json:"participantId"`
			StageArn      string `json:"stageArn"`
		}
		er, err := r.c.callEmulator(ctx, http.MethodPost, "/_emulator/participants/join", map[string]string{"token": tok.Token}, &j)
		if err == nil && er.Status != http.StatusOK {
			err = fmt.Errorf("%s: %s", er, er.Message)
		}
		if err != nil {
			return hosts, 0, fmt.Errorf("host of %s joining the emulator: %w", b, err)
		}
		h := host{broadcast: b, stageArn: j.StageArn, participantID: j.ParticipantID}
		hosts = append(hosts, h)
		er, err = r.c.callEmulator(ctx, http.MethodPost, "/_emulator/participants/publish", map[string]string{"stageArn": h.stageArn, "participantId": h.participantID}, nil)
		if err == nil && er.Status != http.StatusOK {
			err = fmt.Errorf("%s: %s", er, er.Message)
		}
		if err != nil {
			return hosts, 0, fmt.Errorf("host of %s publishing: %w", b, err)
		}
		if capacity, err = r.waitLive(ctx, h); err != nil {
			return hosts, 0, err
		}
	}
	return hosts, capacity, nil
}

// liveWait bounds how long a host's origin may take to take viewers: the
// server hears of the host publishing through an IVS event, or at the
// latest at its next reconcile (RECONCILE_INTERVAL, 10 s by default).
const liveWait = 30 * time.Second

// waitLive polls the broadcast's stages until its origin takes viewers, and
// returns the origin's capacity.
func (r *run) waitLive(ctx context.Context, h host) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, liveWait)
	defer cancel()
	for {
		var list struct {
			Stages []struct {
				Arn      string `json:"arn"`
				Role     string `json:"role"`
				Capacity int    `json:"capacity"`
				Seatable bool   `json:"seatable"`
			} `json:"stages"`
		}
		res, err := r.c.callAPI(ctx, http.MethodGet, "/api/stage/list?broadcastId="+url.QueryEscape(h.broadcast), nil, &list)
		if err == nil && res.Status == http.StatusOK {
			for _, s := range list.Stages {
				if s.Arn == h.stageArn && s.Seatable {
					return s.Capacity, nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("the origin %s of %s did not take viewers within %v of its host publishing (last answer: %v %v)", h.stageArn, h.broadcast, liveWait, res, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// hostsLeave disconnects the hosts, so that a run leaves no one publishing,
// also when it was stopped.
func (r *run) hostsLeave(ctx context.Context, hosts []host) {
	ctx, cancel := afterStop(ctx)
	defer cancel()
	for _, h := range hosts {
		er, err := r.c.callEmulator(ctx, http.MethodPost, "/_emulator/participants/leave", map[string]string{"stageArn": h.stageArn, "participantId": h.participantID}, nil)
		if err != nil || er.Status != http.StatusOK {
			r.log.Warn("host did not leave the emulator", "broadcast", h.broadcast, "answer", er, "error", err)
		}
	}
}

// plan lays out the run's viewers.
func (r *run) plan(cfg Config) ([]arrival, error) {
	s := shape{
		Scenario: cfg.Scenario, Viewers: cfg.Viewers, Rate: cfg.Rate, Hold: cfg.Hold,
		Broadcasts: cfg.Broadcasts, Capacity: cfg.Capacity, Threshold: cfg.Threshold, Waves: cfg.Waves,
	}
	if cfg.Scenario == Flap {
		if cfg.Capacity < 2 || cfg.Threshold >= cfg.Capacity+1 {
			return nil, fmt.Errorf("flap needs a capacity of 2 or more and a threshold at most the capacity (capacity %d, threshold %d)", cfg.Capacity, cfg.Threshold)
		}
		if _, high := flapBounds(cfg.Viewers/cfg.Broadcasts, cfg.Capacity, cfg.Threshold); high <= cfg.Threshold {
			return nil, fmt.Errorf("flap: %d viewers per broadcast never cross the threshold %d; ask for more, or leave --viewers out", high, cfg.Threshold)
		}
	}
	return plan(s), nil
}

// viewers runs every planned viewer to its end.
func (r *run) viewers(ctx context.Context, start time.Time, p []arrival) {
	var wg sync.WaitGroup
	// In drain everyone leaves together, once every viewer has been seated
	// (or given up) and Hold has passed.
	var settled sync.WaitGroup
	settled.Add(len(p))
	leaveAll := make(chan struct{})
	if r.cfg.Scenario == Drain {
		wg.Go(func() {
			defer close(leaveAll)
			settled.Wait()
			sleep(ctx, r.cfg.Hold)
		})
	}
	for i, a := range p {
		wg.Go(func() {
			r.newViewer(i, a).play(ctx, start, sync.OnceFunc(settled.Done), leaveAll)
		})
	}
	wg.Wait()
}

// waitDrained waits until the broadcasts have no replica stage left, or
// DrainWait has passed since everyone left. It returns how long after
// allLeft the last replica stage went, nil if some are left.
func (r *run) waitDrained(ctx context.Context, allLeft time.Time) *time.Duration {
	deadline := allLeft.Add(r.cfg.DrainWait)
	for {
		if n, at := r.smp.replicasNow(); n == 0 {
			d := max(0, at.Sub(allLeft))
			return &d
		}
		if time.Now().After(deadline) || !sleep(ctx, r.cfg.SampleEvery) {
			return nil
		}
	}
}

// sleep waits d, or less if ctx ends first; it says whether ctx is alive.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
