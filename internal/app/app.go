// Package app assembles stagefleet serve from its parts, chosen once at
// start-up: IVS (AWS, an endpoint, or the embedded emulator), the store,
// token signing, the fleet and the HTTP API.
package app

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	goredis "github.com/redis/go-redis/v9"

	"github.com/stagefleet/stagefleet/internal/api"
	"github.com/stagefleet/stagefleet/internal/config"
	"github.com/stagefleet/stagefleet/internal/emulator"
	"github.com/stagefleet/stagefleet/internal/fleet"
	"github.com/stagefleet/stagefleet/internal/history"
	"github.com/stagefleet/stagefleet/internal/ivs"
	"github.com/stagefleet/stagefleet/internal/live"
	"github.com/stagefleet/stagefleet/internal/metrics"
	"github.com/stagefleet/stagefleet/internal/store"
	"github.com/stagefleet/stagefleet/internal/store/memory"
	redisstore "github.com/stagefleet/stagefleet/internal/store/redis"
	"github.com/stagefleet/stagefleet/internal/token"
)

// App is a running stagefleet serve.
type App struct {
	cfg   config.Config
	log   *slog.Logger
	store store.Store
	fleet *fleet.Service
	api   http.Handler
	// live is GET /ws's hub.
	live *live.Hub

	metrics *metrics.Metrics
	// metricsLn serves /metrics apart from the API (METRICS_ADDR); nil:
	// the API serves it.
	metricsLn net.Listener

	apiLn    net.Listener
	emu      *emulator.Emulator
	emuSrv   *http.Server
	endpoint string
	tokens   string
	// key watches the token signing key (self-signed tokens only).
	key *signingKey
	// probe asks IVS whether it answers, for health.
	probe   *probe
	started time.Time
	// hist is the viewing history (nil when off); histW queues writes to it.
	hist  history.Store
	histW *history.Writer
}

