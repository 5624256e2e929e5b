package app

import (
	"strings"
	"testing"

	"github.com/stagefleet/stagefleet/internal/config"
)

func TestRedisOptions(t *testing.T) {
	tests := []struct {
		name     string
		cfg      config.Config
		addrs    string
		password string
		db       int
		tls      bool
		cluster  bool
	}{
		{"previous server's settings", config.Config{RedisHost: "redis.internal", RedisPort: 6380, RedisPassword: "pw", RedisTLS: true},
			"redis.internal:6380", "pw", 0, true, false},
		{"url", config.Config{RedisURL: "redis://:secret@127.0.0.1:6379/2", RedisHost: "ignored"},
			"127.0.0.1:6379", "secret", 2, false, false},
		{"tls url", config.Config{RedisURL: "rediss://redis.internal:6380"}, "redis.internal:6380", "", 0, true, false},
		{"cluster url", config.Config{RedisURL: "redis://10.0.0.1:7000?addr=10.0.0.2:7000", RedisCluster: true},
			"10.0.0.1:7000,10.0.0.2:7000", "", 0, false, true},
		{"cluster host", config.Config{RedisHost: "10.0.0.1", RedisPort: 7000, RedisCluster: true}, "10.0.0.1:7000", "", 0, false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o, err := redisOptions(tc.cfg)
			if err != nil {
				t.Fatalf("redisOptions: %v", err)
			}
			addrs := strings.Join(o.Addrs, ",")
			if addrs != tc.addrs || o.Password != tc.password || o.DB != tc.db || (o.TLSConfig != nil) != tc.tls || o.IsClusterMode != tc.cluster {
				t.Errorf("options: addrs %s, password %q, db %d, tls %v, cluster %v; want %s, %q, %d, %v, %v",
					addrs, o.Password, o.DB, o.TLSConfig != nil, o.IsClusterMode, tc.addrs, tc.password, tc.db, tc.tls, tc.cluster)
			}
		})
	}
	if _, err := redisOptions(config.Config{RedisURL: "redis://127.0.0.1:6379/notadb"}); err == nil {
		t.Error("a REDIS_URL with a bad database number was accepted")
	}
}
