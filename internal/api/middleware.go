package api

import (
	"crypto/subtle"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"sync"
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

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// observe gives every request an id (x-request-id, kept when the client sent
// one), logs it when done, and turns a panic into a 500 envelope.
func observe(log *slog.Logger, next http.Handler) http.Handler {
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
				log.Error("panic serving request", "request_id", id, "panic", p, "stack", string(debug.Stack()))
				if rec.status == 0 {
					writeError(rec, &apiError{status: http.StatusInternalServerError, code: CodeInternal, message: "internal error"})
				}
			}
			level := slog.LevelInfo
			if rec.status >= 500 {
				level = slog.LevelError
			}
			log.Log(r.Context(), level, "http request",
				"request_id", id, "method", r.Method, "path", r.URL.Path, "status", rec.status,
				"duration_ms", float64(time.Since(start).Microseconds())/1000, "client", clientIP(r))
		}()
		next.ServeHTTP(rec, r)
	})
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

func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// rateLimiter allows each client (by remote address) max requests per
// window, refilled evenly, as a token bucket of size max.
type rateLimiter struct {
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

func newRateLimiter(max int, window time.Duration) *rateLimiter {
	return &rateLimiter{
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
		if allowed, wait := l.allow(clientIP(r), time.Now()); !allowed {
			writeError(w, &apiError{status: http.StatusTooManyRequests, code: CodeRateLimited,
				message: "too many requests from this client; slow down", retryAfter: wait})
			return
		}
		next.ServeHTTP(w, r)
	})
}
