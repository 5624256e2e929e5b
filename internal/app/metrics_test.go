package app_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// exposition is one scrape of /metrics, parsed.
type exposition map[string]*dto.MetricFamily

func parseExposition(t *testing.T, body []byte) exposition {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics is not Prometheus's text format: %v\n%s", err, body)
	}
	return families
}

// value is the value of name{labels} (a histogram's count), summed over
// the series that have those labels among theirs.
func (e exposition) value(name string, labels map[string]string) float64 {
	var sum float64
	f := e[name]
	if f == nil {
		return 0
	}
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		match := true
		for k, v := range labels {
			match = match && have[k] == v
		}
		if !match {
			continue
		}
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Histogram != nil:
			sum += float64(m.Histogram.GetSampleCount())
		}
	}
	return sum
}

// scrape reads /metrics through the API with its key, checked against the
// OpenAPI document like every answer.
func (a *testApp) scrape(t *testing.T) exposition {
	t.Helper()
	r, err := a.send(t.Context(), "GET", "/metrics", nil, nil)
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	if r.Status != http.StatusOK || !strings.HasPrefix(r.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("GET /metrics: %d %s: %.300s", r.Status, r.Header.Get("Content-Type"), r.Body)
	}
	return parseExposition(t, r.Body)
}

// TestMetricsScenario plays a broadcast (a host live, viewers seated until
// the one stage MAX_STAGES allows is full, IVS throttling the reconciler)
// and reads in /metrics what happened.
func TestMetricsScenario(t *testing.T) {
	const key = "metrics-test-key"
	a := startApp(t, map[string]string{
		"API_SECRET_KEY": key, "STAGE_CAPACITY": "3", "SCALE_UP_THRESHOLD": "1", "MAX_STAGES": "1",
		"SEAT_WAIT": "0s", "RECONCILE_INTERVAL": "200ms",
	})
	a.headers.Set("X-Api-Key", key)

	host := a.goLive(t, "default", "host-1")
	const seated = 3
	for i := range seated {
		a.token(t, "viewer", map[string]any{"userId": fmt.Sprint("viewer-", i)})
	}
	r := a.call(t, "POST", "/api/token/viewer", map[string]any{"userId": "viewer-refused"})
	wantError(t, r, http.StatusServiceUnavailable, "STAGE_LIMIT_REACHED")

	// IVS throttles the reconciler's ListStages until a scrape shows it.
	if status, body := a.emuPost(t, "/_emulator/faults", map[string]any{"operation": "ListStages", "errorRate": 1, "errorType": "ThrottlingException"}); status != http.StatusOK {
		t.Fatalf("injecting a fault: %d %s", status, body)
	}
	var m exposition
	eventually(t, 10*time.Second, func() (bool, string) {
		m = a.scrape(t)
		n := m.value("stagefleet_ivs_throttles_total", map[string]string{"operation": "ListStages", "source": "service"})
		return n > 0, "no ListStages throttle counted"
	})
	if status, body := a.emuPost(t, "/_emulator/faults", map[string]any{"operation": "ListStages"}); status != http.StatusOK {
		t.Fatalf("removing the fault: %d %s", status, body)
	}

	checks := []struct {
		name   string
		labels map[string]string
		want   func(float64) bool
		what   string
	}{
		{"stagefleet_viewer_tokens_total", map[string]string{"broadcast": "default", "outcome": "ok"}, eq(seated), "= viewers seated"},
		{"stagefleet_viewer_tokens_total", map[string]string{"broadcast": "default", "outcome": "limit"}, eq(1), "= 1 refused at MAX_STAGES"},
		{"stagefleet_viewer_token_duration_seconds", nil, eq(seated + 1), "= every request"},
		{"stagefleet_time_to_seat_seconds", nil, eq(seated), "= viewers seated"},
		{"stagefleet_seats", map[string]string{"broadcast": "default"}, eq(seated), "= viewers seated"},
		{"stagefleet_seat_capacity", map[string]string{"broadcast": "default"}, eq(3), "= STAGE_CAPACITY of the origin"},
		{"stagefleet_waiting_viewers", map[string]string{"broadcast": "default"}, eq(0), "= 0 after the refusal"},
		{"stagefleet_stages", map[string]string{"role": "origin", "state": "seatable"}, eq(1), "= the origin"},
		{"stagefleet_stages", map[string]string{"role": "replica"}, eq(0), "= none at MAX_STAGES 1"},
		{"stagefleet_ivs_calls_total", map[string]string{"operation": "CreateStage", "outcome": "ok"}, eq(1), "= the origin"},
		{"stagefleet_ivs_calls_total", map[string]string{"operation": "ListStages", "outcome": "throttled"}, gt(0), "> 0"},
		{"stagefleet_ivs_retries_total", map[string]string{"operation": "ListStages"}, gt(0), "> 0"},
		{"stagefleet_events_received_total", nil, gt(0), "> 0"},
		{"stagefleet_events_total", map[string]string{"result": "applied"}, gt(0), "> 0 (the host's Published)"},
		{"stagefleet_event_lag_seconds", nil, gt(0), "> 0"},
		{"stagefleet_reconciles_total", map[string]string{"outcome": "ok"}, gt(0), "> 0"},
		{"stagefleet_reconcile_duration_seconds", nil, gt(0), "> 0"},
		{"stagefleet_lease_acquisitions_total", map[string]string{"lease": "control"}, gt(0), "> 0"},
		{"stagefleet_lease_acquisitions_total", map[string]string{"lease": "reconcile"}, eq(1), "= 1 (kept since)"},
		{"stagefleet_store_calls_total", map[string]string{"method": "ReserveSeat"}, eq(seated + 1), "= one per viewer token"},
		{"stagefleet_store_errors_total", nil, eq(0), "= 0"},
		{"go_goroutines", nil, gt(0), "> 0"},
		{"process_resident_memory_bytes", nil, gt(0), "> 0"},
	}
	for _, c := range checks {
		if got := m.value(c.name, c.labels); !c.want(got) {
			t.Errorf("%s%v = %v, want %s", c.name, c.labels, got, c.what)
		}
	}
	// No stage ARN nor user id is a label value.
	r, err := a.send(t.Context(), "GET", "/metrics", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{host.StageArn, "viewer-0", "host-1"} {
		if bytes.Contains(r.Body, []byte(s)) {
			t.Errorf("/metrics names %s", s)
		}
	}
	// Without the key: 401, like every route behind it.
	noKey, err := http.Get(a.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	noKey.Body.Close()
	if noKey.StatusCode != http.StatusUnauthorized {
		t.Errorf("GET /metrics without x-api-key: %d, want 401", noKey.StatusCode)
	}
}

func eq(want float64) func(float64) bool { return func(v float64) bool { return v == want } }
func gt(than float64) func(float64) bool { return func(v float64) bool { return v > than } }

// With METRICS_ADDR, /metrics is served there without a key, and the API's
// route says so with a 404.
func TestMetricsAddr(t *testing.T) {
	const key = "metrics-test-key"
	a := startApp(t, map[string]string{"API_SECRET_KEY": key, "METRICS_ADDR": ":0"})
	a.headers.Set("X-Api-Key", key)
	addr := a.app.MetricsAddr()
	if !strings.HasPrefix(addr, "127.0.0.1:") {
		t.Fatalf("METRICS_ADDR :0 listens on %q, want loopback", addr)
	}
	r := a.call(t, "GET", "/metrics", nil)
	wantError(t, r, http.StatusNotFound, "NOT_FOUND")

	get := func(path string) (int, string, []byte) {
		t.Helper()
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, resp.Header.Get("Content-Type"), body
	}
	status, ct, body := get("/metrics")
	if status != http.StatusOK || !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("GET %s/metrics without a key: %d %s", addr, status, ct)
	}
	if m := parseExposition(t, body); m["go_goroutines"] == nil || m["stagefleet_store_calls_total"] == nil {
		t.Errorf("the metrics server's exposition lacks go_goroutines or stagefleet_store_calls_total")
	}
	// Nothing else is served there.
	if status, _, _ := get("/api/health"); status != http.StatusNotFound {
		t.Errorf("GET /api/health on the metrics address: %d, want 404", status)
	}
}
