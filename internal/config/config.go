// Package config reads stagefleet serve's configuration from flags and the
// environment. The previous server's variable names are kept; every setting
// is also a flag (the variable's name in lower case with dashes), and a flag
// wins over the environment.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/stagefleet/stagefleet/internal/arn"
	"github.com/stagefleet/stagefleet/internal/emulator"
	redisstore "github.com/stagefleet/stagefleet/internal/store/redis"
)

// IVS modes.
const (
	ModeAuto     = "auto"
	ModeEmulator = "emulator"
	ModeAWS      = "aws"
)

// Config is everything stagefleet serve is configured with.
type Config struct {
	APIHost string
	APIPort int

	IVSMode     string
	IVSEndpoint string
	AWSRegion   string
	// EmulatorAddr is where the embedded emulator listens.
	EmulatorAddr string

	MasterStageArn       string
	TokenKeyArn          string
	TokenPrivateKeyFile  string
	PublisherTokenTTL    time.Duration
	ViewerTokenTTL       time.Duration
	MediaServerTokenTTL  time.Duration
	ReconnectWindow      time.Duration
	StageCapacity        int
	ScaleUpThreshold     int
	MaxStages            int
	MinIdleStages        int
	ScaleDownWindow      time.Duration
	ReconcileInterval    time.Duration
	ControllerWorkers    int
	HeartbeatTimeout     time.Duration
	SeatWait             time.Duration
	APISecretKey         string
	SkipAuth             bool
	InternalSecret       string
	EventsSecret         string
	RateLimitWindow      time.Duration
	RateLimitMaxRequests int
	MaxBodyBytes         int64
	ShutdownTimeout      time.Duration
	LogLevel             string
	Environment          string

	History          bool
	DataDir          string
	DatabaseURL      string
	DBHost           string
	DBPort           int
	DBName           string
	DBUser           string
	DBPassword       string
	DBPoolMax        int
	DBPoolMin        int
	DBSSL            bool
	HistoryBuffer    int
	SnapshotInterval time.Duration
	HistoryRetention time.Duration
	CORSOrigins      []string
	// WSMaxClients bounds the WebSocket connections of GET /ws; WSStatsInterval
	// is how often its stats channel is pushed.
	WSMaxClients    int
	WSStatsInterval time.Duration
	// Version is the binary's, set by the command (not a setting).
	Version string

	// Safe defaults: what bounds a hostile or broken client.
	SkipEventsAuth       bool
	EmulatorAllowRemote  bool
	EventMaxSkew         time.Duration
	DeploymentID         string
	MaxBroadcasts        int
	StageQuota           int
	BroadcastIdleTimeout time.Duration
	SeatKeySecret        string
	HTTPReadTimeout      time.Duration
	HTTPWriteTimeout     time.Duration
	HTTPIdleTimeout      time.Duration
	HTTPMaxHeaderBytes   int
	HTTPMaxConnections   int
	TrustedProxies       []netip.Prefix
	AccessLogPerSecond   int

	Store          string
	RedisURL       string
	RedisHost      string
	RedisPort      int
	RedisPassword  string
	RedisTLS       bool
	RedisCluster   bool
	RedisKeyPrefix string
	// RedisSeatGroups is how many seat groups a new broadcast gets.
	RedisSeatGroups int
	LeaseTTL        time.Duration
	InstanceID      string

	// MetricsAddr, when set, serves /metrics there (without x-api-key)
	// instead of on the API's address.
	MetricsAddr          string
	MetricsMaxBroadcasts int
	EnableMonitoring     bool
	MetricsInterval      time.Duration
	CloudWatchNamespace  string
}

// Stores.
const (
	StoreAuto   = "auto"
	StoreMemory = "memory"
	StoreRedis  = "redis"
)

// setting is one configuration item: its variable, default and parser.
type setting struct {
	env  string
	def  string
	help string
	set  func(c *Config, v string) error
}

// secretSettings hold credentials: an error about one never shows its
// value, which would land in logs.
var secretSettings = map[string]bool{
	"API_SECRET_KEY": true, "INTERNAL_SECRET": true, "EVENTS_SECRET": true, "SEAT_KEY_SECRET": true,
	"REDIS_URL": true, "REDIS_PASSWORD": true, "DATABASE_URL": true, "DB_PASSWORD": true,
}

// shown is v as an error may quote it: a secret's value is hidden.
func (s setting) shown(v string) string {
	if secretSettings[s.env] {
		return "(value hidden)"
	}
	return strconv.Quote(v)
}

func (s setting) flagName() string {
	return strings.ReplaceAll(strings.ToLower(s.env), "_", "-")
}

