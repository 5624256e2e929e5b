package app

import (
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stagefleet/stagefleet/internal/config"
)

// redisSettings is what a client was configured with.
type redisSettings struct {
	addrs    string
	password string
	db       int
	tls      bool
	cluster  bool
	pool     int
}

func settingsOf(t *testing.T, rdb goredis.UniversalClient) redisSettings {
	t.Helper()
	t.Cleanup(func() { rdb.Close() })
	switch c := rdb.(type) {
	case *goredis.Client:
		o := c.Options()
		return redisSettings{addrs: o.Addr, password: o.Password, db: o.DB, tls: o.TLSConfig != nil, pool: o.PoolSize}
	case *goredis.ClusterClient:
		o := c.Options()
		return redisSettings{addrs: strings.Join(o.Addrs, ","), password: o.Password, tls: o.TLSConfig != nil, cluster: true, pool: o.PoolSize}
	}
	t.Fatalf("client of type %T", rdb)
	return redisSettings{}
}

func TestRedisClient(t *testing.T) {
	tests := []struct {
		name string
		cfg  config.Config
		want redisSettings
	}{
		{"previous server's settings", config.Config{RedisHost: "redis.internal", RedisPort: 6380, RedisPassword: "pw", RedisTLS: true},
			redisSettings{addrs: "redis.internal:6380", password: "pw", tls: true}},
		{"url", config.Config{RedisURL: "redis://:secret@127.0.0.1:6379/2", RedisHost: "ignored"},
			redisSettings{addrs: "127.0.0.1:6379", password: "secret", db: 2}},
		{"tls url", config.Config{RedisURL: "rediss://redis.internal:6380"}, redisSettings{addrs: "redis.internal:6380", tls: true}},
		{"url options kept", config.Config{RedisURL: "redis://127.0.0.1:6379?pool_size=7&dial_timeout=3s"},
			redisSettings{addrs: "127.0.0.1:6379", pool: 7}},
		{"cluster url", config.Config{RedisURL: "redis://10.0.0.1:7000?addr=10.0.0.2:7000", RedisCluster: true},
			redisSettings{addrs: "10.0.0.1:7000,10.0.0.2:7000", cluster: true}},
		{"cluster host", config.Config{RedisHost: "10.0.0.1", RedisPort: 7000, RedisCluster: true},
			redisSettings{addrs: "10.0.0.1:7000", cluster: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rdb, _, err := redisClient(tc.cfg)
			if err != nil {
				t.Fatalf("redisClient: %v", err)
			}
			got := settingsOf(t, rdb)
			if tc.want.pool == 0 {
				got.pool = 0 // go-redis's default, not under test
			}
			if got != tc.want {
				t.Errorf("client settings %+v, want %+v", got, tc.want)
			}
		})
	}
	rdb, _, err := redisClient(config.Config{RedisURL: "redis://127.0.0.1:6379?dial_timeout=3s"})
	if err != nil {
		t.Fatal(err)
	}
	if o := rdb.(*goredis.Client).Options(); o.DialTimeout != 3*time.Second {
		t.Errorf("dial_timeout from REDIS_URL dropped: %v", o.DialTimeout)
	}
	rdb.Close()
	if _, _, err := redisClient(config.Config{RedisURL: "redis://127.0.0.1:6379/notadb"}); err == nil {
		t.Error("a REDIS_URL with a bad database number was accepted")
	}
}
