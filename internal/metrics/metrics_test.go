package metrics

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/stagefleet/stagefleet/internal/store"
	"github.com/stagefleet/stagefleet/internal/store/memory"
)

// value is the value of the series name{labels} in m's registry, and
// whether it exists.
func value(t *testing.T, m *Metrics, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	families, err := m.reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, s := range f.GetMetric() {
			if !hasLabels(s, labels) {
				continue
			}
			switch {
			case s.Counter != nil:
				return s.Counter.GetValue(), true
			case s.Gauge != nil:
				return s.Gauge.GetValue(), true
			case s.Histogram != nil:
				return float64(s.Histogram.GetSampleCount()), true
			}
		}
	}
	return 0, false
}

func hasLabels(s *dto.Metric, want map[string]string) bool {
	got := map[string]string{}
	for _, l := range s.GetLabel() {
		got[l.GetName()] = l.GetValue()
	}
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return len(got) == len(want)
}

func wantValue(t *testing.T, m *Metrics, name string, labels map[string]string, want float64) {
	t.Helper()
	got, ok := value(t, m, name, labels)
	if !ok || got != want {
		t.Errorf("%s%v = %v (present %v), want %v", name, labels, got, ok, want)
	}
}

func TestBroadcastLabelsFold(t *testing.T) {
	l := newBroadcastLabels(3)
	for i, want := range []string{"a", "b", Other, "c", Other, Other} {
		id := []string{"a", "b", "other", "c", "d", "e"}[i]
		if got := l.of(id); got != want {
			t.Errorf("of(%q) = %q, want %q", id, got, want)
		}
	}
	// Those seen first keep their own value.
	if got := l.of("a"); got != "a" {
		t.Errorf("of(a) again = %q, want a", got)
	}
}

// TestMadeUpBroadcastsTakeNoLabel: refused requests for ids that may not
// exist are counted under Other and leave the label slots to broadcasts
// shown to exist.
func TestMadeUpBroadcastsTakeNoLabel(t *testing.T) {
	m := New(Options{MaxBroadcasts: 1})
	for i := range 5 {
		m.ViewerToken(fmt.Sprint("nope-", i), "not_live", time.Millisecond)
	}
	m.ViewerToken("show", "ok", time.Millisecond)
	m.ViewerToken("show", "not_live", time.Millisecond)
	wantValue(t, m, "stagefleet_viewer_tokens_total", map[string]string{"broadcast": Other, "outcome": "not_live"}, 5)
	wantValue(t, m, "stagefleet_viewer_tokens_total", map[string]string{"broadcast": "show", "outcome": "ok"}, 1)
	wantValue(t, m, "stagefleet_viewer_tokens_total", map[string]string{"broadcast": "show", "outcome": "not_live"}, 1)
}

func TestFleetReports(t *testing.T) {
	m := New(Options{MaxBroadcasts: 1})
	m.ViewerToken("show-1", "ok", 10*time.Millisecond)
	m.ViewerToken("show-1", "full", time.Second)
	m.ViewerToken("show-2", "ok", time.Millisecond)
	m.ViewerToken("show-3", "ok", time.Millisecond)
	m.Seated(0)
	m.Seated(2 * time.Second)
	m.Reconciled(time.Millisecond, nil)
	m.Reconciled(time.Millisecond, errors.New("throttled"))
	m.Repaired("host_repaired")
	m.LeaseAcquired("control")
	m.LeaseLost("control")
	m.EventReceived(-time.Second) // dated ahead: counted as 0
	m.EventHandled("applied")

	wantValue(t, m, "stagefleet_viewer_tokens_total", map[string]string{"broadcast": "show-1", "outcome": "ok"}, 1)
	wantValue(t, m, "stagefleet_viewer_tokens_total", map[string]string{"broadcast": "show-1", "outcome": "full"}, 1)
	wantValue(t, m, "stagefleet_viewer_tokens_total", map[string]string{"broadcast": Other, "outcome": "ok"}, 2)
	wantValue(t, m, "stagefleet_viewer_token_duration_seconds", nil, 4)
	wantValue(t, m, "stagefleet_time_to_seat_seconds", nil, 2)
	wantValue(t, m, "stagefleet_reconciles_total", map[string]string{"outcome": "ok"}, 1)
	wantValue(t, m, "stagefleet_reconciles_total", map[string]string{"outcome": "error"}, 1)
	wantValue(t, m, "stagefleet_reconcile_duration_seconds", nil, 2)
	wantValue(t, m, "stagefleet_repairs_total", map[string]string{"kind": "host_repaired"}, 1)
	wantValue(t, m, "stagefleet_lease_acquisitions_total", map[string]string{"lease": "control"}, 1)
	wantValue(t, m, "stagefleet_lease_losses_total", map[string]string{"lease": "control"}, 1)
	wantValue(t, m, "stagefleet_events_received_total", nil, 1)
	wantValue(t, m, "stagefleet_events_total", map[string]string{"result": "applied"}, 1)

	families, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == "stagefleet_event_lag_seconds" {
			if h := f.GetMetric()[0].GetHistogram(); h.GetSampleSum() != 0 {
				t.Errorf("event lag sum = %v, want 0 for an event dated ahead", h.GetSampleSum())
			}
		}
	}
}

