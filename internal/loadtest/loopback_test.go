package loadtest

import (
	"errors"
	"strings"
	"testing"
)

func TestCheckLoopback(t *testing.T) {
	tests := []struct {
		url     string
		refused bool
	}{
		{"http://127.0.0.1:3000", false},
		{"http://127.3.4.5:3000/", false},
		{"http://localhost:3000", false},
		{"https://LOCALHOST", false},
		{"http://[::1]:4566", false},
		{"http://10.0.0.1:3000", true},
		{"http://192.168.1.20:3000", true},
		{"http://8.8.8.8", true},
		{"http://0.0.0.0:3000", true}, // every interface, not a loopback address
		{"http://example.com:3000", true},
		{"http://localhost.example.com", true},
		{"http://[::ffff:10.0.0.1]:3000", true},
		{"ftp://127.0.0.1", true},
		{"127.0.0.1:3000", true}, // no scheme
		{"http://", true},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			err := CheckLoopback("api", tt.url)
			if (err != nil) != tt.refused {
				t.Fatalf("CheckLoopback(%q) = %v, want refused %v", tt.url, err, tt.refused)
			}
			if err != nil && !strings.Contains(err.Error(), "--api") {
				t.Errorf("error %q does not name the flag", err)
			}
		})
	}
}

// TestRunRefusesRemoteTargets: Run refuses before sending anything, so
// these addresses are never contacted.
func TestRunRefusesRemoteTargets(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		flag string
	}{
		{"api", Config{Scenario: Storm, API: "http://10.1.2.3:3000"}, "--api"},
		{"emulator", Config{Scenario: Storm, API: "http://127.0.0.1:1", Emulator: "http://203.0.113.7:4566"}, "--emulator"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep, err := Run(t.Context(), tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.flag) || !strings.Contains(err.Error(), "only targets this machine") {
				t.Fatalf("Run = %v, %v; want a refusal naming %s", rep, err, tt.flag)
			}
		})
	}
}

func TestDialerRefusesRemoteAddresses(t *testing.T) {
	tests := []struct {
		address string
		refused bool
	}{
		{"127.0.0.1:3000", false},
		{"[::1]:4566", false},
		{"10.0.0.1:3000", true},
		{"[2001:db8::1]:443", true},
		{"93.184.216.34:80", true},
	}
	for _, tt := range tests {
		err := loopbackOnly("tcp", tt.address, nil)
		if refused := errors.Is(err, errNotLoopback); refused != tt.refused {
			t.Errorf("loopbackOnly(%q) = %v, want refused %v", tt.address, err, tt.refused)
		}
	}
}