// New builds the app and binds its listeners, so that a port in use is an
// error here, before anything runs. emuCfg configures the embedded
// emulator (emulator mode only).
func New(ctx context.Context, cfg config.Config, emuCfg emulator.Config, log *slog.Logger) (_ *App, err error) {
	if cfg.Mode() == config.ModeEmulator && cfg.EventsSecret == "" {
		// The embedded emulator is the only sender: a secret made now
		// keeps everyone else's events out, with nothing to configure.
		cfg.EventsSecret = rand.Text()
	}
	a := &App{cfg: cfg, log: log}
	defer func() {
		if err != nil {
			a.Close()
		}
	}()
	a.apiLn, err = net.Listen("tcp", net.JoinHostPort(cfg.ListenHost(), fmt.Sprint(cfg.APIPort)))
	if err != nil {
		return nil, fmt.Errorf("API_PORT %d: %w", cfg.APIPort, err)
	}
	if cfg.APIHost == "" && cfg.AuthDisabled() {
		// Said at start, because "connection refused" from another machine
		// does not say why.
		msg := "the API listens on 127.0.0.1 only because API_SECRET_KEY is unset: set API_SECRET_KEY, or API_HOST explicitly, to listen elsewhere"
		if cfg.SkipAuth {
			msg = "the API listens on 127.0.0.1 only because SKIP_AUTH=true: set API_HOST explicitly to listen elsewhere"
		}
		log.Warn(msg, "addr", a.apiLn.Addr().String())
	}
	if addr := cfg.MetricsListenAddr(); addr != "" {
		if a.metricsLn, err = net.Listen("tcp", addr); err != nil {
			return nil, fmt.Errorf("METRICS_ADDR %s: %w", cfg.MetricsAddr, err)
		}
	}
	a.metrics = metrics.New(metrics.Options{MaxBroadcasts: cfg.MetricsMaxBroadcasts, Logger: log})

	var awsCfg aws.Config
	if cfg.Mode() == config.ModeEmulator {
		if err := a.startEmulator(cfg, emuCfg); err != nil {
			return nil, err
		}
		awsCfg = aws.Config{
			Region:      cfg.AWSRegion,
			Credentials: credentials.NewStaticCredentialsProvider("stagefleet", "emulator", ""),
		}
	} else {
		a.endpoint = cfg.IVSEndpoint
		awsCfg, err = awsconfig.LoadDefaultConfig(ctx, awsconfig.WithRegion(cfg.AWSRegion))
		if err != nil {
			return nil, fmt.Errorf("loading AWS configuration: %w", err)
		}
	}
	// Quotas are defined once (IVS's defaults): the client paces calls at
	// them, and the controller's passes spend a second's worth at most.
	quotas := ivs.DefaultQuotas()
	var limiter ivs.Limiter
	if a.store, limiter, err = openStore(ctx, cfg, quotas, log); err != nil {
		return nil, err
	}
	client := ivs.New(ivs.Options{Config: awsCfg, Endpoint: a.endpoint, Quotas: quotas, Limiter: limiter, Metrics: a.metrics})

	issuer, err := a.tokenIssuer(ctx, cfg, client)
	if err != nil {
		return nil, err
	}
	a.store = a.metrics.WrapStore(a.store)
	if a.hist, err = openHistory(ctx, cfg); err != nil {
		return nil, err
	}
	// The join path only queues history events; the writer writes them.
	var observer fleet.SeatObserver
	if a.hist != nil {
		a.histW = history.NewWriter(a.hist, history.WriterConfig{Buffer: cfg.HistoryBuffer}, log.With("component", "history"))
		observer = sessions{w: a.histW, instance: instanceName(cfg)}
	}
	a.fleet = fleet.New(fleet.Config{
		StageCapacity:    cfg.StageCapacity,
		HeartbeatTimeout: cfg.HeartbeatTimeout,
		SeatWait:         cfg.SeatWait,
		// A viewer waiting for a stage on its way is answered well within
		// the HTTP write timeout.
		MaxSeatWait:     max(cfg.SeatWait, cfg.HTTPWriteTimeout-5*time.Second),
		PublisherTTL:    cfg.PublisherTokenTTL,
		ViewerTTL:       cfg.ViewerTokenTTL,
		MediaServerTTL:  cfg.MediaServerTokenTTL,
		OriginArn:       cfg.MasterStageArn,
		ReconnectWindow: cfg.ReconnectWindow,
		EventDedupTTL:   24 * time.Hour,

		ScaleUpThreshold:       cfg.ScaleUpThreshold,
		MaxStages:              cfg.MaxStages,
		MinIdleStages:          cfg.MinIdleStages,
		ScaleDownStabilization: cfg.ScaleDownWindow,
		ReconcileInterval:      cfg.ReconcileInterval,
		InstanceID:             cfg.InstanceID,
		LeaseTTL:               cfg.LeaseTTL,

		DeploymentID:         cfg.DeploymentID,
		EventMaxSkew:         cfg.EventMaxSkew,
		MaxBroadcasts:        cfg.MaxBroadcasts,
		StageQuota:           cfg.StageQuota,
		BroadcastIdleTimeout: cfg.BroadcastIdleTimeout,
		SeatKeySecret:        seatKeySecret(cfg),
		Quotas:               quotas,
		Workers:              cfg.ControllerWorkers,
		Metrics:              a.metrics,
		Observer:             observer,
	}, a.store, client, issuer, log)
	a.metrics.ObserveState(a.store, a.fleet.Waiting)
	if a.histW != nil {
		a.metrics.ObserveHistory(a.histW.Len, a.histW.Dropped)
	}
	var apiMetrics http.Handler
	if a.metricsLn == nil {
		apiMetrics = a.metrics.Handler()
	}
	a.live = live.New(a.fleet, live.Options{
		MaxClients:    cfg.WSMaxClients,
		StatsInterval: cfg.WSStatsInterval,
		Origins:       cfg.CORSOrigins,
		Logger:        log.With("component", "live"),
	})
	a.api = api.New(api.Options{
		APISecretKey:    cfg.APISecretKey,
		SkipAuth:        cfg.AuthDisabled(),
		InternalSecret:  cfg.InternalSecret,
		EventsSecret:    cfg.EventsSecret,
		RateLimitWindow: cfg.RateLimitWindow,
		RateLimitMax:    cfg.RateLimitMaxRequests,
		MaxBodyBytes:    cfg.MaxBodyBytes,
		Health:          a.health,
		Version:         cfg.Version,
		CORSOrigins:     cfg.CORSOrigins,
		Live:            a.live,
		History:         a.hist,
		Logger:          log,
		Metrics:         apiMetrics,

		TrustedProxies:     cfg.TrustedProxies,
		AccessLogPerSecond: cfg.AccessLogPerSecond,
	}, a.fleet)
	a.started = time.Now()
	a.probe = a.newProbe(client)
	if cfg.AuthDisabled() {
		log.Warn("x-api-key is not checked: set API_SECRET_KEY to require it")
	}
	if cfg.EventsSecret == "" {
		log.Warn("POST /api/events/ivs takes events from anyone: set EVENTS_SECRET and send it from the EventBridge connection")
	}
	if a.emu != nil {
		a.emu.AddEventsURL("http://" + loopback(a.apiLn.Addr()) + "/api/events/ivs")
	}
	log.Info("stagefleet ready", "api", a.apiLn.Addr().String(), "ivs_mode", cfg.Mode(), "ivs_endpoint", a.endpointName(), "store", cfg.StoreKind(), "tokens", a.tokens)
	return a, nil
}