func TestIVSReports(t *testing.T) {
	m := New(Options{})
	m.IVSCall("CreateStage", "ok")
	m.IVSCall("CreateStage", "throttled")
	m.IVSRetry("CreateStage")
	m.IVSThrottled("CreateStage", "service")
	m.IVSThrottled("GetStage", "pacer")
	wantValue(t, m, "stagefleet_ivs_calls_total", map[string]string{"operation": "CreateStage", "outcome": "ok"}, 1)
	wantValue(t, m, "stagefleet_ivs_calls_total", map[string]string{"operation": "CreateStage", "outcome": "throttled"}, 1)
	wantValue(t, m, "stagefleet_ivs_retries_total", map[string]string{"operation": "CreateStage"}, 1)
	wantValue(t, m, "stagefleet_ivs_throttles_total", map[string]string{"operation": "CreateStage", "source": "service"}, 1)
	wantValue(t, m, "stagefleet_ivs_throttles_total", map[string]string{"operation": "GetStage", "source": "pacer"}, 1)
}

// failing is a store whose GetStage fails as a broken store does.
type failing struct{ store.Store }

func (failing) GetStage(context.Context, string) (store.Stage, error) {
	return store.Stage{}, errors.New("connection refused")
}

func TestStoreCountsEveryMethod(t *testing.T) {
	m := New(Options{})
	st := m.WrapStore(memory.New())
	ctx := context.Background()
	if _, err := st.GetBroadcast(ctx, "none"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetBroadcast: %v, want ErrNotFound", err)
	}
	if _, err := st.ListBroadcasts(ctx); err != nil {
		t.Fatal(err)
	}
	wantValue(t, m, "stagefleet_store_calls_total", map[string]string{"method": "GetBroadcast"}, 1)
	wantValue(t, m, "stagefleet_store_calls_total", map[string]string{"method": "ListBroadcasts"}, 1)
	// Not found answers a question: no failure.
	wantValue(t, m, "stagefleet_store_errors_total", map[string]string{"method": "GetBroadcast"}, 0)

	broken := m.WrapStore(failing{memory.New()})
	if _, err := broken.GetStage(ctx, "x"); err == nil {
		t.Fatal("GetStage of a broken store succeeded")
	}
	wantValue(t, m, "stagefleet_store_errors_total", map[string]string{"method": "GetStage"}, 1)

	// Every method of the port is counted under its own name: each is
	// called once, with zero arguments, and its series must move by one.
	fresh := m.WrapStore(memory.New())
	typ := reflect.TypeFor[store.Store]()
	ctxType := reflect.TypeFor[context.Context]()
	for i := range typ.NumMethod() {
		method := typ.Method(i)
		labels := map[string]string{"method": method.Name}
		before, ok := value(t, m, "stagefleet_store_calls_total", labels)
		if !ok {
			t.Errorf("no stagefleet_store_calls_total series for %s", method.Name)
			continue
		}
		args := make([]reflect.Value, method.Type.NumIn())
		for j := range args {
			if in := method.Type.In(j); in == ctxType {
				args[j] = reflect.ValueOf(ctx)
			} else {
				args[j] = reflect.Zero(in)
			}
		}
		reflect.ValueOf(fresh).MethodByName(method.Name).Call(args)
		if after, _ := value(t, m, "stagefleet_store_calls_total", labels); after != before+1 {
			t.Errorf("a call of %s moved its series from %v to %v, want one more", method.Name, before, after)
		}
	}
}

