package app

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/stagefleet/stagefleet/internal/api"
	"github.com/stagefleet/stagefleet/internal/config"
	"github.com/stagefleet/stagefleet/internal/fleet"
	"github.com/stagefleet/stagefleet/internal/ivs"
)

// errNoAnswer marks a probe that failed because IVS did not answer, as
// opposed to one IVS answered with bad news.
var errNoAnswer = errors.New("IVS does not answer")

// probeInterval is how often IVS is asked whether it answers (and whether
// it still holds the token signing key): health reports the last finding,
// so that a health check never costs an IVS call.
const probeInterval = 5 * time.Second

// probe keeps the last finding of a periodic IVS call.
type probe struct {
	call func(context.Context) error

	mu      sync.Mutex
	checked time.Time
	err     error
}

// newProbe checks the signing key where there is one (the call proves IVS
// answers too), else lists stages.
func (a *App) newProbe(client *ivs.Client) *probe {
	if a.key != nil {
		return &probe{call: a.key.check}
	}
	return &probe{call: func(ctx context.Context) error {
		if _, err := client.ListStages(ctx, func(ivs.Stage) bool { return false }); err != nil {
			return fmt.Errorf("%w: %w", errNoAnswer, err)
		}
		return nil
	}}
}

func (p *probe) check(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, probeInterval)
	defer cancel()
	err := p.call(ctx)
	p.mu.Lock()
	p.checked, p.err = time.Now(), err
	p.mu.Unlock()
}