// seatKeySecret is the key of seat keys: SEAT_KEY_SECRET, else one derived
// from API_SECRET_KEY (which every instance of a deployment shares), else
// nil for one made at start.
func seatKeySecret(cfg config.Config) []byte {
	switch {
	case cfg.SeatKeySecret != "":
		return []byte(cfg.SeatKeySecret)
	case cfg.APISecretKey != "":
		m := hmac.New(sha256.New, []byte(cfg.APISecretKey))
		m.Write([]byte("stagefleet seat keys"))
		return m.Sum(nil)
	}
	return nil
}

// openStore opens the configured store; Redis must answer at start, so that
// a wrong address fails the start, not the first viewer.
// With Redis, IVS calls are paced by one limiter in it, shared by every
// instance (quotas are the account's); with memory, by this process's.
func openStore(ctx context.Context, cfg config.Config, quotas map[string]float64, log *slog.Logger) (store.Store, ivs.Limiter, error) {
	local := ivs.NewLocalLimiter(quotas)
	if cfg.StoreKind() != config.StoreRedis {
		return memory.New(), local, nil
	}
	rdb, where, err := redisClient(cfg)
	if err != nil {
		return nil, nil, err
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := rdb.Ping(pctx).Err(); err != nil {
		rdb.Close()
		return nil, nil, fmt.Errorf("redis at %s does not answer: %w", where, err)
	}
	// Concurrent seat operations of a seat group share one script call.
	st := redisstore.New(rdb, cfg.RedisKeyPrefix, redisstore.WithSeatBatching(), redisstore.WithSeatGroups(cfg.RedisSeatGroups))
	return st, &sharedLimiter{store: st, quotas: quotas, region: cfg.AWSRegion, local: local, log: log}, nil
}

// sharedLimiter paces IVS calls with a rate per operation and region in
// Redis, which every instance draws from. If Redis does not answer, this
// process's own limiter paces them meanwhile: IVS calls go on, at worst
// at the quota per instance.
type sharedLimiter struct {
	store  *redisstore.Store
	quotas map[string]float64
	region string
	local  *ivs.LocalLimiter
	log    *slog.Logger

	warned atomic.Int64 // unix seconds of the last warning
}

func (l *sharedLimiter) Reserve(ctx context.Context, op string) (time.Duration, bool, error) {
	tps := l.quotas[op]
	if tps <= 0 {
		return 0, false, nil
	}
	d, err := l.store.QuotaTurn(ctx, l.region+":"+op, tps, ivs.Burst(tps))
	if err == nil {
		return d, true, nil
	}
	if now := time.Now().Unix(); l.warned.Swap(now) < now-60 {
		l.log.Warn("the shared IVS quota in Redis does not answer; pacing this instance alone", "operation", op, "error", err)
	}
	return l.local.Reserve(ctx, op)
}

// redisClient makes the client REDIS_URL describes, with every option the
// URL carries (go-redis parses it), else the one REDIS_HOST and the
// settings with it describe. where names it for errors, without secrets.
func redisClient(cfg config.Config) (rdb goredis.UniversalClient, where string, err error) {
	switch {
	case cfg.RedisURL != "" && cfg.RedisCluster:
		o, err := goredis.ParseClusterURL(cfg.RedisURL)
		if err != nil {
			return nil, "", fmt.Errorf("REDIS_URL: %w", err)
		}
		return goredis.NewClusterClient(o), strings.Join(o.Addrs, ","), nil
	case cfg.RedisURL != "":
		o, err := goredis.ParseURL(cfg.RedisURL)
		if err != nil {
			return nil, "", fmt.Errorf("REDIS_URL: %w", err)
		}
		return goredis.NewClient(o), o.Addr, nil
	}
	opts := &goredis.UniversalOptions{
		Addrs:         []string{net.JoinHostPort(cfg.RedisHost, fmt.Sprint(cfg.RedisPort))},
		Password:      cfg.RedisPassword,
		IsClusterMode: cfg.RedisCluster,
	}
	if cfg.RedisTLS {
		opts.TLSConfig = &tls.Config{ServerName: cfg.RedisHost, MinVersion: tls.VersionTLS12}
	}
	return goredis.NewUniversalClient(opts), opts.Addrs[0], nil
}

// startEmulator runs the embedded emulator on cfg.EmulatorAddr; it sends its
// events to this server with the events secret.
func (a *App) startEmulator(cfg config.Config, emuCfg emulator.Config) error {
	ln, err := net.Listen("tcp", cfg.EmulatorAddr)
	if err != nil {
		return fmt.Errorf("EMULATOR_ADDR %s: %w", cfg.EmulatorAddr, err)
	}
	emuCfg.Region = cfg.AWSRegion
	emuCfg.EventsSecret = cfg.EventsSecret
	emuCfg.Logger = a.log.With("component", "emulator")
	a.emu, err = emulator.New(emuCfg)
	if err != nil {
		ln.Close()
		return fmt.Errorf("embedded emulator: %w", err)
	}
	a.emuSrv = emulator.NewHTTPServer(a.emu.Handler())
	go func() {
		if err := a.emuSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("embedded emulator stopped", "error", err)
		}
	}()
	a.endpoint = "http://" + ln.Addr().String()
	a.log.Info("embedded IVS emulator started", "addr", ln.Addr().String())
	return nil
}

