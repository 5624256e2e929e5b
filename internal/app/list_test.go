package app_test

import (
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/stagefleet/stagefleet/internal/redistest"
)

// TestViewerListPages: ?limit= and nextCursor walk every viewer of a
// stage exactly as seated, on both stores, while totalViewers counts them
// all on every page.
func TestViewerListPages(t *testing.T) {
	t.Parallel()
	run := func(t *testing.T, env map[string]string) {
		a := startApp(t, env)
		a.goLive(t, "default", "host-1")
		want := map[string][]string{}
		for i := range 23 {
			v := a.token(t, "viewer", map[string]any{"userId": fmt.Sprintf("viewer-%02d", i)})
			want[v.StageArn] = append(want[v.StageArn], v.UserID)
		}
		seated := time.Now()
		for arn, users := range want {
			var got []string
			cursor, pages := "", 0
			for {
				q := url.Values{"limit": {"4"}}
				if cursor != "" {
					q.Set("cursor", cursor)
				}
				page := dataOf[struct {
					Viewers      []listedSeat `json:"viewers"`
					Count        int          `json:"count"`
					TotalViewers int          `json:"totalViewers"`
					NextCursor   string       `json:"nextCursor"`
				}](t, a.expect(t, "GET", "/api/viewer/list/"+arn+"?"+q.Encode(), nil, http.StatusOK))
				if page.Count != len(page.Viewers) || page.Count > 4 || page.TotalViewers != len(users) {
					t.Errorf("page %d of %s: count %d, %d viewers, total %d; want at most 4, total %d",
						pages, arn, page.Count, len(page.Viewers), page.TotalViewers, len(users))
				}
				for _, v := range page.Viewers {
					if v.StageArn != arn {
						t.Errorf("viewer %s of stage %s listed on %s", v.UserID, v.StageArn, arn)
					}
					if !slices.Contains(got, v.UserID) {
						got = append(got, v.UserID)
					}
				}
				if pages++; page.NextCursor == "" || pages > 100 {
					break
				}
				cursor = page.NextCursor
			}
			slices.Sort(got)
			slices.Sort(users)
			if !slices.Equal(got, users) {
				t.Errorf("stage %s: pages listed %v, want %v", arn, got, users)
			}
			if len(users) > 4 && pages < 2 {
				t.Errorf("stage %s: %d viewers in %d page(s) of 4", arn, len(users), pages)
			}
			for _, bad := range []string{"0", "-1", "10001", "four"} {
				wantError(t, a.call(t, "GET", "/api/viewer/list/"+arn+"?limit="+bad, nil), http.StatusBadRequest, "VALIDATION_ERROR")
			}
		}

		// The broadcast's watch time pages its viewers the same way (a seat
		// may come twice: a scan returns each at least once), and every
		// page carries the whole broadcast's totals.
		var got []string
		cursor, pages := "", 0
		for {
			q := url.Values{"limit": {"5"}}
			if cursor != "" {
				q.Set("cursor", cursor)
			}
			page := dataOf[struct {
				Viewers        []listedSeat `json:"viewers"`
				Count          int          `json:"count"`
				TotalViewers   int          `json:"totalViewers"`
				TotalSeconds   int          `json:"totalSeconds"`
				AverageSeconds float64      `json:"averageSeconds"`
				NextCursor     string       `json:"nextCursor"`
			}](t, a.expect(t, "GET", "/api/viewer/duration?"+q.Encode(), nil, http.StatusOK))
			if page.Count != len(page.Viewers) || page.Count > 5 || page.TotalViewers != 23 || page.TotalSeconds < 0 || page.AverageSeconds != float64(page.TotalSeconds)/23 {
				t.Errorf("duration page %d: count %d of %d viewers, totals %d viewers %d s (average %v); want at most 5, all 23 in the totals",
					pages, page.Count, len(page.Viewers), page.TotalViewers, page.TotalSeconds, page.AverageSeconds)
			}
			for _, v := range page.Viewers {
				if !slices.Contains(got, v.UserID) {
					got = append(got, v.UserID)
				}
			}
			if pages++; page.NextCursor == "" || pages > 100 {
				break
			}
			cursor = page.NextCursor
		}
		if len(got) != 23 || pages < 5 {
			t.Errorf("duration pages listed %d distinct viewers in %d pages of 5; want all 23 in 5 or more", len(got), pages)
		}
		// The totals are the seats' own watch times summed: read on one
		// page of everyone once each has watched two seconds or more (a
		// second may turn between the totals and the page: at most one
		// more per viewer).
		time.Sleep(time.Until(seated.Add(2 * time.Second)))
		all := dataOf[struct {
			Viewers []struct {
				WatchSeconds int `json:"watchSeconds"`
			} `json:"viewers"`
			TotalSeconds int `json:"totalSeconds"`
		}](t, a.expect(t, "GET", "/api/viewer/duration?limit=100", nil, http.StatusOK))
		sum := 0
		for _, v := range all.Viewers {
			sum += v.WatchSeconds
		}
		if len(all.Viewers) != 23 || sum < 2*23 || all.TotalSeconds < sum || all.TotalSeconds > sum+23 {
			t.Errorf("totalSeconds %d for %d viewers whose watch times sum to %d; want the sum (to a second each), 46 or more",
				all.TotalSeconds, len(all.Viewers), sum)
		}
		wantError(t, a.call(t, "GET", "/api/viewer/duration?limit=0", nil), http.StatusBadRequest, "VALIDATION_ERROR")
	}
	env := map[string]string{"HEARTBEAT_TIMEOUT": "1m"}
	t.Run("memory", func(t *testing.T) { run(t, env) })
	t.Run("redis", func(t *testing.T) {
		srv := redistest.Start(t)
		withRedis := maps.Clone(env)
		withRedis["REDIS_URL"] = srv.URL()
		run(t, withRedis)
	})
}
