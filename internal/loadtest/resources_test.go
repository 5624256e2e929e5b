package loadtest

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestParseProcess(t *testing.T) {
	tests := []struct {
		in   string
		want Process
		err  bool
	}{
		{"serve-1=4242", Process{Name: "serve-1", PID: 4242}, false},
		{"redis=1", Process{Name: "redis", PID: 1}, false},
		{"serve-1", Process{}, true},
		{"=4242", Process{}, true},
		{"serve=0", Process{}, true},
		{"serve=-3", Process{}, true},
		{"serve=abc", Process{}, true},
	}
	for _, tt := range tests {
		got, err := ParseProcess(tt.in)
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("ParseProcess(%q) = %+v, %v; want %+v, error %v", tt.in, got, err, tt.want, tt.err)
		}
	}
}

func TestPeakRSSAndCPU(t *testing.T) {
	n, err := peakRSS(os.Getpid())
	if err != nil || n < 1<<20 {
		t.Fatalf("peakRSS(this process) = %d, %v; want at least a megabyte", n, err)
	}
	if _, err := peakRSS(1 << 30); err == nil {
		t.Error("peakRSS of a process that does not exist: no error")
	}
	// Burn a little CPU so that the reading cannot be 0.
	start := time.Now()
	for x := 0; time.Since(start) < 50*time.Millisecond; x++ {
		_ = x * x
	}
	if cpu, err := cpuSeconds(os.Getpid()); err != nil || cpu <= 0 {
		t.Fatalf("cpuSeconds(this process) = %v, %v; want some CPU", cpu, err)
	}
	if _, err := cpuSeconds(1 << 30); err == nil {
		t.Error("cpuSeconds of a process that does not exist: no error")
	}
}

func TestRedisOnThisMachineOnly(t *testing.T) {
	for _, url := range []string{"redis://10.0.0.5:6379/0", "redis://example.com:6379"} {
		if _, err := newResources(nil, url); err == nil || !strings.Contains(err.Error(), "this machine") {
			t.Errorf("newResources(%q) = %v; want refused as not on this machine", url, err)
		}
	}
	for _, url := range []string{"redis://127.0.0.1:6379/0", "redis://localhost:6379", "redis://[::1]:6379"} {
		r, err := newResources(nil, url)
		if err != nil {
			t.Errorf("newResources(%q): %v", url, err)
			continue
		}
		r.close()
	}
}
