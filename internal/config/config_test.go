package config

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/stagefleet/stagefleet/internal/emulator"
)

const (
	testStageArn = "arn:aws:ivs:us-east-1:123456789012:stage/AbCdEf123456"
	testKeyArn   = "arn:aws:ivs:us-east-1:123456789012:public-key/AbCdEf123456"
)

// env is a fake environment.
func env(kv map[string]string) func(string) string {
	return func(k string) string { return kv[k] }
}

// load runs Load with the embedded emulator's flags registered, as
// stagefleet serve does.
func load(args []string, kv map[string]string) (Config, string, error) {
	var out bytes.Buffer
	emu := emulator.DefaultConfig()
	c, err := Load(args, env(kv), &out, func(fs *flag.FlagSet) { emu.RegisterFlags(fs, "emulator-") })
	return c, out.String(), err
}

func TestLoadDefaults(t *testing.T) {
	c, _, err := load(nil, nil)
	if err != nil {
		t.Fatalf("Load with nothing set: %v", err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"APIHost", c.APIHost, ""},
		{"APIPort", c.APIPort, 3000},
		{"IVSMode", c.IVSMode, ModeAuto},
		{"Mode()", c.Mode(), ModeEmulator},
		{"IVSEndpoint", c.IVSEndpoint, ""},
		{"AWSRegion", c.AWSRegion, "us-east-1"},
		{"EmulatorAddr", c.EmulatorAddr, "127.0.0.1:4566"},
		{"MasterStageArn", c.MasterStageArn, ""},
		{"PublisherTokenTTL", c.PublisherTokenTTL, 4 * time.Hour},
		{"ViewerTokenTTL", c.ViewerTokenTTL, time.Hour},
		{"MediaServerTokenTTL", c.MediaServerTokenTTL, 4 * time.Hour},
		{"ReconnectWindow", c.ReconnectWindow, 30 * time.Second},
		{"StageCapacity", c.StageCapacity, 50},
		{"ScaleUpThreshold", c.ScaleUpThreshold, 45},
		{"MaxStages", c.MaxStages, 20},
		{"MinIdleStages", c.MinIdleStages, 0},
		{"ScaleDownWindow", c.ScaleDownWindow, 60 * time.Second},
		{"ReconcileInterval", c.ReconcileInterval, 10 * time.Second},
		{"ControllerWorkers", c.ControllerWorkers, 4},
		{"HeartbeatTimeout", c.HeartbeatTimeout, 60 * time.Second},
		{"SeatWait", c.SeatWait, 2 * time.Second},
		{"APISecretKey", c.APISecretKey, ""},
		{"SkipAuth", c.SkipAuth, false},
		{"AuthDisabled()", c.AuthDisabled(), true}, // emulator mode without API_SECRET_KEY
		{"RateLimitWindow", c.RateLimitWindow, time.Minute},
		{"RateLimitMaxRequests", c.RateLimitMaxRequests, 1000},
		{"MaxBodyBytes", c.MaxBodyBytes, int64(64 << 10)},
		{"ShutdownTimeout", c.ShutdownTimeout, 10 * time.Second},
		{"LogLevel", c.LogLevel, "info"},
		{"Environment", c.Environment, "development"},
		{"ListenHost()", c.ListenHost(), "127.0.0.1"}, // no key: loopback only
		{"SkipEventsAuth", c.SkipEventsAuth, false},
		{"EmulatorAllowRemote", c.EmulatorAllowRemote, false},
		{"EventMaxSkew", c.EventMaxSkew, 30 * time.Second},
		{"DeploymentID", c.DeploymentID, "default"},
		{"MaxBroadcasts", c.MaxBroadcasts, 20},
		{"StageQuota", c.StageQuota, 100},
		{"BroadcastIdleTimeout", c.BroadcastIdleTimeout, time.Hour},
		{"HTTPReadTimeout", c.HTTPReadTimeout, 15 * time.Second},
		{"HTTPWriteTimeout", c.HTTPWriteTimeout, 30 * time.Second},
		{"HTTPWriteTimeout with a long SEAT_WAIT", func() time.Duration {
			c, _, err := load(nil, map[string]string{"SEAT_WAIT": "45s"})
			if err != nil {
				return -1
			}
			return c.HTTPWriteTimeout
		}(), 55 * time.Second},
		{"HTTPIdleTimeout", c.HTTPIdleTimeout, time.Minute},
		{"HTTPMaxHeaderBytes", c.HTTPMaxHeaderBytes, 16384},
		{"HTTPMaxConnections", c.HTTPMaxConnections, 4096},
		{"len(TrustedProxies)", len(c.TrustedProxies), 0},
		{"AccessLogPerSecond", c.AccessLogPerSecond, 50},
		{"MetricsAddr", c.MetricsAddr, ""},
		{"MetricsListenAddr()", c.MetricsListenAddr(), ""},
		{"MetricsMaxBroadcasts", c.MetricsMaxBroadcasts, 20},
		{"EnableMonitoring", c.EnableMonitoring, false},
		{"MetricsInterval", c.MetricsInterval, time.Minute},
		{"CloudWatchNamespace", c.CloudWatchNamespace, "IVS/Production"},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %v, want %v", ch.name, ch.got, ch.want)
		}
	}
}