// tokenIssuer picks how participant tokens are made: self-signed with a key
// made and imported at start (emulator), self-signed with the configured key
// (AWS), else CreateParticipantToken.
func (a *App) tokenIssuer(ctx context.Context, cfg config.Config, client *ivs.Client) (token.Issuer, error) {
	switch {
	case a.emu != nil:
		key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generating token key: %w", err)
		}
		pub, err := token.PublicKeyPEM(key)
		if err != nil {
			return nil, err
		}
		arn, err := client.ImportPublicKey(ctx, "stagefleet-"+time.Now().UTC().Format("20060102T150405"), pub)
		if err != nil {
			return nil, fmt.Errorf("importing the token key into the emulator: %w", err)
		}
		a.tokens = "self-signed (key generated at start)"
		return a.selfSigned(arn, key, client)
	case cfg.TokenKeyArn != "":
		pemBytes, err := os.ReadFile(cfg.TokenPrivateKeyFile)
		if err != nil {
			return nil, fmt.Errorf("IVS_TOKEN_PRIVATE_KEY_FILE: %w", err)
		}
		key, err := token.ParsePrivateKey(pemBytes)
		if err != nil {
			return nil, fmt.Errorf("IVS_TOKEN_PRIVATE_KEY_FILE: %w", err)
		}
		a.tokens = "self-signed (configured key)"
		return a.selfSigned(cfg.TokenKeyArn, key, client)
	default:
		a.tokens = "CreateParticipantToken"
		return client, nil
	}
}

// selfSigned makes the self-signed issuer and the watcher that keeps its
// public key in IVS.
func (a *App) selfSigned(arn string, key *ecdsa.PrivateKey, client *ivs.Client) (*token.SelfSigned, error) {
	iss, err := token.NewSelfSigned(arn, key)
	if err != nil {
		return nil, err
	}
	a.key = newSigningKey(iss, client, a.log)
	return iss, nil
}

func (a *App) endpointName() string {
	if a.endpoint == "" {
		return "aws"
	}
	return a.endpoint
}

