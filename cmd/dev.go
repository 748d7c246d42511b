package cmd

import (
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"recsys/pkg/devstack"
	"recsys/pkg/flagenv"
	"recsys/pkg/migrate"
	"recsys/pkg/module"
)

func newDevCmd(lc *logConfig) *cobra.Command {
	var rf runFlags
	rf.roles = []string{"all"}
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run every role with zero setup: in-process Kafka and Redis, a throwaway PostgreSQL",
		Long: `Run every role in one process with embedded defaults: Kafka in-process (kfake),
Redis in-process (miniredis) and a private PostgreSQL cluster started from the local
PostgreSQL binaries in a temporary folder (removed on exit, or at the next start when the
process was killed: a second Ctrl-C, kill -9). Ctrl-C, SIGTERM and SIGHUP (the terminal
closed) stop it cleanly. The schema is migrated, then the
base URL and a working curl example are printed. Pass --pg.dsn, --kafka.brokers or
--redis.url (or their environment variables, DATABASE_URL and the like) to use real servers
instead; the start-up banner says which services are embedded and which are external. A real
Kafka or Redis needs a real PostgreSQL too (their data belongs to it): with an embedded one,
dev mode refuses to start.
For development only: data is gone when the process stops.`,
		Args:        cobra.NoArgs,
		Annotations: map[string]string{warnUnreadAnnotation: "true"},
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := lc.logger(os.Stderr)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			source := func(flag string) string { return flagenv.Source(cmd.Flags().Lookup(flag)) }
			if err := devMixErr(source("pg.dsn"), source("kafka.brokers"), source("redis.url")); err != nil {
				return err
			}
			var services []devService
			if src := source("pg.dsn"); src != "default" {
				services = append(services, devService{name: "PostgreSQL", where: flagenv.Redact(rf.infra.PG.DSN), source: src})
			} else {
				reaped, err := devstack.ReapStale()
				for _, dir := range reaped {
					log.Info("stopped and removed the dev postgres of an earlier run that ended without its clean-up", "dir", dir)
				}
				if err != nil {
					log.Warn("leftover dev postgres not removed", "err", err)
				}
				pg, err := devstack.StartPostgres(ctx)
				if err != nil {
					return err
				}
				defer pg.Close()
				rf.infra.PG.DSN = pg.URL()
				log.Info("dev postgres started", "dsn", flagenv.Redact(pg.URL()))
				// The banner, on the developer's terminal, has the password, for psql.
				services = append(services, devService{name: "PostgreSQL", where: pg.URL()})
			}
			if src := source("kafka.brokers"); src != "default" {
				services = append(services, devService{name: "Kafka", where: strings.Join(rf.infra.Kafka.Brokers, ","), source: src})
			} else {
				k, err := devstack.StartKafka()
				if err != nil {
					return err
				}
				defer k.Close()
				rf.infra.Kafka.Brokers = k.Addrs()
				log.Info("dev kafka (kfake) started", "brokers", k.Addrs())
				services = append(services, devService{name: "Kafka (kfake)", where: strings.Join(k.Addrs(), ",")})
			}
			if src := source("redis.url"); src != "default" {
				services = append(services, devService{name: "Redis", where: flagenv.Redact(rf.infra.Redis.URL), source: src})
			} else {
				r, err := devstack.StartRedis()
				if err != nil {
					return err
				}
				defer r.Close()
				rf.infra.Redis.URL = "redis://" + r.Addr() + "/0"
				rf.infra.Redis.DisableCache = true
				log.Info("dev redis (miniredis) started", "addr", r.Addr())
				services = append(services, devService{name: "Redis (miniredis)", where: r.Addr()})
			}
			m, err := migrate.Open(rf.infra.PG.DSN)
			if err != nil {
				return err
			}
			err = m.Up(ctx)
			m.Close()
			if err != nil {
				return err
			}
			// Printed once the server listens, with the address it got: --http.addr with port
			// 0 has no port to print before.
			rf.onReady = func(addr string) { fmt.Fprint(cmd.ErrOrStderr(), devBanner(devBaseURL(addr), services)) }
			return rf.run(cmd, lc, log)
		},
	}
	infos, _ := module.Default().Resolve(rf.roles)
	rf.register(cmd.Flags(), infos)
	return cmd
}

// devMixErr refuses an embedded PostgreSQL next to a real Kafka or Redis (src: where each
// setting came from, "default" when embedded). Their data belongs to another database, and
// the throwaway one is empty: the consumer repopulated the real Redis copy from it (deleting
// every feature under the key prefix) and, in the real Kafka's consumer group, took
// partitions from the real consumers and committed offsets for events it applied to the
// throwaway database only, lost to the deployment they belonged to.
func devMixErr(pgSrc, kafkaSrc, redisSrc string) error {
	if pgSrc != "default" {
		return nil
	}
	var real, drop, harm []string
	for _, s := range []struct{ name, flag, src, harm string }{
		{"Kafka", "--kafka.brokers", kafkaSrc, "take the real topics' events from the consumers they belong to into the throwaway database"},
		{"Redis", "--redis.url", redisSrc, "overwrite the real Redis copy from the empty database"},
	} {
		switch s.src {
		case "default":
			continue
		case "flag":
			drop = append(drop, "drop "+s.flag)
		default:
			drop = append(drop, "unset "+s.src)
		}
		from := s.src
		if from == "flag" {
			from = s.flag
		}
		real = append(real, s.name+" (from "+from+")")
		harm = append(harm, s.harm)
	}
	if len(real) == 0 {
		return nil
	}
	verb := "is a real server"
	if len(real) > 1 {
		verb = "are real servers"
	}
	return fmt.Errorf("PostgreSQL would be embedded (empty), but %s %s, whose data belongs to another database: "+
		"the consumer would %s. To run everything embedded, %s; to use real servers, also pass --pg.dsn (DATABASE_URL) of their database",
		strings.Join(real, " and "), verb, strings.Join(harm, " and "), strings.Join(drop, " and "))
}

// devService is one backing service of `recsys dev`: embedded (started here, removed on exit)
// unless source names the flag or environment variable that pointed it at a real server.
type devService struct {
	name, where, source string
}

// devBanner tells which services are embedded and which are real ones taken from the
// environment (an exported DATABASE_URL, say), whose data outlives the process.
func devBanner(base string, services []devService) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\nrecsys dev is listening on %s (all roles; Ctrl-C stops it)\n", base)
	for _, s := range services {
		if s.source == "" {
			fmt.Fprintf(&b, "  embedded  %-18s %s (removed on exit)\n", s.name, s.where)
		} else {
			fmt.Fprintf(&b, "  EXTERNAL  %-18s %s (from %s; its data is kept)\n", s.name, s.where, s.source)
		}
	}
	fmt.Fprintf(&b, `  curl -s '%[1]s/readyz'
  curl -s -XPOST '%[1]s/log/watch' -H 'Content-Type: application/json' \
    -d '{"user_id":"u1","session_id":"s1","request_id":"r1","item_id":"i1","watch_time_sec":42,"ts_ms":'$(date +%%s000)'}'
  curl -s '%[1]s/reco?user_id=u1&session_id=s1&k=10'

`, base)
	return b.String()
}

// devBaseURL is the URL of listen address addr; an unspecified host (all interfaces) is
// reached on 127.0.0.1.
func devBaseURL(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "http://" + addr
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port)
}