func TestLoadOverrides(t *testing.T) {
	tests := []struct {
		name  string
		env   map[string]string
		args  []string
		check func(t *testing.T, c Config)
	}{
		{
			name: "env",
			env: map[string]string{
				"API_HOST": "127.0.0.1", "API_PORT": "8080", "STAGE_CAPACITY": "100",
				"SCALE_UP_THRESHOLD": "90", "HEARTBEAT_TIMEOUT": "30s", "SEAT_WAIT": "500ms",
				"PUBLISHER_TOKEN_TTL": "2h", "VIEWER_TOKEN_TTL": "30m", "RATE_LIMIT_WINDOW_MS": "1000",
				"RATE_LIMIT_MAX_REQUESTS": "0", "LOG_LEVEL": "DEBUG", "MAX_BODY_BYTES": "4096",
				"MAX_STAGES": "5", "MIN_IDLE_STAGES": "2", "SCALE_DOWN_STABILIZATION": "5m", "RECONCILE_INTERVAL": "1s",
			},
			check: func(t *testing.T, c Config) {
				if c.APIHost != "127.0.0.1" || c.APIPort != 8080 || c.StageCapacity != 100 || c.ScaleUpThreshold != 90 {
					t.Errorf("host, port, capacity, threshold = %q %d %d %d", c.APIHost, c.APIPort, c.StageCapacity, c.ScaleUpThreshold)
				}
				if c.HeartbeatTimeout != 30*time.Second || c.SeatWait != 500*time.Millisecond {
					t.Errorf("heartbeat, seat wait = %v %v", c.HeartbeatTimeout, c.SeatWait)
				}
				if c.PublisherTokenTTL != 2*time.Hour || c.ViewerTokenTTL != 30*time.Minute {
					t.Errorf("token TTLs = %v %v", c.PublisherTokenTTL, c.ViewerTokenTTL)
				}
				if c.RateLimitWindow != time.Second || c.RateLimitMaxRequests != 0 {
					t.Errorf("rate limit = %d per %v", c.RateLimitMaxRequests, c.RateLimitWindow)
				}
				if c.LogLevel != "debug" || c.MaxBodyBytes != 4096 {
					t.Errorf("log level, max body = %q %d", c.LogLevel, c.MaxBodyBytes)
				}
				if c.MaxStages != 5 || c.MinIdleStages != 2 || c.ScaleDownWindow != 5*time.Minute || c.ReconcileInterval != time.Second {
					t.Errorf("max stages %d, idle %d, stabilization %v, reconcile %v", c.MaxStages, c.MinIdleStages, c.ScaleDownWindow, c.ReconcileInterval)
				}
			},
		},
		{
			name: "flags",
			args: []string{"--api-port", "0", "--stage-capacity=10", "--scale-up-threshold=8", "--seat-wait=0s", "--log-level=warn"},
			check: func(t *testing.T, c Config) {
				if c.APIPort != 0 || c.StageCapacity != 10 || c.ScaleUpThreshold != 8 || c.SeatWait != 0 || c.LogLevel != "warn" {
					t.Errorf("got port %d capacity %d threshold %d seat wait %v log %q", c.APIPort, c.StageCapacity, c.ScaleUpThreshold, c.SeatWait, c.LogLevel)
				}
			},
		},
		{
			name: "flag wins over env",
			env:  map[string]string{"API_PORT": "8080", "STAGE_CAPACITY": "100", "SKIP_AUTH": "true"},
			args: []string{"--api-port=9090", "--stage-capacity", "60", "--skip-auth=false"},
			check: func(t *testing.T, c Config) {
				if c.APIPort != 9090 || c.StageCapacity != 60 || c.SkipAuth {
					t.Errorf("port %d capacity %d skip auth %v, want the flags' 9090 60 false", c.APIPort, c.StageCapacity, c.SkipAuth)
				}
			},
		},
		{
			name: "flag overrides a bad env value",
			env:  map[string]string{"API_PORT": "abc", "LOG_LEVEL": "loud"},
			args: []string{"--api-port=8080", "--log-level=error"},
			check: func(t *testing.T, c Config) {
				if c.APIPort != 8080 || c.LogLevel != "error" {
					t.Errorf("port %d log %q, want 8080 error", c.APIPort, c.LogLevel)
				}
			},
		},
		{
			name: "empty env value is the default",
			env:  map[string]string{"API_PORT": "", "STAGE_CAPACITY": ""},
			check: func(t *testing.T, c Config) {
				if c.APIPort != 3000 || c.StageCapacity != 50 {
					t.Errorf("port %d capacity %d, want the defaults", c.APIPort, c.StageCapacity)
				}
			},
		},
		{
			name: "aws mode with key and token key pair",
			env: map[string]string{"IVS_MODE": "aws", "API_SECRET_KEY": "s3cret", "EVENTS_SECRET": "e", "MASTER_STAGE_ARN": testStageArn,
				"IVS_TOKEN_KEY_ARN": testKeyArn, "IVS_TOKEN_PRIVATE_KEY_FILE": "/etc/stagefleet/key.pem"},
			check: func(t *testing.T, c Config) {
				if c.Mode() != ModeAWS || c.AuthDisabled() || c.MasterStageArn != testStageArn || c.TokenKeyArn != testKeyArn {
					t.Errorf("mode %s auth disabled %v master %q key %q", c.Mode(), c.AuthDisabled(), c.MasterStageArn, c.TokenKeyArn)
				}
			},
		},
		{
			name: "auto is aws with an endpoint",
			env:  map[string]string{"IVS_ENDPOINT": "http://127.0.0.1:4566", "API_SECRET_KEY": "k", "EVENTS_SECRET": "e"},
			check: func(t *testing.T, c Config) {
				if c.Mode() != ModeAWS || c.IVSEndpoint != "http://127.0.0.1:4566" {
					t.Errorf("mode %s endpoint %q", c.Mode(), c.IVSEndpoint)
				}
			},
		},
		{
			name: "auto is aws with a master stage",
			env:  map[string]string{"MASTER_STAGE_ARN": testStageArn, "SKIP_AUTH": "true"},
			check: func(t *testing.T, c Config) {
				if c.Mode() != ModeAWS || !c.AuthDisabled() {
					t.Errorf("mode %s auth disabled %v, want aws true", c.Mode(), c.AuthDisabled())
				}
			},
		},
		{
			name: "emulator mode with a key checks it",
			env:  map[string]string{"IVS_MODE": "emulator", "API_SECRET_KEY": "k"},
			check: func(t *testing.T, c Config) {
				if c.Mode() != ModeEmulator || c.AuthDisabled() {
					t.Errorf("mode %s auth disabled %v, want emulator false", c.Mode(), c.AuthDisabled())
				}
			},
		},
		{
			name: "skip auth in emulator mode",
			env:  map[string]string{"API_SECRET_KEY": "k", "SKIP_AUTH": "1"},
			check: func(t *testing.T, c Config) {
				if !c.AuthDisabled() {
					t.Error("SKIP_AUTH=1 left auth on")
				}
			},
		},
		{
			name: "embedded emulator flags are accepted",
			args: []string{"--emulator-stage-capacity=50", "--emulator-no-quotas", "--emulator-addr=127.0.0.1:0"},
			check: func(t *testing.T, c Config) {
				if c.EmulatorAddr != "127.0.0.1:0" {
					t.Errorf("EmulatorAddr = %q", c.EmulatorAddr)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, out, err := load(tt.args, tt.env)
			if err != nil {
				t.Fatalf("Load(%q, %v): %v\n%s", tt.args, tt.env, err, out)
			}
			tt.check(t, c)
		})
	}
}

func TestLoadRejects(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		args    []string
		mention string // the error must name this
	}{
		{"port not a number", map[string]string{"API_PORT": "abc"}, nil, "API_PORT"},
		{"port too large", map[string]string{"API_PORT": "70000"}, nil, "API_PORT"},
		{"capacity zero", map[string]string{"STAGE_CAPACITY": "0"}, nil, "STAGE_CAPACITY"},
		{"seat wait not a duration", map[string]string{"SEAT_WAIT": "fast"}, nil, "SEAT_WAIT"},
		{"seat wait too long", map[string]string{"SEAT_WAIT": "2h"}, nil, "SEAT_WAIT"},
		{"heartbeat without unit", map[string]string{"HEARTBEAT_TIMEOUT": "60"}, nil, "HEARTBEAT_TIMEOUT"},
		{"log level", map[string]string{"LOG_LEVEL": "loud"}, nil, "LOG_LEVEL"},
		{"mode", map[string]string{"IVS_MODE": "x"}, nil, "IVS_MODE"},
		{"region", map[string]string{"AWS_REGION": "Mars"}, nil, "AWS_REGION"},
		{"master stage", map[string]string{"MASTER_STAGE_ARN": "nope"}, nil, "MASTER_STAGE_ARN"},
		{"token key arn", map[string]string{"IVS_TOKEN_KEY_ARN": "nope", "IVS_TOKEN_PRIVATE_KEY_FILE": "k.pem"}, nil, "IVS_TOKEN_KEY_ARN"},
		{"endpoint scheme", map[string]string{"IVS_ENDPOINT": "ftp://x"}, nil, "IVS_ENDPOINT"},
		{"endpoint without host", map[string]string{"IVS_ENDPOINT": "http://"}, nil, "IVS_ENDPOINT"},
		{"emulator addr", map[string]string{"EMULATOR_ADDR": "4566"}, nil, "EMULATOR_ADDR"},
		{"skip auth", map[string]string{"SKIP_AUTH": "maybe"}, nil, "SKIP_AUTH"},
		{"reconnect window", map[string]string{"RECONNECT_WINDOW": "10m"}, nil, "RECONNECT_WINDOW"},
		{"viewer ttl", map[string]string{"VIEWER_TOKEN_TTL": "1s"}, nil, "VIEWER_TOKEN_TTL"},
		{"rate limit window", map[string]string{"RATE_LIMIT_WINDOW_MS": "0"}, nil, "RATE_LIMIT_WINDOW_MS"},
		{"rate limit max", map[string]string{"RATE_LIMIT_MAX_REQUESTS": "-1"}, nil, "RATE_LIMIT_MAX_REQUESTS"},
		{"max body", map[string]string{"MAX_BODY_BYTES": "10"}, nil, "MAX_BODY_BYTES"},
		{"shutdown", map[string]string{"SHUTDOWN_TIMEOUT": "soon"}, nil, "SHUTDOWN_TIMEOUT"},
		{"metrics addr without port", map[string]string{"METRICS_ADDR": "127.0.0.1"}, nil, "METRICS_ADDR"},
		{"metrics max broadcasts", map[string]string{"METRICS_MAX_BROADCASTS": "0"}, nil, "METRICS_MAX_BROADCASTS"},
		{"enable monitoring", map[string]string{"ENABLE_MONITORING": "yes please"}, nil, "ENABLE_MONITORING"},
		{"metrics interval", map[string]string{"METRICS_INTERVAL": "10ms"}, nil, "METRICS_INTERVAL"},
		{"cloudwatch namespace of AWS", map[string]string{"CLOUDWATCH_NAMESPACE": "AWS/IVS"}, nil, "CLOUDWATCH_NAMESPACE"},
		{"threshold above capacity", map[string]string{"STAGE_CAPACITY": "40"}, nil, "SCALE_UP_THRESHOLD"},
		{"threshold above capacity by flag", nil, []string{"--scale-up-threshold=51"}, "SCALE_UP_THRESHOLD"},
		{"max stages zero", map[string]string{"MAX_STAGES": "0"}, nil, "MAX_STAGES"},
		{"warm pool fills every stage", map[string]string{"MAX_STAGES": "3", "MIN_IDLE_STAGES": "3"}, nil, "MIN_IDLE_STAGES"},
		{"stabilization", map[string]string{"SCALE_DOWN_STABILIZATION": "-1s"}, nil, "SCALE_DOWN_STABILIZATION"},
		{"reconcile interval", map[string]string{"RECONCILE_INTERVAL": "1ms"}, nil, "RECONCILE_INTERVAL"},
		{"store", map[string]string{"STORE": "postgres"}, nil, "STORE"},
		{"redis store without redis", map[string]string{"STORE": "redis"}, nil, "REDIS_URL"},
		{"redis url scheme", map[string]string{"REDIS_URL": "http://127.0.0.1:6379"}, nil, "REDIS_URL"},
		{"redis url without host", map[string]string{"REDIS_URL": "redis://"}, nil, "REDIS_URL"},
		{"redis port", map[string]string{"REDIS_HOST": "r", "REDIS_PORT": "0"}, nil, "REDIS_PORT"},
		{"redis tls", map[string]string{"REDIS_TLS_ENABLED": "yes please"}, nil, "REDIS_TLS_ENABLED"},
		{"redis cluster", map[string]string{"REDIS_CLUSTER": "2"}, nil, "REDIS_CLUSTER"},
		{"redis key prefix with a brace", map[string]string{"REDIS_KEY_PREFIX": "a{b"}, nil, "REDIS_KEY_PREFIX"},
		{"lease ttl", map[string]string{"LEASE_TTL": "10ms"}, nil, "LEASE_TTL"},
		{"aws mode without key", map[string]string{"IVS_MODE": "aws"}, nil, "API_SECRET_KEY"},
		{"aws mode without events secret", map[string]string{"IVS_MODE": "aws", "API_SECRET_KEY": "k"}, nil, "EVENTS_SECRET"},
		{"emulator on every interface", map[string]string{"EMULATOR_ADDR": "0.0.0.0:4566"}, nil, "EMULATOR_ALLOW_REMOTE"},
		{"emulator on an empty host", map[string]string{"EMULATOR_ADDR": ":4566"}, nil, "EMULATOR_ALLOW_REMOTE"},
		{"emulator on a LAN address", map[string]string{"EMULATOR_ADDR": "192.168.1.5:4566"}, nil, "EMULATOR_ALLOW_REMOTE"},
		{"write timeout below seat wait", map[string]string{"SEAT_WAIT": "20s", "HTTP_WRITE_TIMEOUT": "20s"}, nil, "HTTP_WRITE_TIMEOUT"},
		{"deployment id", map[string]string{"DEPLOYMENT_ID": "prod/eu"}, nil, "DEPLOYMENT_ID"},
		{"trusted proxies", map[string]string{"TRUSTED_PROXIES": "10.0.0.0/8,nope"}, nil, "TRUSTED_PROXIES"},
		{"max broadcasts", map[string]string{"MAX_BROADCASTS": "0"}, nil, "MAX_BROADCASTS"},
		{"read timeout", map[string]string{"HTTP_READ_TIMEOUT": "0s"}, nil, "HTTP_READ_TIMEOUT"},
		{"max connections", map[string]string{"HTTP_MAX_CONNECTIONS": "0"}, nil, "HTTP_MAX_CONNECTIONS"},
		{"endpoint without key", map[string]string{"IVS_ENDPOINT": "http://127.0.0.1:4566"}, nil, "API_SECRET_KEY"},
		{"aws mode with skip auth false", map[string]string{"IVS_MODE": "aws", "SKIP_AUTH": "false"}, nil, "API_SECRET_KEY"},
		{"only the key arn", map[string]string{"IVS_TOKEN_KEY_ARN": testKeyArn, "API_SECRET_KEY": "k"}, nil, "IVS_TOKEN_PRIVATE_KEY_FILE"},
		{"only the key file", map[string]string{"IVS_TOKEN_PRIVATE_KEY_FILE": "key.pem"}, nil, "IVS_TOKEN_KEY_ARN"},
		{"endpoint in emulator mode", map[string]string{"IVS_MODE": "emulator", "IVS_ENDPOINT": "http://127.0.0.1:4566"}, nil, "IVS_ENDPOINT"},
		{"master stage in emulator mode", map[string]string{"IVS_MODE": "emulator", "MASTER_STAGE_ARN": testStageArn}, nil, "MASTER_STAGE_ARN"},
		{"token key in emulator mode", map[string]string{"IVS_MODE": "emulator", "IVS_TOKEN_KEY_ARN": testKeyArn, "IVS_TOKEN_PRIVATE_KEY_FILE": "k.pem"}, nil, "IVS_TOKEN_KEY_ARN"},
		{"master stage in another region", map[string]string{"MASTER_STAGE_ARN": testStageArn, "AWS_REGION": "eu-west-1", "API_SECRET_KEY": "k", "EVENTS_SECRET": "e"}, nil, "MASTER_STAGE_ARN"},
		{"bad flag value", nil, []string{"--api-port=abc"}, "api-port"},
		{"bad flag despite good env", map[string]string{"STAGE_CAPACITY": "10", "SCALE_UP_THRESHOLD": "5"}, []string{"--stage-capacity=0"}, "stage-capacity"},
		{"unknown flag", nil, []string{"--nope"}, "nope"},
		{"stray argument", nil, []string{"extra"}, "extra"},
		{"emulator region flag", nil, []string{"--emulator-region=eu-west-1"}, "AWS_REGION"},
		{"emulator events secret flag", nil, []string{"--emulator-events-secret=x"}, "EVENTS_SECRET"},
		{"bad emulator flag", nil, []string{"--emulator-quota=Nope=1"}, "Nope"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _, err := load(tt.args, tt.env)
			if err == nil {
				t.Fatalf("Load(%q, %v) = %+v, want an error naming %s", tt.args, tt.env, c, tt.mention)
			}
			if !strings.Contains(err.Error(), tt.mention) {
				t.Errorf("Load(%q, %v) = %q, want it to name %s", tt.args, tt.env, err, tt.mention)
			}
			if !reflect.ValueOf(c).IsZero() {
				t.Errorf("Load returned a config with its error: %+v", c)
			}
		})
	}
}

