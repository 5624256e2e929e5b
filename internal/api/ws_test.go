package api

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// The key of GET /ws?apiKey= never reaches the log: the access log writes
// the path, not the query.
func TestWSQueryKeyNotLogged(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h := New(Options{APISecretKey: "the-key", AccessLogPerSecond: 100, Logger: log}, nil)
	for _, target := range []string{"/ws?apiKey=the-key", "/ws?apiKey=the-key-wrong"} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, target, nil))
		if rec.Code != http.StatusUpgradeRequired && rec.Code != http.StatusUnauthorized {
			t.Errorf("GET %s: %d", target, rec.Code)
		}
	}
	if !strings.Contains(buf.String(), `"path":"/ws"`) {
		t.Fatalf("no access-log line for /ws: %s", buf.String())
	}
	if strings.Contains(buf.String(), "the-key") {
		t.Errorf("the key is in the log: %s", buf.String())
	}
}
