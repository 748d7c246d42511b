package infra

import (
	"crypto/tls"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"strings"

	"github.com/redis/rueidis"

	"recsys/pkg/kafka"
	"recsys/pkg/postgres"
)

// warnUnverified logs one warning per client in need whose connections to a host off this
// machine do not verify the server: whoever sits on the path (a compromised pod, ARP or DNS
// spoofing) can then pose as it, read the events and features, and take the password. Not an
// error, since a private network may be trusted on purpose; the connection settings are never
// logged, only the setting's name and the hosts.
func warnUnverified(log *slog.Logger, cfg Config, need Need) {
	if need.Has(Postgres) {
		if hosts, plain := pgUnverified(cfg.PG); len(hosts) > 0 {
			reason := "sslmode=require encrypts without checking the server's certificate"
			if plain {
				reason = "without sslmode, or with sslmode=prefer, allow or disable, the connection may be plain text"
			}
			log.Warn("PostgreSQL connection does not verify the server: set sslmode=verify-full (with sslrootcert for a private CA)",
				"setting", "--pg.dsn", "hosts", hosts, "reason", reason)
		}
	}
	if need.Has(Redis) {
		if host, plain := redisUnverified(cfg.Redis.URL); host != "" {
			reason := "rediss:// with skip_verify does not check the server's certificate"
			if plain {
				reason = "redis:// is plain text"
			}
			log.Warn("Redis connection does not verify the server: use a rediss:// URL (with --redis.tls-ca-file for a private CA)",
				"setting", "--redis.url", "hosts", []string{host}, "reason", reason)
		}
	}
	if need.Has(Kafka) && !cfg.Kafka.Security.TLS {
		var hosts []string
		for _, b := range cfg.Kafka.Brokers {
			if h := hostOf(b); !local(h) && !slices.Contains(hosts, h) {
				hosts = append(hosts, h)
			}
		}
		if len(hosts) > 0 {
			reason := "the brokers are reached in plain text"
			if cfg.Kafka.Security.SASLMechanism == kafka.SASLPlain {
				reason += ", and SASL PLAIN sends the password as it is"
			}
			log.Warn("Kafka connections do not verify the brokers: set --kafka.tls",
				"setting", "--kafka.tls", "hosts", hosts, "reason", reason)
		}
	}
}

// WarnUnverifiedPostgres logs Open's warning about --pg.dsn for a command that connects
// without Open (migrate), often the first to reach a new database.
func WarnUnverifiedPostgres(log *slog.Logger, dsn string) {
	warnUnverified(log, Config{PG: postgres.Config{DSN: dsn}}, Postgres)
}

// pgUnverified lists the hosts off this machine that a connection of dsn may reach without
// verifying the server, and whether it may even be plain text. pgx's own parse decides, as it
// does for the connections: sslmode, sslrootcert, PGSSLMODE and every host of a multi-host
// string are read as it reads them.
func pgUnverified(c postgres.Config) (hosts []string, plain bool) {
	pc, err := postgres.ParseDSN(c.DSN)
	if err != nil {
		return nil, false // refused by Validate before
	}
	cc := pc.ConnConfig.Config
	type target struct {
		host string
		tls  *tls.Config
	}
	targets := []target{{cc.Host, cc.TLSConfig}}
	for _, f := range cc.Fallbacks {
		targets = append(targets, target{f.Host, f.TLSConfig})
	}
	for _, t := range targets {
		// verify-ca skips Go's check to do its own without the host name (pgconn).
		verified := t.tls != nil && (!t.tls.InsecureSkipVerify || t.tls.VerifyPeerCertificate != nil)
		if verified || local(t.host) {
			continue
		}
		plain = plain || t.tls == nil
		if !slices.Contains(hosts, t.host) {
			hosts = append(hosts, t.host)
		}
	}
	return hosts, plain
}

// redisUnverified returns the host of a Redis URL off this machine whose server is not
// verified ("" when it is, or is local), and whether the connection is plain text.
func redisUnverified(u string) (host string, plain bool) {
	if pu, err := url.Parse(u); err != nil || pu.Scheme == "unix" {
		return "", false
	}
	opt, err := rueidis.ParseURL(u)
	if err != nil || len(opt.InitAddress) == 0 {
		return "", false // refused by Validate before
	}
	if opt.TLSConfig != nil && !opt.TLSConfig.InsecureSkipVerify {
		return "", false
	}
	h := hostOf(opt.InitAddress[0])
	if local(h) {
		return "", false
	}
	return h, opt.TLSConfig == nil
}

func hostOf(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}

// local reports a host whose traffic does not leave the machine: a Unix socket's path, the
// loopback name or a loopback address. A name is not resolved: only "localhost" is trusted.
func local(host string) bool {
	if strings.HasPrefix(host, "/") || strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}