func TestStoreKind(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want string
	}{
		{"default", nil, StoreMemory},
		{"redis url", map[string]string{"REDIS_URL": "redis://127.0.0.1:6379/0"}, StoreRedis},
		{"tls redis url", map[string]string{"REDIS_URL": "rediss://:pw@redis.internal:6380"}, StoreRedis},
		{"previous server's host", map[string]string{"REDIS_HOST": "redis.internal"}, StoreRedis},
		{"memory wins when asked", map[string]string{"STORE": "memory", "REDIS_URL": "redis://127.0.0.1:6379"}, StoreMemory},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Load(nil, func(k string) string { return tc.env[k] }, io.Discard, nil)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if got := c.StoreKind(); got != tc.want {
				t.Errorf("StoreKind() = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestAWSModeSkipAuth(t *testing.T) {
	for _, kv := range []map[string]string{
		{"IVS_MODE": "aws", "SKIP_AUTH": "true"},
		{"IVS_ENDPOINT": "http://127.0.0.1:4566", "SKIP_AUTH": "true"},
	} {
		c, _, err := load(nil, kv)
		if err != nil {
			t.Errorf("Load(%v): %v", kv, err)
			continue
		}
		if c.Mode() != ModeAWS || !c.AuthDisabled() {
			t.Errorf("Load(%v): mode %s, auth disabled %v; want aws, true", kv, c.Mode(), c.AuthDisabled())
		}
	}
	// The flag counts as setting it explicitly.
	if _, _, err := load([]string{"--skip-auth=true"}, map[string]string{"IVS_MODE": "aws"}); err != nil {
		t.Errorf("IVS_MODE=aws --skip-auth=true: %v", err)
	}
}

// TestSafeDefaults: a server reachable from the network needs a key, and an
// API that needs a key needs an events secret too.
func TestSafeDefaults(t *testing.T) {
	tests := []struct {
		name       string
		env        map[string]string
		listenHost string
	}{
		{"no key: loopback", nil, "127.0.0.1"},
		{"key: every interface", map[string]string{"API_SECRET_KEY": "k"}, ""},
		{"no key, host set explicitly", map[string]string{"API_HOST": "0.0.0.0"}, "0.0.0.0"},
		{"aws with skip auth: loopback", map[string]string{"IVS_MODE": "aws", "SKIP_AUTH": "true"}, "127.0.0.1"},
		{"aws with key and events secret", map[string]string{"IVS_MODE": "aws", "API_SECRET_KEY": "k", "EVENTS_SECRET": "e"}, ""},
		{"aws with events auth skipped explicitly", map[string]string{"IVS_MODE": "aws", "API_SECRET_KEY": "k", "SKIP_EVENTS_AUTH": "true"}, ""},
		{"remote emulator allowed explicitly", map[string]string{"EMULATOR_ADDR": "0.0.0.0:4566", "EMULATOR_ALLOW_REMOTE": "true"}, "127.0.0.1"},
		{"emulator on localhost", map[string]string{"EMULATOR_ADDR": "localhost:4566"}, "127.0.0.1"},
		{"emulator on ::1", map[string]string{"EMULATOR_ADDR": "[::1]:4566"}, "127.0.0.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _, err := load(nil, tt.env)
			if err != nil {
				t.Fatalf("Load(%v): %v", tt.env, err)
			}
			if got := c.ListenHost(); got != tt.listenHost {
				t.Errorf("ListenHost() = %q, want %q", got, tt.listenHost)
			}
		})
	}
	c, _, err := load(nil, map[string]string{"TRUSTED_PROXIES": " 10.0.0.0/8, 192.168.1.7 ,::1"})
	if err != nil {
		t.Fatalf("TRUSTED_PROXIES: %v", err)
	}
	want := []string{"10.0.0.0/8", "192.168.1.7/32", "::1/128"}
	if len(c.TrustedProxies) != len(want) {
		t.Fatalf("TrustedProxies = %v, want %v", c.TrustedProxies, want)
	}
	for i, p := range c.TrustedProxies {
		if p.String() != want[i] {
			t.Errorf("TrustedProxies[%d] = %s, want %s", i, p, want[i])
		}
	}
}

func TestHelp(t *testing.T) {
	for _, arg := range []string{"--help", "-h"} {
		_, out, err := load([]string{arg}, nil)
		if !errors.Is(err, flag.ErrHelp) {
			t.Fatalf("Load(%s) = %v, want flag.ErrHelp", arg, err)
		}
		for _, s := range settings {
			if !strings.Contains(out, s.env) {
				t.Errorf("%s output does not list %s", arg, s.env)
			}
			if !strings.Contains(out, "--"+s.flagName()) {
				t.Errorf("%s output does not list --%s", arg, s.flagName())
			}
		}
		for _, f := range []string{"--emulator-stage-capacity", "--emulator-quota", "--emulator-events-reorder"} {
			if !strings.Contains(out, f) {
				t.Errorf("%s output does not list the embedded emulator's %s", arg, f)
			}
		}
		for _, f := range []string{"--emulator-region", "--emulator-events-secret"} {
			if strings.Contains(out, f) {
				t.Errorf("%s output lists %s, which serve does not accept", arg, f)
			}
		}
	}
	// Help works even with a bad environment, so that one can read how to fix it.
	if _, _, err := load([]string{"--help"}, map[string]string{"API_PORT": "abc"}); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("--help with API_PORT=abc = %v, want flag.ErrHelp", err)
	}
}