var settings = []setting{
	{"API_HOST", "", "address to listen on (empty: every interface when API_SECRET_KEY is set, else loopback only)", func(c *Config, v string) error { c.APIHost = v; return nil }},
	{"API_PORT", "3000", "port of the HTTP API (0: any free port)", func(c *Config, v string) error { return intRange(&c.APIPort, v, 0, 65535) }},
	{"IVS_MODE", ModeAuto, "emulator (embedded IVS emulator), aws, or auto: aws when IVS_ENDPOINT, MASTER_STAGE_ARN or IVS_TOKEN_KEY_ARN is set", func(c *Config, v string) error {
		return oneOf(&c.IVSMode, v, ModeAuto, ModeEmulator, ModeAWS)
	}},
	{"IVS_ENDPOINT", "", "IVS real-time endpoint to use instead of AWS's (e.g. a standalone stagefleet emulator)", func(c *Config, v string) error {
		if v != "" {
			if u, err := url.Parse(v); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return errors.New("must be an http(s) URL such as http://127.0.0.1:4566")
			}
		}
		c.IVSEndpoint = v
		return nil
	}},
	{"AWS_REGION", "us-east-1", "AWS region of the IVS stages", func(c *Config, v string) error {
		return match(&c.AWSRegion, v, regionPattern, "an AWS region such as us-east-1")
	}},
	{"EMULATOR_ADDR", "127.0.0.1:4566", "where the embedded emulator listens (emulator mode); a non-loopback address needs EMULATOR_ALLOW_REMOTE=true", func(c *Config, v string) error {
		if _, _, err := net.SplitHostPort(v); err != nil {
			return errors.New("must be host:port")
		}
		c.EmulatorAddr = v
		return nil
	}},
	{"EMULATOR_ALLOW_REMOTE", "false", "true: let the embedded emulator listen on a non-loopback EMULATOR_ADDR (it takes any credentials, and its control API resets everything)", func(c *Config, v string) error {
		return boolean(&c.EmulatorAllowRemote, v)
	}},
	{"MASTER_STAGE_ARN", "", "existing stage to use as the default broadcast's origin (else it is created)", func(c *Config, v string) error {
		if v == "" {
			c.MasterStageArn = ""
			return nil
		}
		return match(&c.MasterStageArn, v, arn.StagePattern, "a stage ARN such as arn:aws:ivs:us-east-1:123456789012:stage/AbCdEf123456")
	}},
	{"IVS_TOKEN_KEY_ARN", "", "ARN of the public key registered with ImportPublicKey for self-signed tokens (aws mode)", func(c *Config, v string) error {
		if v == "" {
			c.TokenKeyArn = ""
			return nil
		}
		return match(&c.TokenKeyArn, v, arn.PublicKeyPattern, "a public key ARN such as arn:aws:ivs:us-east-1:123456789012:public-key/AbCdEf123456")
	}},
	{"IVS_TOKEN_PRIVATE_KEY_FILE", "", "PEM file of the matching ECDSA P-384 private key (aws mode)", func(c *Config, v string) error { c.TokenPrivateKeyFile = v; return nil }},
	{"PUBLISHER_TOKEN_TTL", "4h", "lifetime of host tokens", func(c *Config, v string) error {
		return duration(&c.PublisherTokenTTL, v, time.Minute, 14*24*time.Hour)
	}},
	{"VIEWER_TOKEN_TTL", "1h", "lifetime of viewer tokens", func(c *Config, v string) error { return duration(&c.ViewerTokenTTL, v, time.Minute, 14*24*time.Hour) }},
	{"MEDIASERVER_TOKEN_TTL", "4h", "lifetime of media server tokens", func(c *Config, v string) error {
		return duration(&c.MediaServerTokenTTL, v, time.Minute, 14*24*time.Hour)
	}},
	{"RECONNECT_WINDOW", "30s", "how long a replication survives its host reconnecting (0-300s)", func(c *Config, v string) error { return duration(&c.ReconnectWindow, v, 0, 300*time.Second) }},
	{"STAGE_CAPACITY", "50", "most viewers seated on one stage", func(c *Config, v string) error { return intRange(&c.StageCapacity, v, 1, 25000) }},
	{"SCALE_UP_THRESHOLD", "45", "seats at which a stage calls for more room: the controller keeps STAGE_CAPACITY - SCALE_UP_THRESHOLD seats free per broadcast (more when viewers join fast)", func(c *Config, v string) error { return intRange(&c.ScaleUpThreshold, v, 1, 25000) }},
	{"MAX_STAGES", "20", "most stages (origin and replicas) of one broadcast; beyond: 503 STAGE_LIMIT_REACHED", func(c *Config, v string) error { return intRange(&c.MaxStages, v, 1, 1000) }},
	{"MIN_IDLE_STAGES", "0", "warm pool: empty replica stages kept ready from the first host token on, before the host publishes", func(c *Config, v string) error { return intRange(&c.MinIdleStages, v, 0, 100) }},
	{"SCALE_DOWN_STABILIZATION", "60s", "how long a replica stage stays empty before it is removed", func(c *Config, v string) error {
		return duration(&c.ScaleDownWindow, v, 0, 24*time.Hour)
	}},
	{"RECONCILE_INTERVAL", "10s", "how often the store is compared with IVS and repaired", func(c *Config, v string) error {
		return duration(&c.ReconcileInterval, v, 100*time.Millisecond, time.Hour)
	}},
	{"CONTROLLER_WORKERS", "4", "broadcasts the controller reconciles at once (one broadcast is never reconciled twice at once)", func(c *Config, v string) error {
		return intRange(&c.ControllerWorkers, v, 1, 256)
	}},
	{"HEARTBEAT_TIMEOUT", "60s", "a seat is freed when no heartbeat renews it for this long", func(c *Config, v string) error { return duration(&c.HeartbeatTimeout, v, time.Second, 24*time.Hour) }},
	{"SEAT_WAIT", "2s", "how long a viewer waits for a seat before 503 STAGE_FULL", func(c *Config, v string) error { return duration(&c.SeatWait, v, 0, time.Minute) }},
	{"API_SECRET_KEY", "", "value the x-api-key header must carry", func(c *Config, v string) error { c.APISecretKey = v; return nil }},
	{"SKIP_AUTH", "", "true: no x-api-key check (development only)", func(c *Config, v string) error {
		if v == "" {
			return nil
		}
		return boolean(&c.SkipAuth, v)
	}},
	{"INTERNAL_SECRET", "", "value the x-internal-secret header must carry for media server tokens", func(c *Config, v string) error { c.InternalSecret = v; return nil }},
	{"EVENTS_SECRET", "", "value the x-stagefleet-events-secret header must carry on POST /api/events/ivs (emulator mode: made at start when unset)", func(c *Config, v string) error { c.EventsSecret = v; return nil }},
	{"SKIP_EVENTS_AUTH", "", "true: take IVS events without EVENTS_SECRET in aws mode (only behind a network that nothing else reaches)", func(c *Config, v string) error {
		if v == "" {
			return nil
		}
		return boolean(&c.SkipEventsAuth, v)
	}},
	{"EVENT_MAX_SKEW", "30s", "an IVS event dated further ahead of this server's clock counts as received now", func(c *Config, v string) error {
		return duration(&c.EventMaxSkew, v, 0, time.Hour)
	}},
	{"DEPLOYMENT_ID", "default", "tag value that tells this deployment's stages from another's in the same AWS account (e.g. staging, production)", func(c *Config, v string) error {
		return match(&c.DeploymentID, v, deploymentPattern, "1 to 64 letters, digits, '.', '_' or '-'")
	}},
	{"MAX_BROADCASTS", "20", "most broadcasts at once; a host token for one more: 503 STAGE_LIMIT_REACHED naming this limit", func(c *Config, v string) error { return intRange(&c.MaxBroadcasts, v, 1, 10000) }},
	{"STAGE_QUOTA", "100", "stages this deployment may hold in the account and region, all broadcasts together (IVS's default quota is 100)", func(c *Config, v string) error {
		return intRange(&c.StageQuota, v, 1, 100000)
	}},
	{"BROADCAST_IDLE_TIMEOUT", "1h", "a broadcast with no host publishing and no viewer seated for this long ends (0: never)", func(c *Config, v string) error {
		return duration(&c.BroadcastIdleTimeout, v, 0, 30*24*time.Hour)
	}},
	{"SEAT_KEY_SECRET", "", "key of the seat keys that prove a seat to a heartbeat after the store lost it; instances sharing a store need the same (empty: derived from API_SECRET_KEY, else made at start)", func(c *Config, v string) error {
		c.SeatKeySecret = v
		return nil
	}},
	{"HTTP_READ_TIMEOUT", "15s", "longest time to read a request, body included", func(c *Config, v string) error {
		return duration(&c.HTTPReadTimeout, v, time.Second, 10*time.Minute)
	}},
	{"HTTP_WRITE_TIMEOUT", "", "longest time to answer a request; must exceed SEAT_WAIT (empty: 30s, or SEAT_WAIT + 10s if longer)", func(c *Config, v string) error {
		if v == "" {
			c.HTTPWriteTimeout = 0
			return nil
		}
		return duration(&c.HTTPWriteTimeout, v, time.Second, 10*time.Minute)
	}},
	{"HTTP_IDLE_TIMEOUT", "60s", "how long an idle keep-alive connection is kept open", func(c *Config, v string) error {
		return duration(&c.HTTPIdleTimeout, v, time.Second, time.Hour)
	}},
	{"HTTP_MAX_HEADER_BYTES", "16384", "largest request header accepted", func(c *Config, v string) error {
		return intRange(&c.HTTPMaxHeaderBytes, v, 1024, 1<<20)
	}},
	{"HTTP_MAX_CONNECTIONS", "4096", "most connections open at once; more wait to be accepted", func(c *Config, v string) error {
		return intRange(&c.HTTPMaxConnections, v, 1, 1<<20)
	}},
	{"TRUSTED_PROXIES", "", "comma-separated addresses or CIDRs of proxies whose X-Forwarded-For names the client (for the rate limit and logs)", func(c *Config, v string) error {
		ps, err := prefixes(v)
		if err != nil {
			return err
		}
		c.TrustedProxies = ps
		return nil
	}},
	{"ACCESS_LOG_PER_SECOND", "50", "most access-log lines per second for 2xx and 4xx answers, at debug level (0: none); 5xx are always logged", func(c *Config, v string) error {
		return intRange(&c.AccessLogPerSecond, v, 0, 1<<20)
	}},
	{"RATE_LIMIT_WINDOW_MS", "60000", "rate limit window in milliseconds", func(c *Config, v string) error {
		var ms int
		if err := intRange(&ms, v, 1, 24*3600*1000); err != nil {
			return err
		}
		c.RateLimitWindow = time.Duration(ms) * time.Millisecond
		return nil
	}},
	{"RATE_LIMIT_MAX_REQUESTS", "1000", "requests one client may make per window (0: no limit)", func(c *Config, v string) error { return intRange(&c.RateLimitMaxRequests, v, 0, 1<<30) }},
	{"MAX_BODY_BYTES", "65536", "largest request body accepted", func(c *Config, v string) error {
		var n int
		if err := intRange(&n, v, 1024, 16<<20); err != nil {
			return err
		}
		c.MaxBodyBytes = int64(n)
		return nil
	}},
	{"SHUTDOWN_TIMEOUT", "10s", "how long SIGTERM waits for requests in flight", func(c *Config, v string) error { return duration(&c.ShutdownTimeout, v, 0, 5*time.Minute) }},
	{"STORE", StoreAuto, "memory (one instance), redis (shared by every instance), or auto: redis when REDIS_URL or REDIS_HOST is set", func(c *Config, v string) error {
		return oneOf(&c.Store, v, StoreAuto, StoreMemory, StoreRedis)
	}},
	{"REDIS_URL", "", "Redis to keep state in, as redis://[:password@]host:port[/db] or rediss:// for TLS; wins over REDIS_HOST", func(c *Config, v string) error {
		if v != "" {
			if u, err := url.Parse(v); err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") || u.Host == "" {
				return errors.New("must be a redis:// or rediss:// URL such as redis://127.0.0.1:6379/0")
			}
		}
		c.RedisURL = v
		return nil
	}},
	{"REDIS_HOST", "", "Redis host (the previous server's setting; REDIS_URL is preferred)", func(c *Config, v string) error { c.RedisHost = v; return nil }},
	{"REDIS_PORT", "6379", "Redis port, with REDIS_HOST", func(c *Config, v string) error { return intRange(&c.RedisPort, v, 1, 65535) }},
	{"REDIS_PASSWORD", "", "Redis password, with REDIS_HOST", func(c *Config, v string) error { c.RedisPassword = v; return nil }},
	{"REDIS_TLS_ENABLED", "false", "true: connect to REDIS_HOST with TLS", func(c *Config, v string) error { return boolean(&c.RedisTLS, v) }},
	{"REDIS_CLUSTER", "false", "true: the Redis is a Redis Cluster (the address is any of its nodes)", func(c *Config, v string) error { return boolean(&c.RedisCluster, v) }},
	{"REDIS_KEY_PREFIX", "stagefleet", "prefix of every Redis key: deployments sharing one Redis need different prefixes", func(c *Config, v string) error {
		if v == "" || strings.ContainsAny(v, "{} \t\n") {
			return errors.New("must be non-empty, without braces or spaces")
		}
		c.RedisKeyPrefix = v
		return nil
	}},
	{"REDIS_SEAT_GROUPS", "1", fmt.Sprintf("how many Redis slots each new broadcast's seats are split over (1-%d): more than 1 when one broadcast's viewers are more than one Redis core carries (docs/scale.md)", redisstore.MaxSeatGroups), func(c *Config, v string) error {
		return intRange(&c.RedisSeatGroups, v, 1, redisstore.MaxSeatGroups)
	}},
	{"LEASE_TTL", "10s", "how long an instance keeps a broadcast's control lease without renewing it: after a crash, another instance takes the broadcast over within this", func(c *Config, v string) error {
		return duration(&c.LeaseTTL, v, 500*time.Millisecond, 5*time.Minute)
	}},
	{"INSTANCE_ID", "", "this instance's name in leases and logs (empty: host name, process id and a random suffix)", func(c *Config, v string) error { c.InstanceID = v; return nil }},
	{"CORS_ORIGINS", "", "comma-separated origins (https://app.example.com) whose browser pages may call the API, or * for any; empty: none (the previous server's setting)", func(c *Config, v string) error {
		c.CORSOrigins = nil
		for o := range strings.SplitSeq(v, ",") {
			if o = strings.TrimSpace(o); o == "" {
				continue
			}
			if u, err := url.Parse(o); o != "*" && (err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/")) {
				return fmt.Errorf("%q must be an origin such as https://app.example.com, or *", o)
			}
			c.CORSOrigins = append(c.CORSOrigins, strings.TrimSuffix(o, "/"))
		}
		return nil
	}},
	{"WS_MAX_CLIENTS", "1000", "most WebSocket connections (GET /ws) open at once; one more: 503 before the upgrade", func(c *Config, v string) error {
		return intRange(&c.WSMaxClients, v, 1, 1<<20)
	}},
	{"WS_STATS_INTERVAL", "5s", "how often GET /ws pushes stats_update to the stats channel (the previous server's 5s)", func(c *Config, v string) error {
		return duration(&c.WSStatsInterval, v, 100*time.Millisecond, time.Hour)
	}},
	{"HISTORY", "on", "on: record viewing history (SQLite under DATA_DIR, or PostgreSQL with DATABASE_URL or DB_HOST); off: none", func(c *Config, v string) error {
		var s string
		if err := oneOf(&s, strings.ToLower(v), "on", "off"); err != nil {
			return err
		}
		c.History = s == "on"
		return nil
	}},
	{"DATA_DIR", "data", "directory of the embedded history database (SQLite)", func(c *Config, v string) error { c.DataDir = v; return nil }},
	{"DATABASE_URL", "", "PostgreSQL for the viewing history, as postgres://user:password@host:port/db?sslmode=…; wins over DB_HOST", func(c *Config, v string) error {
		if v != "" {
			if u, err := url.Parse(v); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") || u.Host == "" {
				return errors.New("must be a postgres:// URL such as postgres://stagefleet:secret@127.0.0.1:5432/ivs_live")
			}
		}
		c.DatabaseURL = v
		return nil
	}},
	{"DB_HOST", "", "PostgreSQL host for the viewing history (the previous server's setting; DATABASE_URL is preferred)", func(c *Config, v string) error { c.DBHost = v; return nil }},
	{"DB_PORT", "5432", "PostgreSQL port, with DB_HOST", func(c *Config, v string) error { return intRange(&c.DBPort, v, 1, 65535) }},
	{"DB_NAME", "ivs_live", "PostgreSQL database, with DB_HOST", func(c *Config, v string) error { c.DBName = v; return nil }},
	{"DB_USER", "postgres", "PostgreSQL user, with DB_HOST", func(c *Config, v string) error { c.DBUser = v; return nil }},
	{"DB_PASSWORD", "", "PostgreSQL password, with DB_HOST", func(c *Config, v string) error { c.DBPassword = v; return nil }},
	{"DB_POOL_MAX", "10", "most PostgreSQL connections", func(c *Config, v string) error { return intRange(&c.DBPoolMax, v, 1, 1000) }},
	{"DB_POOL_MIN", "1", "PostgreSQL connections kept open", func(c *Config, v string) error { return intRange(&c.DBPoolMin, v, 0, 1000) }},
	{"DB_SSL_ENABLED", "false", "true: TLS to DB_HOST (sslmode=require)", func(c *Config, v string) error { return boolean(&c.DBSSL, v) }},
	{"HISTORY_BUFFER", "10000", "history records (session events and snapshots) held in memory while the database is slow or down; beyond, they are dropped and counted", func(c *Config, v string) error {
		return intRange(&c.HistoryBuffer, v, 100, 10_000_000)
	}},
	{"SNAPSHOT_INTERVAL", "5m", "how often each stage's viewers are recorded (one instance of the fleet writes each round)", func(c *Config, v string) error {
		return duration(&c.SnapshotInterval, v, time.Second, 24*time.Hour)
	}},
	{"HISTORY_RETENTION", "2160h", "how long sessions and snapshots are kept (2160h: 90 days); older ones are deleted daily", func(c *Config, v string) error {
		return duration(&c.HistoryRetention, v, time.Hour, 100*365*24*time.Hour)
	}},
	{"NODE_ENV", "development", "the environment's name, as /health reports it (the previous server's setting)", func(c *Config, v string) error {
		c.Environment = v
		return nil
	}},
	{"LOG_LEVEL", "info", "debug, info, warn or error", func(c *Config, v string) error {
		return oneOf(&c.LogLevel, strings.ToLower(v), "debug", "info", "warn", "error")
	}},
	{"METRICS_ADDR", "", "host:port to serve GET /metrics on, without x-api-key (an empty host: loopback only); empty: /metrics is on the API's address behind x-api-key", func(c *Config, v string) error {
		if v != "" {
			if _, port, err := net.SplitHostPort(v); err != nil || port == "" {
				return errors.New("must be host:port, such as 127.0.0.1:9464 or :9464")
			}
		}
		c.MetricsAddr = v
		return nil
	}},
	{"METRICS_MAX_BROADCASTS", "20", "broadcasts that get their own broadcast label in /metrics (the first seen); the rest count under \"other\"", func(c *Config, v string) error {
		return intRange(&c.MetricsMaxBroadcasts, v, 1, 1000)
	}},
	{"ENABLE_MONITORING", "false", "true: write CloudWatch embedded metric format lines (TotalViewers, ActiveStages) on stdout every METRICS_INTERVAL (the previous server's setting)", func(c *Config, v string) error {
		return boolean(&c.EnableMonitoring, v)
	}},
	{"METRICS_INTERVAL", "60s", "how often ENABLE_MONITORING writes its line (the previous server's setting)", func(c *Config, v string) error {
		return duration(&c.MetricsInterval, v, time.Second, time.Hour)
	}},
	{"CLOUDWATCH_NAMESPACE", "IVS/Production", "CloudWatch namespace of the ENABLE_MONITORING metrics (the previous server's setting)", func(c *Config, v string) error {
		if v == "" || len(v) > 255 || strings.HasPrefix(v, "AWS/") {
			return errors.New("must be 1 to 255 characters, not starting with AWS/ (reserved for AWS's own)")
		}
		c.CloudWatchNamespace = v
		return nil
	}},
}

