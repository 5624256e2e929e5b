package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stagefleet/stagefleet/internal/fleet"
)

func TestClientIP(t *testing.T) {
	proxies := trustedProxies{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("2001:db8:ffff::/48"),
	}
	tests := []struct {
		name    string
		trusted trustedProxies
		remote  string
		xff     []string // X-Forwarded-For header lines
		want    string
	}{
		{"no proxies trusted: the connection", nil, "198.51.100.7:4000", []string{"203.0.113.5"}, "198.51.100.7"},
		{"spoofed header from an untrusted client", proxies, "198.51.100.7:4000", []string{"10.0.0.9, 203.0.113.5"}, "198.51.100.7"},
		{"through a trusted proxy", proxies, "10.0.0.1:4000", []string{"203.0.113.5"}, "203.0.113.5"},
		{"rightmost untrusted entry wins over what the client sent", proxies, "10.0.0.1:4000", []string{"192.0.2.66, 203.0.113.5"}, "203.0.113.5"},
		{"through two trusted proxies", proxies, "10.0.0.1:4000", []string{"192.0.2.66, 203.0.113.5, 10.0.0.2"}, "203.0.113.5"},
		{"several header lines read as one list", proxies, "10.0.0.1:4000", []string{"192.0.2.66", "203.0.113.5, 10.0.0.2"}, "203.0.113.5"},
		{"malformed entries skipped", proxies, "10.0.0.1:4000", []string{"203.0.113.5, unknown, 203.0.113.9:80, ,10.0.0.2"}, "203.0.113.5"},
		{"no header: the proxy", proxies, "10.0.0.1:4000", nil, "10.0.0.1"},
		{"only trusted or malformed entries: the proxy", proxies, "10.0.0.1:4000", []string{"10.0.0.3, nope"}, "10.0.0.1"},
		{"IPv6 proxy and client", proxies, "[2001:db8:ffff::1]:4000", []string{"2001:db8:1::5"}, "2001:db8:1::5"},
		{"IPv4-mapped connection address of a trusted proxy", proxies, "[::ffff:10.0.0.1]:4000", []string{"::ffff:203.0.113.5"}, "203.0.113.5"},
		{"connection address that is not host:port", proxies, "@", []string{"203.0.113.5"}, "@"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/", nil)
			r.RemoteAddr = tt.remote
			for _, v := range tt.xff {
				r.Header.Add("X-Forwarded-For", v)
			}
			if got := tt.trusted.clientIP(r); got != tt.want {
				t.Errorf("clientIP(RemoteAddr %s, X-Forwarded-For %q) = %s, want %s", tt.remote, tt.xff, got, tt.want)
			}
		})
	}
}

// TestRateLimitByClient: the rate limit counts the client clientIP tells, so
// a client cannot escape it with X-Forwarded-For, and viewers behind one
// load balancer do not share one bucket.
func TestRateLimitByClient(t *testing.T) {
	type call struct {
		remote, xff string
		status      int
	}
	tests := []struct {
		name  string
		calls []call
	}{
		{"spoofed header from an untrusted client", []call{
			{"198.51.100.7:4000", "203.0.113.1", http.StatusNotFound},
			{"198.51.100.7:4001", "203.0.113.2", http.StatusTooManyRequests},
		}},
		{"clients behind a trusted proxy", []call{
			{"10.0.0.1:4000", "203.0.113.1", http.StatusNotFound},
			{"10.0.0.1:4001", "203.0.113.2", http.StatusNotFound},
			{"10.0.0.2:4000", "203.0.113.1", http.StatusTooManyRequests},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// No route is found, so no fleet is needed; the fallback is
			// rate limited like every route.
			h := New(Options{
				SkipAuth:        true,
				RateLimitMax:    1,
				RateLimitWindow: time.Hour,
				TrustedProxies:  []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
			}, nil)
			for i, c := range tt.calls {
				r := httptest.NewRequest("GET", "/nope", nil)
				r.RemoteAddr = c.remote
				r.Header.Set("X-Forwarded-For", c.xff)
				w := httptest.NewRecorder()
				h.ServeHTTP(w, r)
				if w.Code != c.status {
					t.Fatalf("call %d from %s for %s: %d, want %d: %s", i, c.remote, c.xff, w.Code, c.status, w.Body)
				}
			}
		})
	}
}

// logLine is one access-log line as the JSON handler writes it.
type logLine struct {
	Level      string   `json:"level"`
	Msg        string   `json:"msg"`
	Status     int      `json:"status"`
	DurationMS *float64 `json:"duration_ms"`
	Client     string   `json:"client"`
	Unlogged   int      `json:"unlogged"`
}

func parseLog(t *testing.T, buf *bytes.Buffer) []logLine {
	t.Helper()
	var lines []logLine
	dec := json.NewDecoder(buf)
	for dec.More() {
		var l logLine
		if err := dec.Decode(&l); err != nil {
			t.Fatalf("log is not JSON lines: %v", err)
		}
		lines = append(lines, l)
	}
	return lines
}

// statusHandler answers the status the query parameter status names.
var statusHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	code, err := strconv.Atoi(r.URL.Query().Get("status"))
	if err != nil {
		panic(err)
	}
	w.WriteHeader(code)
})

