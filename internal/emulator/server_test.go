package emulator

import (
	"bufio"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestNewHTTPServer(t *testing.T) {
	t.Parallel()
	srv := NewHTTPServer(http.NotFoundHandler())
	if srv.Handler == nil {
		t.Error("Handler not set")
	}
	for name, d := range map[string]time.Duration{
		"ReadHeaderTimeout": srv.ReadHeaderTimeout,
		"ReadTimeout":       srv.ReadTimeout,
		"WriteTimeout":      srv.WriteTimeout,
		"IdleTimeout":       srv.IdleTimeout,
	} {
		if d <= 0 {
			t.Errorf("%s %v, want a limit", name, d)
		}
	}
	if srv.MaxHeaderBytes <= 0 || srv.MaxHeaderBytes > http.DefaultMaxHeaderBytes {
		t.Errorf("MaxHeaderBytes %d, want a limit below the default %d", srv.MaxHeaderBytes, http.DefaultMaxHeaderBytes)
	}
	// WriteTimeout runs from the end of the request headers: the body may
	// take up to ReadTimeout, then the call is held back up to maxLatency.
	if srv.WriteTimeout <= srv.ReadTimeout+maxLatency {
		t.Errorf("WriteTimeout %v leaves no room for a body sent within ReadTimeout %v and the latency the emulator adds (up to %v)",
			srv.WriteTimeout, srv.ReadTimeout, maxLatency)
	}
}

// TestNewHTTPServerCutsOffSlowBody sends a request body a byte at a time and
// checks that the server gives up on it after ReadTimeout, long before the
// body would be complete.
func TestNewHTTPServerCutsOffSlowBody(t *testing.T) {
	t.Parallel()
	emu, err := New(quiet())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(emu.Close)
	srv := NewHTTPServer(emu.Handler())
	srv.ReadTimeout = 200 * time.Millisecond
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })

	conn, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	body := `{"name":"` + strings.Repeat("x", 98) + `"}`
	start := time.Now()
	if _, err := conn.Write([]byte("POST /CreateStage HTTP/1.1\r\nHost: emulator\r\nContent-Type: application/json\r\n" +
		"Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	// 100 bytes, one each 50 ms: 5 s for the whole body.
	go func() {
		for i := range len(body) {
			if _, err := conn.Write([]byte{body[i]}); err != nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer to a body trickled for %v: %v", time.Since(start), err)
	}
	resp.Body.Close()
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("answered after %v, want soon after the 200ms ReadTimeout", took)
	}
	if typ := resp.Header.Get("x-amzn-ErrorType"); resp.StatusCode != http.StatusBadRequest || typ != errSerialization {
		t.Errorf("answer %s %s, want 400 %s: the body was cut off", resp.Status, typ, errSerialization)
	}
	if st := emu.Snapshot(); len(st.Stages) != 0 {
		t.Errorf("%d stages created from a body cut off, want 0", len(st.Stages))
	}
}

// TestLatencyCap checks that no call is held back longer than maxLatency,
// which NewHTTPServer's WriteTimeout is sized for.
func TestLatencyCap(t *testing.T) {
	t.Parallel()
	if _, err := New(Config{Latency: map[string]time.Duration{"GetStage": maxLatency + time.Millisecond}}); err == nil {
		t.Error("New with latency above the cap succeeded, want an error")
	}
	cfg := quiet()
	cfg.Latency = map[string]time.Duration{"*": maxLatency}
	emu, err := New(cfg)
	if err != nil {
		t.Fatalf("New with latency at the cap: %v", err)
	}
	t.Cleanup(emu.Close)
	if err := emu.SetFault(Fault{Operation: "GetStage", LatencyMS: int(maxLatency.Milliseconds()) + 1}); err == nil {
		t.Error("SetFault with latency above the cap succeeded, want an error")
	}
	if err := emu.SetFault(Fault{Operation: "GetStage", LatencyMS: int(maxLatency.Milliseconds())}); err != nil {
		t.Fatalf("SetFault with latency at the cap: %v", err)
	}
	emu.mu.Lock()
	delay, _ := emu.faultFor("GetStage")
	emu.mu.Unlock()
	if delay != maxLatency {
		t.Errorf("configured and injected latency of %v each add up to %v, want them capped at %v", maxLatency, delay, maxLatency)
	}
}

func TestIsLoopbackAddr(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		addr string
		want bool
	}{
		{"127.0.0.1:4566", true},
		{"127.1.2.3:4566", true},
		{"localhost:4566", true},
		{"LocalHost:4566", true},
		{"[::1]:4566", true},
		{"[::ffff:127.0.0.1]:4566", true},
		{"127.0.0.1:0", true},
		{":4566", false},
		{"0.0.0.0:4566", false},
		{"[::]:4566", false},
		{"192.168.1.10:4566", false},
		{"10.0.0.1:4566", false},
		{"[2001:db8::1]:4566", false},
		{"example.com:4566", false},
		{"localhost.example.com:4566", false},
		{"128.0.0.1:4566", false},
		{"127.0.0.1", false}, // no port: not a listen address
		{"", false},
	} {
		if got := IsLoopbackAddr(c.addr); got != c.want {
			t.Errorf("IsLoopbackAddr(%q) = %v, want %v", c.addr, got, c.want)
		}
	}
}
