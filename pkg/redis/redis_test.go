package redis

import (
	"strings"
	"testing"
	"time"
)

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(*Config)
		want string // substring of the error; "" for valid
	}{
		{"defaults", func(*Config) {}, ""},
		{"user ttl off", func(c *Config) { c.UserTTL = 0 }, ""},
		{"user ttl a week", func(c *Config) { c.UserTTL = 7 * 24 * time.Hour }, ""},
		{"user ttl too short", func(c *Config) { c.UserTTL = 30 * time.Second }, "--redis.user-ttl must be 0 (keep every user) or at least 1m"},
		{"user ttl negative", func(c *Config) { c.UserTTL = -time.Hour }, "--redis.user-ttl"},
		{"bad url", func(c *Config) { c.URL = "http://x" }, "--redis.url"},
		{"bad database number", func(c *Config) { c.URL = "redis://:pw-secret@127.0.0.1:6379/x" }, `--redis.url (RECSYS_REDIS_URL or ONLINE_CACHE_REDIS_URL) "redis://:REDACTED@127.0.0.1:6379/x": redis: invalid database number`},
		{"bad dial timeout", func(c *Config) { c.URL = "redis://127.0.0.1:6379/0?dial_timeout=soon" }, "--redis.url"},
		{"tls url", func(c *Config) { c.URL = "rediss://u:pw@cache.example:6380/2" }, ""},
		{"no timeout", func(c *Config) { c.Timeout = 0 }, "--redis.timeout"},
		{"no client cache", func(c *Config) { c.CacheSizeMB = 0 }, "--redis.client-cache-mb"},
		{"one connection", func(c *Config) { c.Connections = 1 }, ""},
		{"eight connections", func(c *Config) { c.Connections = 8 }, ""},
		{"three connections", func(c *Config) { c.Connections = 3 }, "--redis.connections must be 0 or a power of two"},
		{"too many connections", func(c *Config) { c.Connections = 512 }, "--redis.connections"},
		{"negative connections", func(c *Config) { c.Connections = -1 }, "--redis.connections"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.set(&c)
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}
