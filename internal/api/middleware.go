package api

import (
	"crypto/subtle"
	"log/slog"
	"net/http"
	"net/netip"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"golang.org/x/time/rate"
)

// statusRecorder remembers the status written, for the access log.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

// Unwrap lets the WebSocket upgrade of GET /ws reach the connection
// beneath, as http.ResponseController does.
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// accessLog logs every request when it is done. A 5xx is logged at warn,
// always: it is what an operator must see. Anything else is logged at debug
// and at most perSecond lines a second, so that a flood of requests cannot
// become a flood of log; the lines the limit skipped are counted in the next
// line written ("unlogged"), so that the volume stays visible.
type accessLog struct {
	log      *slog.Logger
	client   func(*http.Request) string
	limit    *rate.Limiter
	unlogged atomic.Int64
}

// newAccessLog returns the access log; perSecond 0 writes no line below 5xx.
func newAccessLog(log *slog.Logger, perSecond int, client func(*http.Request) string) *accessLog {
	return &accessLog{log: log, client: client, limit: rate.NewLimiter(rate.Limit(perSecond), perSecond)}
}

// observe gives every request an id (x-request-id, kept when the client sent
// one), logs it when done, and turns a panic into a 500 envelope.
func (l *accessLog) observe(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("x-request-id")
		if id == "" || len(id) > 128 {
			id = uuid.NewString()
		}
		w.Header().Set("x-request-id", id)
		rec := &statusRecorder{ResponseWriter: w}
		start := time.Now()
		defer func() {
			if p := recover(); p != nil {
				l.log.Error("panic serving request", "request_id", id, "panic", p, "stack", string(debug.Stack()))
				if rec.status == 0 {
					writeError(rec, &apiError{status: http.StatusInternalServerError, code: CodeInternal, message: "internal error"})
				}
			}
			l.record(r, id, rec.status, time.Since(start))
		}()
		next.ServeHTTP(rec, r)
	})
}

// record writes one request's line, unless it is below 5xx and either debug
// is off or the limit skips it. Lines dropped by the level are not counted:
// the operator chose not to see them, and counting would cost every request.
func (l *accessLog) record(r *http.Request, id string, status int, took time.Duration) {
	level := slog.LevelWarn
	if status < 500 {
		level = slog.LevelDebug
		if !l.log.Enabled(r.Context(), level) {
			return
		}
		if !l.limit.Allow() {
			l.unlogged.Add(1)
			return
		}
	}
	attrs := []slog.Attr{
		slog.String("request_id", id), slog.String("method", r.Method), slog.String("path", r.URL.Path),
		slog.Int("status", status), slog.Float64("duration_ms", float64(took.Microseconds())/1000),
		slog.String("client", l.client(r)),
	}
	if n := l.unlogged.Swap(0); n > 0 {
		attrs = append(attrs, slog.Int64("unlogged", n))
	}
	l.log.LogAttrs(r.Context(), level, "http request", attrs...)
}

// limitBody bounds every request body.
func limitBody(maxBytes int64, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, maxBytes)
		next.ServeHTTP(w, r)
	})
}

// secretEqual compares secrets in constant time.
func secretEqual(got, want string) bool {
	return subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// requireAPIKey checks x-api-key unless auth is skipped.
func requireAPIKey(key string, skip bool, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !skip {
			got := r.Header.Get("x-api-key")
			if got == "" {
				writeError(w, &apiError{status: http.StatusUnauthorized, code: CodeUnauthorized, message: "missing x-api-key header"})
				return
			}
			if !secretEqual(got, key) {
				writeError(w, &apiError{status: http.StatusUnauthorized, code: CodeUnauthorized, message: "invalid x-api-key"})
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// trustedProxies are the proxies (load balancers) whose X-Forwarded-For
// names the client.
type trustedProxies []netip.Prefix

func (tp trustedProxies) contains(a netip.Addr) bool {
	for _, p := range tp {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// clientIP is who a request comes from, for the rate limit and the logs: the
// connection's address, unless that is a trusted proxy. Then it is the
// rightmost address of X-Forwarded-For that is not itself a trusted proxy:
// each proxy appends the address it was reached from, so everything left of
// what the first trusted proxy appended is whatever the client chose to send
// and must not be believed. Malformed entries are skipped; when no entry
// qualifies the proxy itself is the client.
func (tp trustedProxies) clientIP(r *http.Request) string {
	peer, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	addr := peer.Addr().Unmap()
	if !tp.contains(addr) {
		return addr.String()
	}
	hops := r.Header.Values("X-Forwarded-For")
	for i := len(hops) - 1; i >= 0; i-- {
		entries := strings.Split(hops[i], ",")
		for j := len(entries) - 1; j >= 0; j-- {
			a, err := netip.ParseAddr(strings.TrimSpace(entries[j]))
			if err != nil {
				continue
			}
			if a = a.Unmap(); !tp.contains(a) {
				return a.String()
			}
		}
	}
	return addr.String()
}

// viaTrusted says whether a request came through a trusted proxy, whose
// headers about the client may be believed.
func (tp trustedProxies) viaTrusted(r *http.Request) bool {
	peer, err := netip.ParseAddrPort(r.RemoteAddr)
	return err == nil && tp.contains(peer.Addr().Unmap())
}

// rateLimiter allows each client (as client tells it) max requests per
// window, refilled evenly, as a token bucket of size max.
type rateLimiter struct {
	client func(*http.Request) string
	every  rate.Limit
	burst  int
	window time.Duration

	mu        sync.Mutex
	clients   map[string]*clientLimit
	lastSweep time.Time
}

type clientLimit struct {
	lim  *rate.Limiter
	seen time.Time
}

func newRateLimiter(max int, window time.Duration, client func(*http.Request) string) *rateLimiter {
	return &rateLimiter{
		client:  client,
		every:   rate.Limit(float64(max) / window.Seconds()),
		burst:   max,
		window:  window,
		clients: map[string]*clientLimit{},
	}
}

func (l *rateLimiter) allow(client string, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	// Forget clients idle for a window: their bucket is full again anyway.
	if now.Sub(l.lastSweep) > l.window {
		for k, c := range l.clients {
			if now.Sub(c.seen) > l.window {
				delete(l.clients, k)
			}
		}
		l.lastSweep = now
	}
	c, ok := l.clients[client]
	if !ok {
		c = &clientLimit{lim: rate.NewLimiter(l.every, l.burst)}
		l.clients[client] = c
	}
	c.seen = now
	res := c.lim.ReserveN(now, 1)
	if delay := res.DelayFrom(now); delay > 0 {
		res.CancelAt(now)
		return false, delay
	}
	return true, 0
}

func (l *rateLimiter) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if allowed, wait := l.allow(l.client(r), time.Now()); !allowed {
			writeError(w, &apiError{status: http.StatusTooManyRequests, code: CodeRateLimited,
				message: "too many requests from this client; slow down", retryAfter: wait})
			return
		}
		next.ServeHTTP(w, r)
	})
}
