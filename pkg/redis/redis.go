// Package redis opens the process' rueidis client for the online feature store.
package redis

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/bits"
	"net/url"
	"os"
	"time"

	"github.com/redis/rueidis"
	"github.com/spf13/pflag"

	"recsys/pkg/flagenv"
)

// Config holds the client settings (flags redis.*).
type Config struct {
	URL          string
	Timeout      time.Duration
	KeyPrefix    string
	DisableCache bool // miniredis has no CLIENT TRACKING; real Redis uses client-side caching
	CacheSizeMB  int
	// UserTTL lets users without events for that long leave the Redis copy (0: every user
	// stays). The roles that write features (consumer, features rebuild) set it on each user
	// they write and record it in the copy; /reco, following the record, reads an absent user
	// back from PostgreSQL.
	UserTTL time.Duration
	// Connections is how many pipelined connections the client spreads its commands over: a
	// power of two, or 0 for rueidis' choice (as many as cores, at most 4). The default is
	// one, as StackExchange.Redis does: the concurrent requests' commands then share each
	// write and each read on both sides. /reco without autolog, closed loop, 64 clients, 3
	// alternated rounds: 20,481–21,486 req/s at 79–81 µs of machine CPU per request with
	// rueidis' two connections on 2 cores, 21,275–22,443 at 75–76 with one (Redis 10.6–11.3
	// → 9.4–9.6 µs); docs/performance-log.md, session 29. Redis runs commands one at a time
	// whatever the connections, so one only limits a client whose single TCP stream is the
	// bottleneck: raise it on large pods talking to a remote Redis.
	Connections int
	// ClientName names the client's connections (CLIENT SETNAME), so that CLIENT LIST tells a
	// process' clients apart; "" leaves them unnamed. Not a flag: the code that opens a client
	// for one purpose names it.
	ClientName string
	// TLSCAFile, TLSCertFile and TLSKeyFile complete a rediss:// URL: the CA that signs the
	// server's certificate when it is not one of the system's roots (managed Redis such as
	// ElastiCache or Memorystore with a private CA, a self-run Redis), and a client
	// certificate for servers that ask for one (tls-auth-clients). The URL alone could only
	// trust the system's roots or, with skip_verify, anybody.
	TLSCAFile   string
	TLSCertFile string
	TLSKeyFile  string
}

// RateLimitKeys is where, under --redis.key-prefix, pkg/httpx keeps the API keys' shared
// rate counts (--http.rate-limit-scope=cluster). They are not features: a repopulation of
// the feature copy, which clears the copy's keys under the prefix, leaves them alone.
const RateLimitKeys = "ratelimit:"

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{URL: "redis://127.0.0.1:6379/0", Timeout: time.Second, KeyPrefix: "recsys:", CacheSizeMB: 16, Connections: 1}
}

// RegisterFlags adds the redis.* flags.
func (c *Config) RegisterFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.URL, "redis.url", c.URL, "Redis URL redis://[:password@]host:port/db (secret)")
	fs.DurationVar(&c.Timeout, "redis.timeout", c.Timeout, "connect and per-command timeout")
	fs.StringVar(&c.KeyPrefix, "redis.key-prefix", c.KeyPrefix, "prefix of every key recsys writes, so several deployments can share one Redis; the same in every pod of one deployment (the first records it in PostgreSQL, a process with another refuses: docs/runbook.md)")
	fs.BoolVar(&c.DisableCache, "redis.disable-client-cache", c.DisableCache, "turn off RESP3 client-side caching (needed for servers without CLIENT TRACKING)")
	fs.IntVar(&c.CacheSizeMB, "redis.client-cache-mb", c.CacheSizeMB, "client-side cache size per connection, MiB")
	fs.DurationVar(&c.UserTTL, "redis.user-ttl", c.UserTTL, "users without events for this long leave the Redis copy and are read back from PostgreSQL when next served (0: keep every user); set it where features are written (consumer, features rebuild): /reco follows what the copy records")
	fs.StringVar(&c.TLSCAFile, "redis.tls-ca-file", c.TLSCAFile, "PEM file of the CA certificates that sign the Redis server's certificate (empty: the system's roots); needs a rediss:// --redis.url")
	fs.StringVar(&c.TLSCertFile, "redis.tls-cert-file", c.TLSCertFile, "PEM file of the client certificate, for servers that authenticate clients by certificate (with --redis.tls-key-file); needs a rediss:// --redis.url")
	fs.StringVar(&c.TLSKeyFile, "redis.tls-key-file", c.TLSKeyFile, "PEM file of the client certificate's private key (with --redis.tls-cert-file)")
	fs.IntVar(&c.Connections, "redis.connections", c.Connections, "pipelined connections of the Redis client, a power of two up to 256 (0: one per core, at most 4); concurrent commands share them, so fewer connections send more commands per write")
	flagenv.Alias(fs, "redis.url", "ONLINE_CACHE_REDIS_URL")
	flagenv.Secret(fs, "redis.url")
	flagenv.Alias(fs, "redis.timeout", "ONLINE_CACHE_REDIS_TIMEOUT_SEC:s")
}