// TestAccessLogLevels: a 5xx at warn, anything else at debug; with the log
// at info only the 5xx are written, and nothing else is counted.
func TestAccessLogLevels(t *testing.T) {
	tests := []struct {
		status  int
		atDebug string // the line's level with the log at debug
		atInfo  bool   // whether a line is written with the log at info
	}{
		{http.StatusOK, "DEBUG", false},
		{http.StatusFound, "DEBUG", false},
		{http.StatusNotFound, "DEBUG", false},
		{http.StatusTooManyRequests, "DEBUG", false},
		{http.StatusInternalServerError, "WARN", true},
		{http.StatusServiceUnavailable, "WARN", true},
	}
	for _, tt := range tests {
		t.Run(strconv.Itoa(tt.status), func(t *testing.T) {
			for _, level := range []slog.Level{slog.LevelDebug, slog.LevelInfo} {
				var buf bytes.Buffer
				log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: level}))
				h := newAccessLog(log, 100, trustedProxies(nil).clientIP).observe(statusHandler)
				r := httptest.NewRequest("GET", "/x?status="+strconv.Itoa(tt.status), nil)
				r.RemoteAddr = "192.0.2.1:4000"
				h.ServeHTTP(httptest.NewRecorder(), r)
				lines := parseLog(t, &buf)
				want := 1
				if level == slog.LevelInfo && !tt.atInfo {
					want = 0
				}
				if len(lines) != want {
					t.Fatalf("log at %v: %d lines, want %d: %+v", level, len(lines), want, lines)
				}
				if want == 0 {
					continue
				}
				l := lines[0]
				if l.Msg != "http request" || l.Status != tt.status || l.Client != "192.0.2.1" || l.DurationMS == nil || l.Unlogged != 0 {
					t.Errorf("log at %v: line %+v, want http request, status %d, client 192.0.2.1, duration_ms, no unlogged", level, l, tt.status)
				}
				if level == slog.LevelDebug && l.Level != tt.atDebug {
					t.Errorf("status %d logged at %s, want %s", tt.status, l.Level, tt.atDebug)
				}
			}
		})
	}
}

// TestAccessLogRate: at most perSecond lines below 5xx a second, the
// skipped ones counted in the next line written, whatever its level.
func TestAccessLogRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var buf bytes.Buffer
		log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
		h := newAccessLog(log, 3, trustedProxies(nil).clientIP).observe(statusHandler)
		serve := func(n, status int) []logLine {
			for range n {
				h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/x?status="+strconv.Itoa(status), nil))
			}
			return parseLog(t, &buf)
		}

		if lines := serve(10, http.StatusOK); len(lines) != 3 || lines[2].Unlogged != 0 {
			t.Fatalf("10 requests at once with 3 lines a second: %+v, want 3 lines without unlogged", lines)
		}
		// A 5xx is written despite the limit, and reports what it skipped.
		if lines := serve(1, http.StatusInternalServerError); len(lines) != 1 || lines[0].Level != "WARN" || lines[0].Unlogged != 7 {
			t.Fatalf("a 500 after 7 skipped lines: %+v, want one WARN line with unlogged 7", lines)
		}
		if lines := serve(5, http.StatusNotFound); len(lines) != 0 {
			t.Fatalf("5 more requests within the same second: %+v, want none written", lines)
		}
		time.Sleep(time.Second)
		lines := serve(4, http.StatusOK)
		if len(lines) != 3 || lines[0].Unlogged != 5 || lines[1].Unlogged != 0 {
			t.Fatalf("4 requests a second later: %+v, want 3 lines, the first with unlogged 5", lines)
		}
	})
}

func TestAccessLogNone(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h := newAccessLog(log, 0, trustedProxies(nil).clientIP).observe(statusHandler)
	for _, status := range []int{http.StatusOK, http.StatusBadRequest, http.StatusOK, http.StatusBadGateway} {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/x?status="+strconv.Itoa(status), nil))
	}
	lines := parseLog(t, &buf)
	if len(lines) != 1 || lines[0].Status != http.StatusBadGateway || lines[0].Unlogged != 3 {
		t.Fatalf("ACCESS_LOG_PER_SECOND 0: %+v, want only the 502, with unlogged 3", lines)
	}
}

// TestFailLogLevel: the cause of a 500 is an error; a 503 that tells the
// client to come back is expected, and only debug.
func TestFailLogLevel(t *testing.T) {
	tests := []struct {
		name  string
		err   error
		level string // "" for no line
	}{
		{"stage full", &fleet.Error{Kind: fleet.ErrStageFull, Msg: "full", RetryAfter: 2 * time.Second}, "DEBUG"},
		{"stage limit", &fleet.Error{Kind: fleet.ErrStageLimit, Msg: "limit", RetryAfter: time.Second}, "DEBUG"},
		{"stage limit without Retry-After", &fleet.Error{Kind: fleet.ErrStageLimit, Msg: "limit"}, "DEBUG"},
		{"store down", &fleet.Error{Kind: fleet.ErrUnavailable, Msg: "store", Err: errors.New("redis down")}, "ERROR"},
		{"token", &fleet.Error{Kind: fleet.ErrToken, Msg: "token", Err: errors.New("signer")}, "ERROR"},
		{"unexpected", errors.New("boom"), "ERROR"},
		{"not found", &fleet.Error{Kind: fleet.ErrNotFound, Msg: "no such stage"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			s := &server{log: slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))}
			s.fail(tt.err)
			lines := parseLog(t, &buf)
			switch {
			case tt.level == "" && len(lines) != 0:
				t.Errorf("%v logged %+v, want nothing", tt.err, lines)
			case tt.level != "" && (len(lines) != 1 || lines[0].Level != tt.level):
				t.Errorf("%v logged %+v, want one line at %s", tt.err, lines, tt.level)
			}
		})
	}
}
