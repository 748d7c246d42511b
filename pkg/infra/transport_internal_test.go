package infra

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"recsys/pkg/kafka"
)

func TestWarnUnverifiedTransports(t *testing.T) {
	const pw = "S3cretPW"
	tests := []struct {
		name  string
		need  Need
		set   func(c *Config)
		wants map[string][]string // setting -> hosts of its warning; no other warning
	}{
		{name: "postgres without sslmode", need: Postgres,
			set:   func(c *Config) { c.PG.DSN = "postgres://u:" + pw + "@db.internal:5432/recsys" },
			wants: map[string][]string{"--pg.dsn": {"db.internal"}}},
		{name: "postgres sslmode=require", need: Postgres,
			set:   func(c *Config) { c.PG.DSN = "postgres://u:" + pw + "@10.0.0.5/recsys?sslmode=require" },
			wants: map[string][]string{"--pg.dsn": {"10.0.0.5"}}},
		{name: "postgres sslmode=disable", need: Postgres,
			set:   func(c *Config) { c.PG.DSN = "host=db.internal user=u password=" + pw + " sslmode=disable" },
			wants: map[string][]string{"--pg.dsn": {"db.internal"}}},
		{name: "postgres multi-host", need: Postgres,
			set: func(c *Config) {
				c.PG.DSN = "postgres://u:" + pw + "@127.0.0.1:5432,db2.internal:5432/recsys?sslmode=prefer"
			},
			wants: map[string][]string{"--pg.dsn": {"db2.internal"}}},
		{name: "postgres verify-full", need: Postgres,
			set: func(c *Config) { c.PG.DSN = "postgres://u:" + pw + "@db.internal/recsys?sslmode=verify-full" }},
		{name: "postgres sslrootcert=system", need: Postgres,
			set: func(c *Config) { c.PG.DSN = "postgres://u:" + pw + "@db.internal/recsys?sslrootcert=system" }},
		{name: "postgres loopback", need: Postgres,
			set: func(c *Config) { c.PG.DSN = "postgres://u:" + pw + "@localhost/recsys?sslmode=disable" }},
		{name: "postgres IPv6 loopback", need: Postgres,
			set: func(c *Config) { c.PG.DSN = "postgres://u:" + pw + "@[::1]:5432/recsys" }},
		{name: "postgres unix socket", need: Postgres,
			set: func(c *Config) { c.PG.DSN = "host=/var/run/postgresql user=u password=" + pw + " dbname=recsys" }},
		{name: "postgres not in need", need: Redis,
			set: func(c *Config) { c.PG.DSN = "postgres://u:" + pw + "@db.internal/recsys" }},
		{name: "redis plain", need: Redis,
			set:   func(c *Config) { c.Redis.URL = "redis://:" + pw + "@cache.internal:6379/0" },
			wants: map[string][]string{"--redis.url": {"cache.internal"}}},
		{name: "redis skip_verify", need: Redis,
			set:   func(c *Config) { c.Redis.URL = "rediss://:" + pw + "@cache.internal:6379/0?skip_verify=true" },
			wants: map[string][]string{"--redis.url": {"cache.internal"}}},
		{name: "redis tls", need: Redis,
			set: func(c *Config) { c.Redis.URL = "rediss://:" + pw + "@cache.internal:6379/0" }},
		{name: "redis default loopback", need: Redis},
		{name: "redis unix", need: Redis,
			set: func(c *Config) { c.Redis.URL = "unix:///run/redis.sock" }},
		{name: "kafka plain", need: Kafka,
			set: func(c *Config) {
				c.Kafka.Brokers = []string{"127.0.0.1:9092", "b1.internal:9092", "b2.internal:9092", "b1.internal:9093"}
			},
			wants: map[string][]string{"--kafka.tls": {"b1.internal", "b2.internal"}}},
		{name: "kafka sasl plain without tls", need: Kafka,
			set: func(c *Config) {
				c.Kafka.Brokers = []string{"b1.internal:9092"}
				c.Kafka.Security = kafka.Security{SASLMechanism: kafka.SASLPlain, SASLUsername: "u", SASLPassword: pw}
			},
			wants: map[string][]string{"--kafka.tls": {"b1.internal"}}},
		{name: "kafka tls", need: Kafka,
			set: func(c *Config) { c.Kafka.Brokers = []string{"b1.internal:9092"}; c.Kafka.Security.TLS = true }},
		{name: "kafka loopback", need: Kafka},
		{name: "all three", need: Postgres | Redis | Kafka,
			set: func(c *Config) {
				c.PG.DSN = "postgres://u:" + pw + "@db.internal/recsys"
				c.Redis.URL = "redis://cache.internal:6379/0"
				c.Kafka.Brokers = []string{"b1.internal:9092"}
			},
			wants: map[string][]string{"--pg.dsn": {"db.internal"}, "--redis.url": {"cache.internal"}, "--kafka.tls": {"b1.internal"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.PG.DSN = "postgres://u@127.0.0.1/recsys"
			if tc.set != nil {
				tc.set(&cfg)
			}
			var buf bytes.Buffer
			warnUnverified(slog.New(slog.NewJSONHandler(&buf, nil)), cfg, tc.need)
			if strings.Contains(buf.String(), pw) {
				t.Fatalf("the warning shows the password: %s", buf.String())
			}
			got := map[string][]string{}
			for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
				if line == "" {
					continue
				}
				var rec struct {
					Level, Setting string
					Hosts          []string
				}
				if err := json.Unmarshal([]byte(line), &rec); err != nil {
					t.Fatal(err)
				}
				if rec.Level != "WARN" {
					t.Fatalf("level %s: %s", rec.Level, line)
				}
				if _, dup := got[rec.Setting]; dup {
					t.Fatalf("two warnings for %s: %s", rec.Setting, buf.String())
				}
				got[rec.Setting] = rec.Hosts
			}
			if len(got) != len(tc.wants) {
				t.Fatalf("warnings %v, want %v (log: %s)", got, tc.wants, buf.String())
			}
			for s, hosts := range tc.wants {
				if strings.Join(got[s], ",") != strings.Join(hosts, ",") {
					t.Errorf("%s: hosts %v, want %v", s, got[s], hosts)
				}
			}
		})
	}
}

// Open is where the warning is logged, once per process start.
func TestOpenWarnsAboutUnverifiedTransports(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Kafka.Brokers = []string{"b1.internal:9092"}
	var buf bytes.Buffer
	in, err := Open(context.Background(), cfg, Kafka, slog.New(slog.NewJSONHandler(&buf, nil)))
	if err != nil {
		t.Fatal(err)
	}
	in.Close()
	if n := strings.Count(buf.String(), `"setting":"--kafka.tls"`); n != 1 {
		t.Fatalf("%d warnings about --kafka.tls, want 1: %s", n, buf.String())
	}
}