func TestStateGauges(t *testing.T) {
	ctx := context.Background()
	st := memory.New()
	now := time.Now()
	put := func(s store.Stage) {
		t.Helper()
		s.CreatedAt = now
		if err := st.PutStage(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	for i, b := range []string{"show-1", "show-2", "show-3"} {
		origin := fmt.Sprintf("arn:aws:ivs:us-east-1:123456789012:stage/Origin%d", i)
		if _, err := st.CreateBroadcast(ctx, store.Broadcast{ID: b, OriginArn: origin, CreatedAt: now}); err != nil {
			t.Fatal(err)
		}
		put(store.Stage{Arn: origin, BroadcastID: b, Role: store.RoleOrigin, Capacity: 10, Seatable: true})
		put(store.Stage{Arn: origin + "r1", BroadcastID: b, Role: store.RoleReplica, Capacity: 10})
		put(store.Stage{Arn: origin + "r2", BroadcastID: b, Role: store.RoleReplica, Capacity: 10, Draining: true})
		if err := st.PutReplication(ctx, store.Replication{BroadcastID: b, ParticipantID: "h", SourceArn: origin, DestArn: origin + "r1", State: store.ReplStarting}); err != nil {
			t.Fatal(err)
		}
		for u := range 3 {
			if _, err := st.ReserveSeat(ctx, store.SeatRequest{BroadcastID: b, UserID: fmt.Sprint("u", u), ParticipantID: fmt.Sprint("p", u), Now: now, TTL: time.Minute}); err != nil {
				t.Fatal(err)
			}
		}
	}
	m := New(Options{MaxBroadcasts: 2})
	m.ObserveState(st, func() map[string]int { return map[string]int{"show-1": 4, "show-3": 2} })
	wantValue(t, m, "stagefleet_broadcasts_ending", nil, 0)
	wantValue(t, m, "stagefleet_oldest_end_seconds", nil, 0)

	wantValue(t, m, "stagefleet_seats", map[string]string{"broadcast": "show-1"}, 3)
	wantValue(t, m, "stagefleet_seat_capacity", map[string]string{"broadcast": "show-1"}, 10)
	wantValue(t, m, "stagefleet_waiting_viewers", map[string]string{"broadcast": "show-1"}, 4)
	// show-3 is past the first two: it counts under other.
	wantValue(t, m, "stagefleet_seats", map[string]string{"broadcast": Other}, 3)
	wantValue(t, m, "stagefleet_waiting_viewers", map[string]string{"broadcast": Other}, 2)
	wantValue(t, m, "stagefleet_stages", map[string]string{"role": "origin", "state": StageSeatable}, 3)
	wantValue(t, m, "stagefleet_stages", map[string]string{"role": "replica", "state": StageProvisioning}, 3)
	wantValue(t, m, "stagefleet_stages", map[string]string{"role": "replica", "state": StageDraining}, 3)
	wantValue(t, m, "stagefleet_stages", map[string]string{"role": "manual", "state": StageIdle}, 0)
	wantValue(t, m, "stagefleet_replications", map[string]string{"state": store.ReplStarting}, 3)
	wantValue(t, m, "stagefleet_replications", map[string]string{"state": store.ReplActive}, 0)

	// Two ends in progress: the oldest began a minute ago or more.
	for i, b := range []string{"show-1", "show-2"} {
		rec, err := st.GetBroadcast(ctx, b)
		if err != nil {
			t.Fatal(err)
		}
		rec.EndingSince = now.Add(-time.Duration(i+1) * 30 * time.Second)
		if err := st.PutBroadcast(ctx, rec); err != nil {
			t.Fatal(err)
		}
	}
	wantValue(t, m, "stagefleet_broadcasts_ending", nil, 2)
	if age, _ := value(t, m, "stagefleet_oldest_end_seconds", nil); age < 60 || age > 120 {
		t.Errorf("stagefleet_oldest_end_seconds %v, want the minute since the oldest end began", age)
	}
}

func TestStateReadFailureKeepsTheRest(t *testing.T) {
	m := New(Options{})
	m.ObserveState(brokenState{}, func() map[string]int { return nil })
	m.IVSRetry("GetStage")
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /metrics = %d, want 200 with what could be read", rec.Code)
	}
	if body := rec.Body.String(); !strings.Contains(body, `stagefleet_ivs_retries_total{operation="GetStage"} 1`) || strings.Contains(body, "stagefleet_stages{") {
		t.Errorf("exposition after a failed store read:\n%s", body)
	}
}

type brokenState struct{ StateSource }

func (brokenState) ListBroadcasts(context.Context) ([]store.Broadcast, error) {
	return nil, errors.New("connection refused")
}

func TestHandlerServesRuntimeAndProcess(t *testing.T) {
	m := New(Options{})
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("Content-Type = %q, want text/plain", ct)
	}
	body := rec.Body.String()
	for _, name := range []string{"go_goroutines", "go_memstats_alloc_bytes", "process_cpu_seconds_total"} {
		if !strings.Contains(body, "# TYPE "+name+" ") {
			t.Errorf("exposition has no %s", name)
		}
	}
}

func TestObserveHistory(t *testing.T) {
	m := New(Options{})
	pending, dropped := 3, int64(0)
	m.ObserveHistory(func() int { return pending }, func() int64 { return dropped })
	wantValue(t, m, "stagefleet_history_pending", nil, 3)
	pending, dropped = 0, 7
	wantValue(t, m, "stagefleet_history_pending", nil, 0)
	wantValue(t, m, "stagefleet_history_dropped_total", nil, 7)
}