func TestSettingsAreDocumented(t *testing.T) {
	seen := map[string]bool{}
	for _, s := range settings {
		if seen[s.env] {
			t.Errorf("%s is defined twice", s.env)
		}
		seen[s.env] = true
		if s.help == "" {
			t.Errorf("%s has no help", s.env)
		}
		// Every default must itself load.
		var c Config
		if err := s.set(&c, s.def); err != nil {
			t.Errorf("%s default %q does not parse: %v", s.env, s.def, err)
		}
	}
}

func FuzzLoad(f *testing.F) {
	f.Add("3000", "50", "45", "2s", "info", "auto", "")
	f.Add("abc", "0", "51", "fast", "loud", "x", "ftp://x")
	f.Add("-1", "25000", "1", "0s", "DEBUG", "aws", "http://127.0.0.1:4566")
	f.Add(" 80 ", "9999999999999999999999", "", "-1s", "", "emulator", "http://[::1")
	f.Fuzz(func(t *testing.T, port, capacity, threshold, seatWait, logLevel, mode, endpoint string) {
		kv := map[string]string{
			"API_PORT": port, "STAGE_CAPACITY": capacity, "SCALE_UP_THRESHOLD": threshold,
			"SEAT_WAIT": seatWait, "LOG_LEVEL": logLevel, "IVS_MODE": mode, "IVS_ENDPOINT": endpoint,
		}
		c, err := Load(nil, env(kv), io.Discard, nil)
		if err != nil {
			if !reflect.ValueOf(c).IsZero() {
				t.Errorf("Load returned a config with its error %v", err)
			}
			return
		}
		// What loads holds the invariants the rest of stagefleet relies on.
		if c.StageCapacity < 1 || c.ScaleUpThreshold < 1 || c.ScaleUpThreshold > c.StageCapacity {
			t.Errorf("capacity %d threshold %d", c.StageCapacity, c.ScaleUpThreshold)
		}
		if c.APIPort < 0 || c.APIPort > 65535 || c.SeatWait < 0 {
			t.Errorf("port %d seat wait %v", c.APIPort, c.SeatWait)
		}
		if m := c.Mode(); m != ModeEmulator && m != ModeAWS {
			t.Errorf("Mode() = %q", m)
		}
		if c.Mode() == ModeAWS && c.APISecretKey == "" && !c.SkipAuth {
			t.Error("aws mode loaded without API_SECRET_KEY or SKIP_AUTH")
		}
	})
}

