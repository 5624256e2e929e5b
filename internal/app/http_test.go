package app_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stagefleet/stagefleet/internal/app"
	"github.com/stagefleet/stagefleet/internal/config"
	"github.com/stagefleet/stagefleet/internal/emulator"
)

// dialAPI opens a raw connection to the app's API, closed when the test
// ends: these tests play clients that net/http would never be.
func dialAPI(t *testing.T, a *testApp) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", a.app.Addr(), 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", a.app.Addr(), err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

const healthRequest = "GET /api/health HTTP/1.1\r\nHost: stagefleet\r\n\r\n"

// roundTrip writes a raw request and reads its response, body included.
func roundTrip(c net.Conn, br *bufio.Reader, request string, timeout time.Duration) (*http.Response, error) {
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return nil, err
	}
	if _, err := io.WriteString(c, request); err != nil {
		return nil, err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return resp, err
}

// closedByServer says whether err is how a read sees the server hang up.
func closedByServer(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)
}

// TestReadTimeoutCutsTrickledBody: a client sending its body one byte every
// 200 ms holds a connection only for HTTP_READ_TIMEOUT, and what it sends
// is never served, although the same request sent at once is.
func TestReadTimeoutCutsTrickledBody(t *testing.T) {
	a := startApp(t, map[string]string{"HTTP_READ_TIMEOUT": "1s"})
	// Padded so that, trickled, it would take 8 s to arrive.
	body := `{"userId":"slow-host"}` + strings.Repeat(" ", 18)
	a.expect(t, "POST", "/api/token/publisher", body, http.StatusOK)

	c := dialAPI(t, a)
	start := time.Now()
	fmt.Fprintf(c, "POST /api/token/publisher HTTP/1.1\r\nHost: stagefleet\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", len(body))
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for i := range len(body) {
			if _, err := c.Write([]byte{body[i]}); err != nil {
				return
			}
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()

	if err := c.SetReadDeadline(start.Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	took := time.Since(start)
	if err != nil && !closedByServer(err) {
		t.Fatalf("connection still open %v after the request began (HTTP_READ_TIMEOUT 1s): %v; read %q", took.Round(time.Millisecond), err, got)
	}
	if bytes.Contains(got, []byte(" 200 ")) {
		t.Fatalf("the trickled request was served: %q", got)
	}
	if took < 900*time.Millisecond {
		t.Errorf("connection closed after %v, before HTTP_READ_TIMEOUT (1s)", took)
	}
	t.Logf("trickled body cut off after %v; the server sent %q", took.Round(time.Millisecond), firstLine(got))
}

func firstLine(b []byte) string {
	line, _, _ := bytes.Cut(b, []byte("\r\n"))
	return string(line)
}

// TestIdleTimeoutClosesKeepAlive: keep-alive connections left idle are
// closed by the server after HTTP_IDLE_TIMEOUT, not kept for
// HTTP_READ_TIMEOUT (which net/http would use without an idle timeout).
func TestIdleTimeoutClosesKeepAlive(t *testing.T) {
	const conns = 50
	a := startApp(t, map[string]string{"HTTP_IDLE_TIMEOUT": "1s", "HTTP_READ_TIMEOUT": "30s"})
	cs := make([]net.Conn, conns)
	// The server's idle timer starts between sent (before the request)
	// and answered: the lower bound is from the one, the upper from the
	// other, so that a client slow to wake does not fail the test.
	sent, answered := make([]time.Time, conns), make([]time.Time, conns)
	for i := range cs {
		cs[i] = dialAPI(t, a)
		sent[i] = time.Now()
		resp, err := roundTrip(cs[i], bufio.NewReader(cs[i]), healthRequest, 5*time.Second)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		if resp.StatusCode != http.StatusOK || resp.Close {
			t.Fatalf("connection %d: status %d, close %v: want 200 and the connection kept alive", i, resp.StatusCode, resp.Close)
		}
		answered[i] = time.Now()
	}

	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for i, c := range cs {
		wg.Go(func() {
			if err := c.SetReadDeadline(answered[i].Add(4 * time.Second)); err != nil {
				errs <- err
				return
			}
			_, err := c.Read(make([]byte, 1))
			idle, since := time.Since(answered[i]), time.Since(sent[i])
			switch {
			case !closedByServer(err):
				errs <- fmt.Errorf("connection %d: read after %v idle: %v, want EOF", i, idle.Round(time.Millisecond), err)
			case since < time.Second:
				errs <- fmt.Errorf("connection %d closed %v after its request was sent, before HTTP_IDLE_TIMEOUT (1s)", i, since)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestMaxConnections: with HTTP_MAX_CONNECTIONS=5, while five connections
// are open no other is served; each waits until one of them closes.
func TestMaxConnections(t *testing.T) {
	const limit, waiting = 5, 15
	a := startApp(t, map[string]string{"HTTP_MAX_CONNECTIONS": fmt.Sprint(limit)})
	held := make([]net.Conn, limit)
	for i := range held {
		held[i] = dialAPI(t, a)
		if _, err := roundTrip(held[i], bufio.NewReader(held[i]), healthRequest, 5*time.Second); err != nil {
			t.Fatalf("connection %d of the first %d: %v", i, limit, err)
		}
	}

	// Each waiting connection asks to be closed after its answer, so that
	// the waiting ones are served one slot after another once one frees.
	answers := make(chan error, waiting)
	for i := range waiting {
		c := dialAPI(t, a)
		go func() {
			resp, err := roundTrip(c, bufio.NewReader(c), "GET /api/health HTTP/1.1\r\nHost: stagefleet\r\nConnection: close\r\n\r\n", 10*time.Second)
			if err == nil && resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("status %d", resp.StatusCode)
			}
			if err != nil {
				err = fmt.Errorf("waiting connection %d: %w", i, err)
			}
			answers <- err
		}()
	}
	select {
	case err := <-answers:
		t.Fatalf("a connection beyond the first %d was answered while they were open (%v)", limit, err)
	case <-time.After(time.Second):
	}

	for _, c := range held {
		c.Close()
	}
	deadline := time.After(5 * time.Second)
	for range waiting {
		select {
		case err := <-answers:
			if err != nil {
				t.Error(err)
			}
		case <-deadline:
			t.Fatal("the waiting connections were not all answered within 5s of the first ones closing")
		}
	}
}

// TestMaxHeaderBytes: a header beyond HTTP_MAX_HEADER_BYTES is refused with
// 431. net/http reads 4 KiB beyond the limit before refusing, so "beyond"
// here is by more than that.
func TestMaxHeaderBytes(t *testing.T) {
	const limit = 4096
	a := startApp(t, map[string]string{"HTTP_MAX_HEADER_BYTES": fmt.Sprint(limit)})
	tests := []struct {
		name   string
		size   int
		status int
	}{
		{"within the limit", limit / 2, http.StatusOK},
		{"beyond the limit", 4 * limit, http.StatusRequestHeaderFieldsTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hdr := http.Header{"X-Padding": {strings.Repeat("a", tt.size)}}
			r, err := a.send(t.Context(), "GET", "/api/health", nil, hdr)
			if err != nil {
				t.Fatalf("GET /api/health with a %d-byte header: %v", tt.size, err)
			}
			if r.Status != tt.status {
				t.Errorf("GET /api/health with a %d-byte header: %s, want %d", tt.size, r, tt.status)
			}
		})
	}
}

// lockedBuffer collects log output written from several goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestListenHost: without a key and without API_HOST the API listens on
// loopback only, and says why once; an explicit API_HOST is taken as is.
func TestListenHost(t *testing.T) {
	const why = "127.0.0.1 only because API_SECRET_KEY is unset"
	tests := []struct {
		name     string
		env      map[string]string
		host     string
		warnings int
	}{
		{"no key, no host: loopback, with a warning", nil, "127.0.0.1", 1},
		{"no key, host set explicitly: no warning", map[string]string{"API_HOST": "127.0.0.1"}, "127.0.0.1", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vars := map[string]string{"API_PORT": "0", "EMULATOR_ADDR": "127.0.0.1:0", "IVS_MODE": "emulator", "DATA_DIR": t.TempDir()}
			maps.Copy(vars, tt.env)
			cfg, err := config.Load(nil, func(k string) string { return vars[k] }, io.Discard, nil)
			if err != nil {
				t.Fatalf("config.Load: %v", err)
			}
			var logs lockedBuffer
			a, err := app.New(context.Background(), cfg, emulator.DefaultConfig(), slog.New(slog.NewJSONHandler(&logs, nil)))
			if err != nil {
				t.Fatalf("app.New: %v", err)
			}
			defer a.Close()
			if host, _, _ := net.SplitHostPort(a.Addr()); host != tt.host {
				t.Errorf("API listens on %s, want host %s", a.Addr(), tt.host)
			}
			var warnings int
			for line := range strings.Lines(logs.String()) {
				if strings.Contains(line, `"level":"WARN"`) && strings.Contains(line, why) {
					warnings++
				}
			}
			if warnings != tt.warnings {
				t.Errorf("%d warnings saying %q, want %d; log:\n%s", warnings, why, tt.warnings, logs.String())
			}
		})
	}
}