// loopback returns addr with an unspecified host replaced by 127.0.0.1, so
// that the embedded emulator posts events over loopback.
func loopback(addr net.Addr) string {
	host, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return addr.String()
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// Addr is the API's address.
func (a *App) Addr() string { return a.apiLn.Addr().String() }

// EmulatorURL is the embedded emulator's base URL ("" in AWS mode).
func (a *App) EmulatorURL() string {
	if a.emu == nil {
		return ""
	}
	return a.endpoint
}

// Handler is the HTTP API.
func (a *App) Handler() http.Handler { return a.api }

// Run serves until ctx ends, then shuts down gracefully: requests in flight
// get ShutdownTimeout to finish.
func (a *App) Run(ctx context.Context) error {
	srv := a.httpServer(a.api)
	bg, stop := context.WithCancel(context.WithoutCancel(ctx))
	// Every background goroutine (the controller, the IVS probe, the
	// hub, the history recorder, the CloudWatch writer) uses the store or
	// the history: all stop before Close shuts them.
	var background sync.WaitGroup
	defer func() {
		stop()
		background.Wait()
	}()
	background.Go(func() { a.fleet.Run(bg) })
	background.Go(func() { a.probe.run(bg, probeInterval) })
	background.Go(func() { a.live.Run(bg) })
	if a.hist != nil {
		r := &recorder{fleet: a.fleet, leases: a.store, w: a.histW, hist: a.hist, holder: instanceName(a.cfg) + "-" + rand.Text()[:6],
			interval: a.cfg.SnapshotInterval, retention: a.cfg.HistoryRetention, log: a.log.With("component", "history")}
		background.Go(func() { r.run(bg) })
	}
	if a.cfg.EnableMonitoring {
		background.Go(func() {
			a.metrics.RunCloudWatch(bg, os.Stdout, metrics.CloudWatch{
				Namespace:   a.cfg.CloudWatchNamespace,
				Environment: a.cfg.Environment,
				Interval:    a.cfg.MetricsInterval,
			})
		})
	}
	errc := make(chan error, 2)
	ln := newLimitListener(a.apiLn, a.cfg.HTTPMaxConnections)
	go func() { errc <- srv.Serve(ln) }()
	servers := []*http.Server{srv}
	if a.metricsLn != nil {
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", a.metrics.Handler())
		msrv := a.httpServer(mux)
		servers = append(servers, msrv)
		go func() { errc <- msrv.Serve(a.metricsLn) }()
	}
	select {
	case err := <-errc:
		// One server failed: the other goes too, and the hub's
		// connections with it, so that the process ends whole.
		for _, s := range servers {
			_ = s.Close()
		}
		cctx, cancel := context.WithTimeout(context.Background(), a.cfg.ShutdownTimeout)
		defer cancel()
		a.live.Close(cctx)
		return err
	case <-ctx.Done():
	}
	a.log.Info("shutting down", "timeout", a.cfg.ShutdownTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), a.cfg.ShutdownTimeout)
	defer cancel()
	// WebSocket connections are hijacked: Shutdown neither closes nor
	// waits for them, so the hub closes them alongside, not before: a
	// client slow to answer its close frame must not eat the requests'
	// share of the budget while the listener still takes new ones.
	hubDone := make(chan struct{})
	go func() {
		defer close(hubDone)
		a.live.Close(sctx)
	}()
	var errs []error
	for _, s := range servers {
		if err := s.Shutdown(sctx); err != nil {
			errs = append(errs, fmt.Errorf("shutdown: %w", err))
		}
	}
	<-hubDone
	return errors.Join(errs...)
}

// httpServer serves h with the API's limits: the metrics server is held to
// the same timeouts as the API's.
func (a *App) httpServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler: h,
		// A client still sending headers after 10 s is holding a
		// connection, not making a request.
		ReadHeaderTimeout: min(10*time.Second, a.cfg.HTTPReadTimeout),
		ReadTimeout:       a.cfg.HTTPReadTimeout,
		WriteTimeout:      a.cfg.HTTPWriteTimeout,
		IdleTimeout:       a.cfg.HTTPIdleTimeout,
		MaxHeaderBytes:    a.cfg.HTTPMaxHeaderBytes,
	}
}

// MetricsAddr is the address /metrics is served on apart from the API
// (METRICS_ADDR), "" when the API serves it.
func (a *App) MetricsAddr() string {
	if a.metricsLn == nil {
		return ""
	}
	return a.metricsLn.Addr().String()
}

// Close stops the embedded emulator and the store.
func (a *App) Close() {
	if a.histW != nil {
		if a.cfg.StoreKind() == config.StoreMemory {
			// The broadcasts end with the process: their viewers' sessions
			// close now, or they would stay open in the history for good.
			if err := a.fleet.CloseSessions(context.Background()); err != nil {
				a.log.Warn("history: closing the sessions of the memory store's seats", "error", err)
			}
		}
		// What the fleet queued is written before the process ends.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := a.histW.Close(ctx); err != nil {
			a.log.Warn("history: flushing at shutdown", "error", err)
		}
		cancel()
	}
	if a.hist != nil {
		_ = a.hist.Close()
	}
	if a.emuSrv != nil {
		_ = a.emuSrv.Close()
	}
	if a.emu != nil {
		a.emu.Close()
	}
	if a.store != nil {
		_ = a.store.Close()
	}
	if a.apiLn != nil {
		_ = a.apiLn.Close()
	}
	if a.metricsLn != nil {
		_ = a.metricsLn.Close()
	}
}
