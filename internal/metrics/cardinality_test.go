package metrics_test

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stagefleet/stagefleet/internal/fleet"
	"github.com/stagefleet/stagefleet/internal/metrics"
	"github.com/stagefleet/stagefleet/internal/store"
	"github.com/stagefleet/stagefleet/internal/store/memory"
	"github.com/stagefleet/stagefleet/internal/token"
)

// noIVS is an IVS whose every method panics: seating calls none.
type noIVS struct{ fleet.IVS }

type nopIssuer struct{}

func (nopIssuer) Issue(_ context.Context, r token.Request) (token.Token, error) {
	return token.Token{Token: "t", ParticipantID: r.ParticipantID}, nil
}

// TestCardinalityBounded: 10,000 viewers over 50 broadcasts, and events
// naming participants and users, make a bounded exposition: at most
// METRICS_MAX_BROADCASTS + 1 broadcast label values, and no user id,
// participant id or stage ARN anywhere.
func TestCardinalityBounded(t *testing.T) {
	const (
		broadcasts = 50
		viewers    = 10_000
		maxLabels  = metrics.DefaultMaxBroadcasts
	)
	ctx := context.Background()
	m := metrics.New(metrics.Options{MaxBroadcasts: maxLabels})
	st := m.WrapStore(memory.New())
	now := time.Now()
	arn := func(b int) string { return fmt.Sprintf("arn:aws:ivs:us-east-1:123456789012:stage/Origin%05d", b) }
	for b := range broadcasts {
		id := fmt.Sprint("show-", b)
		if err := st.PutStage(ctx, store.Stage{Arn: arn(b), BroadcastID: id, Role: store.RoleOrigin, Capacity: viewers, Seatable: true, CreatedAt: now}); err != nil {
			t.Fatal(err)
		}
		if _, err := st.CreateBroadcast(ctx, store.Broadcast{ID: id, OriginArn: arn(b), CreatedAt: now}); err != nil {
			t.Fatal(err)
		}
	}
	svc := fleet.New(fleet.Config{StageCapacity: viewers, HeartbeatTimeout: time.Minute, ViewerTTL: time.Hour, EventDedupTTL: time.Hour, Metrics: m},
		st, noIVS{}, nopIssuer{}, slog.New(slog.DiscardHandler))
	m.ObserveState(st, svc.Waiting)

	var wg sync.WaitGroup
	errs := make(chan error, viewers)
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < viewers; i += 8 {
				if _, err := svc.ViewerToken(ctx, fmt.Sprint("show-", i%broadcasts), fmt.Sprint("user-", i), ""); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("viewer token: %v", err)
	}
	for b := range broadcasts {
		ev := fleet.Event{ID: fmt.Sprint("ev-", b), StageArn: arn(b), Name: fleet.EventPublished, Time: now, ParticipantID: fmt.Sprint("participant-", b), UserID: fmt.Sprint("host-user-", b)}
		if _, err := svc.HandleEvent(ctx, ev); err != nil {
			t.Fatalf("event: %v", err)
		}
	}

	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	body := rec.Body.String()
	labels := map[string]bool{}
	series := 0
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		series++
		if _, rest, ok := strings.Cut(line, `broadcast="`); ok {
			v, _, _ := strings.Cut(rest, `"`)
			labels[v] = true
		}
		for _, s := range []string{"user-", "participant-", "arn:aws:ivs"} {
			if strings.Contains(line, s) {
				t.Errorf("a series names %q: %s", s, line)
			}
		}
	}
	if len(labels) != maxLabels+1 || !labels[metrics.Other] {
		t.Errorf("%d broadcast label values %v, want the first %d and %q", len(labels), labels, maxLabels, metrics.Other)
	}
	// What the join path adds per broadcast label (tokens by outcome, seats,
	// capacity, waiting) is a handful of series: the whole exposition stays
	// small whatever the audience.
	if series > 1000 {
		t.Errorf("%d series for %d viewers in %d broadcasts, want a bounded few hundred", series, viewers, broadcasts)
	}
	// Every viewer is counted, folded or not.
	var ok float64
	for line := range strings.SplitSeq(body, "\n") {
		if strings.HasPrefix(line, "stagefleet_viewer_tokens_total{") && strings.Contains(line, `outcome="ok"`) {
			var v float64
			fmt.Sscan(line[strings.LastIndex(line, " ")+1:], &v)
			ok += v
		}
	}
	if ok != viewers {
		t.Errorf("stagefleet_viewer_tokens_total{outcome=ok} sums to %v, want %d", ok, viewers)
	}
	t.Logf("%d series, %d broadcast label values", series, len(labels))
}