// run checks at once, then every interval until ctx ends.
func (p *probe) run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		p.check(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (p *probe) state() (checked time.Time, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.checked, p.err
}

// Check states.
const (
	checkOK       = "ok"
	checkDegraded = "degraded"
	checkFailed   = "failed"
)

// health looks at every part: the store answers; IVS answered the last
// probe; IVS holds the token signing key; the controller's loop runs and
// its reconcile works; every broadcast's origin exists. A failed part that
// stops viewers from being seated makes the service unhealthy (503);
// anything else that is wrong, degraded.
func (a *App) health(ctx context.Context) api.Health {
	checks := map[string]api.Check{}
	h := api.Health{
		Uptime:      time.Since(a.started).Round(time.Millisecond).Seconds(),
		Environment: a.cfg.Environment,
		Version:     a.cfg.Version,
		Memory:      memoryUse(),
		Checks:      checks,
		IVS:         api.Component{Status: "ok", Mode: a.cfg.Mode(), Endpoint: a.endpointName(), Tokens: a.tokens, Embedded: a.emu != nil},
		Store:       api.Component{Status: "ok", Mode: a.cfg.StoreKind()},
		Controller:  api.Component{Status: "ok"},
	}
	h.Services.AWS = api.HealthAWS{Region: a.cfg.AWSRegion, Mode: a.cfg.Mode()}
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := a.fleet.Broadcast(pctx, fleet.DefaultBroadcast); err == nil || a.cfg.MasterStageArn != "" {
		h.Services.AWS.StageConfigured = true
	}
	storeErr := a.store.Ping(pctx)
	switch {
	case storeErr != nil:
		checks["store"] = api.Check{Status: checkFailed, Message: "the " + a.cfg.StoreKind() + " store does not answer: " + storeErr.Error()}
		h.Store.Status, h.Store.Error = "error", storeErr.Error()
	default:
		checks["store"] = api.Check{Status: checkOK, Message: "the " + a.cfg.StoreKind() + " store answers"}
	}
	h.Services.Redis = "not used (memory store)"
	if a.cfg.StoreKind() == config.StoreRedis {
		h.Services.Redis = "connected"
		if storeErr != nil {
			h.Services.Redis = "disconnected"
		}
	}

	checked, ivsErr := a.probe.state()
	var keyErr error
	if a.key != nil {
		// The probe is the key check: IVS answered unless it says so.
		keyErr = ivsErr
		if !errors.Is(ivsErr, errNoAnswer) {
			ivsErr = nil
		}
	}
	switch {
	case checked.IsZero():
		checks["ivs"] = api.Check{Status: checkOK, Message: "not probed yet"}
	case ivsErr != nil:
		checks["ivs"] = api.Check{Status: checkFailed, Message: "IVS did not answer at " + checked.UTC().Format(time.RFC3339) + ": " + ivsErr.Error()}
		h.IVS.Status, h.IVS.Error = "error", ivsErr.Error()
	default:
		checks["ivs"] = api.Check{Status: checkOK, Message: "IVS answered at " + checked.UTC().Format(time.RFC3339)}
	}
	if a.key != nil {
		if keyErr != nil && !errors.Is(keyErr, errNoAnswer) {
			checks["signingKey"] = api.Check{Status: checkFailed, Message: keyErr.Error()}
			h.IVS.Status, h.IVS.Error = "error", keyErr.Error()
		} else {
			checks["signingKey"] = api.Check{Status: checkOK, Message: "IVS holds the token signing key " + a.key.issuer.KeyArn()}
		}
	}

	c := a.fleet.ControllerHealth()
	switch {
	case c.Stale:
		checks["controller"] = api.Check{Status: checkDegraded, Message: "the controller's loop last passed at " + c.LastPass.UTC().Format(time.RFC3339) + ": it is stuck"}
	case c.ReconcileErr != "":
		checks["controller"] = api.Check{Status: checkDegraded, Message: "the last reconcile with IVS failed: " + c.ReconcileErr}
	default:
		msg := "the controller's loop runs"
		if !c.LastReconcile.IsZero() {
			msg += "; last reconcile at " + c.LastReconcile.UTC().Format(time.RFC3339)
		}
		checks["controller"] = api.Check{Status: checkOK, Message: msg}
	}
	if lost := a.fleet.LostOrigins(ctx); len(lost) > 0 {
		checks["origins"] = api.Check{Status: checkDegraded, Message: strings.Join(lost, "; ")}
	} else {
		checks["origins"] = api.Check{Status: checkOK, Message: "every broadcast's origin exists in IVS"}
	}
	if a.histW != nil {
		// Degraded, not failed: seating goes on while the history waits,
		// and what it missed is written when the database is back (up to
		// HISTORY_BUFFER records).
		waiting, dropped := a.histW.Len(), a.histW.Dropped()
		if err := a.histW.Failing(); err != nil {
			checks["history"] = api.Check{Status: checkDegraded, Message: fmt.Sprintf(
				"the viewing history cannot be written (%v): %d records waiting, %d dropped since start", err, waiting, dropped)}
		} else {
			checks["history"] = api.Check{Status: checkOK, Message: fmt.Sprintf(
				"the viewing history is written: %d records waiting, %d dropped since start", waiting, dropped)}
		}
	}
	if cs := checks["controller"]; cs.Status != checkOK {
		h.Controller.Status, h.Controller.Error = cs.Status, cs.Message
	}
	if oc := checks["origins"]; oc.Status != checkOK {
		h.Controller.Status, h.Controller.Error = oc.Status, oc.Message
	}

	h.Status = api.HealthHealthy
	for _, ch := range checks {
		switch {
		case ch.Status == checkFailed:
			h.Status = api.HealthUnhealthy
		case ch.Status == checkDegraded && h.Status == api.HealthHealthy:
			h.Status = api.HealthDegraded
		}
	}
	return h
}

// memoryUse is the process's memory in MB: the Go heap in use and held, and
// the resident set.
func memoryUse() api.HealthMemory {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	const mb = 1 << 20
	m := api.HealthMemory{
		HeapUsed:  roundMB(float64(ms.HeapAlloc) / mb),
		HeapTotal: roundMB(float64(ms.HeapSys) / mb),
		RSS:       roundMB(float64(ms.Sys) / mb),
	}
	if rss, err := residentBytes(); err == nil {
		m.RSS = roundMB(float64(rss) / mb)
	}
	return m
}

func roundMB(v float64) float64 { return float64(int(v*100+0.5)) / 100 }

// residentBytes reads the resident set size from /proc (Linux).
func residentBytes() (int64, error) {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0, fmt.Errorf("/proc/self/statm: %q", b)
	}
	pages, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return 0, err
	}
	return pages * int64(os.Getpagesize()), nil
}