var (
	regionPattern     = regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-\d$`)
	deploymentPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)
)

// prefixes parses a comma-separated list of addresses and CIDRs.
func prefixes(v string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for f := range strings.SplitSeq(v, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if p, err := netip.ParsePrefix(f); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(f)
		if err != nil {
			return nil, fmt.Errorf("%q is neither an address nor a CIDR such as 10.0.0.0/8", f)
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return out, nil
}

// serveOwned are embedded emulator flags that serve sets from its own
// settings: accepting them would let them be silently overridden.
var serveOwned = map[string]string{
	"emulator-region":        "AWS_REGION (--aws-region)",
	"emulator-events-secret": "EVENTS_SECRET (--events-secret)",
}

// Load reads the configuration: defaults, then the environment (getenv),
// then args. register may add more flags to the same set (the embedded
// emulator's). A bad value is an error naming the setting; a bad value in
// the environment is no error when a flag sets that setting.
func Load(args []string, getenv func(string) string, usage io.Writer, register func(*flag.FlagSet)) (Config, error) {
	var c Config
	fs := flag.NewFlagSet("stagefleet serve", flag.ContinueOnError)
	fs.SetOutput(usage)
	envErrs := map[string]error{}
	var flagErrs []error
	for _, s := range settings {
		v := s.def
		if e := getenv(s.env); e != "" {
			v = e
		}
		if err := s.set(&c, v); err != nil {
			envErrs[s.flagName()] = fmt.Errorf("%s=%s: %w", s.env, s.shown(v), err)
		}
		fs.Func(s.flagName(), s.help+" ($"+s.env+")", func(v string) error {
			err := s.set(&c, v)
			if err != nil && secretSettings[s.env] {
				// The flag package would print the value: keep the error
				// for after Parse, where it is reported without it.
				flagErrs = append(flagErrs, fmt.Errorf("--%s=%s: %w", s.flagName(), s.shown(v), err))
				return nil
			}
			return err
		})
	}
	if register != nil {
		register(fs)
	}
	fs.Usage = func() { printUsage(usage, fs) }
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if len(flagErrs) > 0 {
		return Config{}, flagErrs[0]
	}
	var owned error
	fs.Visit(func(f *flag.Flag) {
		delete(envErrs, f.Name)
		if use, ok := serveOwned[f.Name]; ok && owned == nil {
			owned = fmt.Errorf("--%s: stagefleet serve gives the embedded emulator its %s; set that instead", f.Name, use)
		}
	})
	for _, s := range settings {
		if err := envErrs[s.flagName()]; err != nil {
			return Config{}, err
		}
	}
	if owned != nil {
		return Config{}, owned
	}
	if err := c.validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

func printUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintln(w, "usage: stagefleet serve [flags]\n\nEvery setting is a flag and an environment variable; a flag wins.")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nflag\tvariable\tdefault\tmeaning")
	for _, s := range settings {
		def := s.def
		if def == "" {
			def = "-"
		}
		fmt.Fprintf(tw, "--%s\t%s\t%s\t%s\n", s.flagName(), s.env, def, s.help)
	}
	tw.Flush()
	fmt.Fprintln(w, "\nembedded emulator (emulator mode):")
	fs.VisitAll(func(f *flag.Flag) {
		if _, owned := serveOwned[f.Name]; strings.HasPrefix(f.Name, "emulator-") && f.Name != "emulator-addr" && !owned {
			fmt.Fprintf(w, "  --%s  %s\n", f.Name, f.Usage)
		}
	})
}

// AuthDisabled says whether x-api-key is not checked: when SKIP_AUTH=true,
// or in emulator mode when no API_SECRET_KEY is set (a local development
// setup with nothing to protect).
func (c Config) AuthDisabled() bool {
	return c.SkipAuth || (c.Mode() == ModeEmulator && c.APISecretKey == "")
}

// Mode resolves IVS_MODE auto.
func (c Config) Mode() string {
	if c.IVSMode != ModeAuto {
		return c.IVSMode
	}
	if c.IVSEndpoint != "" || c.MasterStageArn != "" || c.TokenKeyArn != "" {
		return ModeAWS
	}
	return ModeEmulator
}

func (c *Config) validate() error {
	if c.MinIdleStages >= c.MaxStages {
		return fmt.Errorf("MIN_IDLE_STAGES (%d) must be below MAX_STAGES (%d), which counts the origin", c.MinIdleStages, c.MaxStages)
	}
	if c.ScaleUpThreshold > c.StageCapacity {
		return fmt.Errorf("SCALE_UP_THRESHOLD (%d) must not be above STAGE_CAPACITY (%d)", c.ScaleUpThreshold, c.StageCapacity)
	}
	if (c.TokenKeyArn == "") != (c.TokenPrivateKeyFile == "") {
		return errors.New("IVS_TOKEN_KEY_ARN and IVS_TOKEN_PRIVATE_KEY_FILE go together: set both or neither")
	}
	if c.Mode() == ModeEmulator && c.IVSEndpoint != "" {
		return errors.New("IVS_ENDPOINT is set but IVS_MODE=emulator starts the embedded emulator; use IVS_MODE=aws (or auto) to use that endpoint")
	}
	if c.Mode() == ModeEmulator && c.MasterStageArn != "" {
		return errors.New("MASTER_STAGE_ARN is set but IVS_MODE=emulator starts an empty embedded emulator, where that stage does not exist; unset it, or use IVS_MODE=aws (or auto)")
	}
	if c.Mode() == ModeEmulator && c.TokenKeyArn != "" {
		return errors.New("IVS_TOKEN_KEY_ARN is set but IVS_MODE=emulator signs tokens with a key generated at start; unset it, or use IVS_MODE=aws (or auto)")
	}
	for _, a := range []struct{ name, arn string }{{"MASTER_STAGE_ARN", c.MasterStageArn}, {"IVS_TOKEN_KEY_ARN", c.TokenKeyArn}} {
		if region := arn.Region(a.arn); region != "" && region != c.AWSRegion {
			return fmt.Errorf("%s is in region %s but AWS_REGION is %s: they must match", a.name, region, c.AWSRegion)
		}
	}
	if c.StoreKind() == StoreRedis && c.RedisURL == "" && c.RedisHost == "" {
		return errors.New("STORE=redis needs REDIS_URL (or REDIS_HOST)")
	}
	if c.Mode() == ModeAWS && c.APISecretKey == "" && !c.SkipAuth {
		return errors.New("API_SECRET_KEY is required when using AWS (set SKIP_AUTH=true explicitly to run without authentication)")
	}
	if c.Mode() == ModeAWS && !c.AuthDisabled() && c.EventsSecret == "" && !c.SkipEventsAuth {
		return errors.New("EVENTS_SECRET is required when using AWS: without it anyone can post IVS events that take a broadcast off the air. Set it, and send it from the EventBridge connection as header x-stagefleet-events-secret (or set SKIP_EVENTS_AUTH=true explicitly)")
	}
	if c.Mode() == ModeEmulator && !c.EmulatorAllowRemote && !emulator.IsLoopbackAddr(c.EmulatorAddr) {
		return fmt.Errorf("EMULATOR_ADDR %s is not a loopback address: the emulator takes any credentials and its control API resets everything. Use 127.0.0.1, or set EMULATOR_ALLOW_REMOTE=true", c.EmulatorAddr)
	}
	if c.DBPoolMin > c.DBPoolMax {
		return fmt.Errorf("DB_POOL_MIN (%d) must not be above DB_POOL_MAX (%d)", c.DBPoolMin, c.DBPoolMax)
	}
	if c.HTTPWriteTimeout == 0 {
		c.HTTPWriteTimeout = max(30*time.Second, c.SeatWait+10*time.Second)
	}
	if c.HTTPWriteTimeout <= c.SeatWait+time.Second {
		return fmt.Errorf("HTTP_WRITE_TIMEOUT (%v) must exceed SEAT_WAIT (%v) by more than a second: a viewer waiting for a seat would be cut off", c.HTTPWriteTimeout, c.SeatWait)
	}
	return nil
}

// ListenHost is the address the API listens on: API_HOST when set, else
// every interface only when the API needs a key, and loopback otherwise,
// so that an unprotected server is never reachable from the network.
func (c Config) ListenHost() string {
	switch {
	case c.APIHost != "":
		return c.APIHost
	case c.AuthDisabled():
		return "127.0.0.1"
	}
	return ""
}

func boolean(dst *bool, v string) error {
	b, err := strconv.ParseBool(strings.TrimSpace(v))
	if err != nil {
		return errors.New("must be true or false")
	}
	*dst = b
	return nil
}

// MetricsListenAddr is where /metrics is served apart from the API
// (METRICS_ADDR), "" when it is not: an empty host is loopback, since
// nothing there checks a key.
func (c Config) MetricsListenAddr() string {
	if c.MetricsAddr == "" {
		return ""
	}
	host, port, _ := net.SplitHostPort(c.MetricsAddr) // checked by Load
	if host == "" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// StoreKind resolves STORE auto.
func (c Config) StoreKind() string {
	if c.Store != StoreAuto {
		return c.Store
	}
	if c.RedisURL != "" || c.RedisHost != "" {
		return StoreRedis
	}
	return StoreMemory
}

func intRange(dst *int, v string, lo, hi int) error {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil {
		return errors.New("must be a whole number")
	}
	if n < lo || n > hi {
		return fmt.Errorf("must be between %d and %d", lo, hi)
	}
	*dst = n
	return nil
}

func duration(dst *time.Duration, v string, lo, hi time.Duration) error {
	d, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil {
		return errors.New("must be a duration such as 30s, 5m or 1h")
	}
	if d < lo || d > hi {
		return fmt.Errorf("must be between %v and %v", lo, hi)
	}
	*dst = d
	return nil
}

func oneOf(dst *string, v string, allowed ...string) error {
	for _, a := range allowed {
		if v == a {
			*dst = v
			return nil
		}
	}
	return fmt.Errorf("must be one of %s", strings.Join(allowed, ", "))
}

func match(dst *string, v string, re *regexp.Regexp, what string) error {
	if !re.MatchString(v) {
		return fmt.Errorf("must be %s", what)
	}
	*dst = v
	return nil
}

// HistoryKind is where the viewing history goes: "off", "postgres" or
// "sqlite".
func (c Config) HistoryKind() string {
	switch {
	case !c.History:
		return "off"
	case c.DatabaseURL != "" || c.DBHost != "":
		return "postgres"
	}
	return "sqlite"
}

// PostgresURL is the PostgreSQL connection string: DATABASE_URL, else one
// made from the previous server's DB_* settings.
func (c Config) PostgresURL() string {
	if c.DatabaseURL != "" {
		return c.DatabaseURL
	}
	u := url.URL{Scheme: "postgres", User: url.UserPassword(c.DBUser, c.DBPassword),
		Host: net.JoinHostPort(c.DBHost, strconv.Itoa(c.DBPort)), Path: "/" + c.DBName}
	q := url.Values{}
	q.Set("sslmode", "disable")
	if c.DBSSL {
		q.Set("sslmode", "require")
	}
	q.Set("pool_max_conns", strconv.Itoa(c.DBPoolMax))
	q.Set("pool_min_conns", strconv.Itoa(c.DBPoolMin))
	u.RawQuery = q.Encode()
	return u.String()
}