// docs/configuration.md lists every setting and every embedded emulator flag.
func TestConfigurationDocumented(t *testing.T) {
	b, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for _, s := range settings {
		if !strings.Contains(doc, "`"+s.env+"`") || !strings.Contains(doc, "`--"+s.flagName()+"`") {
			t.Errorf("docs/configuration.md does not list %s (--%s)", s.env, s.flagName())
		}
	}
	fs := flag.NewFlagSet("", flag.ContinueOnError)
	emu := emulator.DefaultConfig()
	emu.RegisterFlags(fs, "emulator-")
	fs.VisitAll(func(f *flag.Flag) {
		if _, owned := serveOwned[f.Name]; !owned && !strings.Contains(doc, "`--"+f.Name) {
			t.Errorf("docs/configuration.md does not list --%s", f.Name)
		}
	})
}

// METRICS_ADDR serves /metrics without a key: an empty host is loopback,
// a named one is kept.
func TestMetricsListenAddr(t *testing.T) {
	for addr, want := range map[string]string{
		":9464":          "127.0.0.1:9464",
		"0.0.0.0:9464":   "0.0.0.0:9464",
		"10.0.0.5:9464":  "10.0.0.5:9464",
		"[::1]:9464":     "[::1]:9464",
		"localhost:9464": "localhost:9464",
	} {
		c, _, err := load(nil, map[string]string{"METRICS_ADDR": addr, "ENABLE_MONITORING": "true", "METRICS_INTERVAL": "30s", "CLOUDWATCH_NAMESPACE": "IVS/Staging"})
		if err != nil {
			t.Fatalf("METRICS_ADDR=%s: %v", addr, err)
		}
		if got := c.MetricsListenAddr(); got != want {
			t.Errorf("METRICS_ADDR=%s: MetricsListenAddr() = %s, want %s", addr, got, want)
		}
		if !c.EnableMonitoring || c.MetricsInterval != 30*time.Second || c.CloudWatchNamespace != "IVS/Staging" {
			t.Errorf("monitoring = %v %v %q", c.EnableMonitoring, c.MetricsInterval, c.CloudWatchNamespace)
		}
	}
}