// Validate reports every invalid setting.
func (c Config) Validate() error {
	var errs []error
	u, err := url.Parse(c.URL)
	if err != nil || (u.Scheme != "redis" && u.Scheme != "rediss" && u.Scheme != "unix") {
		errs = append(errs, fmt.Errorf("--redis.url (RECSYS_REDIS_URL or ONLINE_CACHE_REDIS_URL) must be a redis:// URL, got %q", flagenv.Redact(c.URL)))
	} else if _, err := rueidis.ParseURL(c.URL); err != nil {
		// What Open would refuse (a database number that is not one, an unknown option) is
		// refused here, naming the setting, rather than when the client opens. The parser's
		// messages name the part at fault, never the password.
		errs = append(errs, fmt.Errorf("--redis.url (RECSYS_REDIS_URL or ONLINE_CACHE_REDIS_URL) %q: %w", flagenv.Redact(c.URL), err))
	} else if u.Scheme != "rediss" && (c.TLSCAFile != "" || c.TLSCertFile != "" || c.TLSKeyFile != "") {
		// Files given for a plain connection would be ignored: the operator meant TLS.
		errs = append(errs, fmt.Errorf("--redis.tls-ca-file, --redis.tls-cert-file and --redis.tls-key-file need a rediss:// --redis.url, got %q", flagenv.Redact(c.URL)))
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		errs = append(errs, errors.New("--redis.tls-cert-file and --redis.tls-key-file go together: give both or neither"))
	} else if err := c.loadTLS(&tls.Config{}); err != nil {
		errs = append(errs, err)
	}
	if c.Timeout <= 0 {
		errs = append(errs, fmt.Errorf("--redis.timeout must be > 0, got %s", c.Timeout))
	}
	if c.UserTTL != 0 && c.UserTTL < time.Minute {
		errs = append(errs, fmt.Errorf("--redis.user-ttl must be 0 (keep every user) or at least 1m, got %s", c.UserTTL))
	}
	if c.Connections < 0 || c.Connections > 256 || c.Connections&(c.Connections-1) != 0 {
		errs = append(errs, fmt.Errorf("--redis.connections must be 0 or a power of two up to 256, got %d", c.Connections))
	}
	if c.CacheSizeMB < 1 {
		errs = append(errs, fmt.Errorf("--redis.client-cache-mb must be >= 1, got %d", c.CacheSizeMB))
	}
	return errors.Join(errs...)
}

// Open creates the client. rueidis connects lazily and reconnects by itself, so a Redis that
// is down at start only makes readiness fail until it is back.
func Open(c Config) (rueidis.Client, error) {
	opt, err := rueidis.ParseURL(c.URL)
	if err != nil {
		return nil, fmt.Errorf("parse redis url: %w", err)
	}
	opt.Dialer.Timeout = c.Timeout
	opt.ConnWriteTimeout = c.Timeout
	opt.DisableCache = c.DisableCache
	opt.CacheSizeEachConn = c.CacheSizeMB << 20
	opt.DisableRetry = true // callers decide; a retry loop here would hide an outage behind latency
	opt.ForceSingleClient = true
	opt.ClientName = c.ClientName
	if opt.TLSConfig != nil {
		// Added to what the URL set (the server name, skip_verify).
		if err := c.loadTLS(opt.TLSConfig); err != nil {
			return nil, err
		}
	}
	switch c.Connections {
	case 0: // rueidis' choice
	case 1:
		opt.PipelineMultiplex = -1 // 0 would mean rueidis' choice
	default:
		opt.PipelineMultiplex = bits.Len(uint(c.Connections)) - 1
	}
	// With ForceSingleClient rueidis hands back a client even when the first dial fails; it
	// dials again on use, so a Redis that comes up after us is picked up without a restart.
	cl, err := rueidis.NewClient(opt)
	if cl == nil {
		return nil, fmt.Errorf("open redis client: %w", err)
	}
	return cl, nil
}

// loadTLS reads the TLS files into t.
func (c Config) loadTLS(t *tls.Config) error {
	if c.TLSCAFile != "" {
		pem, err := os.ReadFile(c.TLSCAFile)
		if err != nil {
			return fmt.Errorf("--redis.tls-ca-file: %w", err)
		}
		t.RootCAs = x509.NewCertPool()
		if !t.RootCAs.AppendCertsFromPEM(pem) {
			return fmt.Errorf("--redis.tls-ca-file %s: no PEM certificate in it", c.TLSCAFile)
		}
	}
	if c.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.TLSCertFile, c.TLSKeyFile)
		if err != nil {
			return fmt.Errorf("--redis.tls-cert-file/--redis.tls-key-file: %w", err)
		}
		t.Certificates = []tls.Certificate{cert}
	}
	return nil
}

// Ping checks the server with a bounded wait.
func Ping(ctx context.Context, cl rueidis.Client, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := cl.Do(ctx, cl.B().Ping().Build()).Error(); err != nil {
		return fmt.Errorf("redis ping: %w", err)
	}
	return nil
}

// ErrNotOpen is returned when a module uses Redis without declaring the need.
var ErrNotOpen = errors.New("redis client not opened")