// TestSecretsNotEchoed: a bad credential-bearing value is refused with an
// error naming the setting but not quoting the value, from the
// environment or a flag, on stderr or in the error.
func TestSecretsNotEchoed(t *testing.T) {
	const secret = "TopSecret9"
	tests := []struct {
		name    string
		env     map[string]string
		args    []string
		mention string
	}{
		{"database url env", map[string]string{"DATABASE_URL": "mysql://user:" + secret + "@db:5432/x"}, nil, "DATABASE_URL"},
		{"database url flag", nil, []string{"--database-url=mysql://user:" + secret + "@db/x"}, "database-url"},
		{"redis url env", map[string]string{"REDIS_URL": "http://:" + secret + "@h"}, nil, "REDIS_URL"},
		{"redis url flag", nil, []string{"--redis-url=http://:" + secret + "@h"}, "redis-url"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, out, err := load(tt.args, tt.env)
			if err == nil {
				t.Fatalf("Load(%q, %v) took a bad value", tt.args, tt.env)
			}
			if !strings.Contains(err.Error(), tt.mention) {
				t.Errorf("error %q does not name %s", err, tt.mention)
			}
			if strings.Contains(err.Error(), secret) || strings.Contains(out, secret) {
				t.Errorf("the secret was shown: error %q, output %q", err, out)
			}
		})
	}
}
