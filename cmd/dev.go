package cmd

import (
	"fmt"
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
PostgreSQL binaries in a temporary folder (removed on exit). The schema is migrated, then the
base URL and a working curl example are printed. Pass --pg.dsn, --kafka.brokers or
--redis.url (or their environment variables) to use real servers instead.
For development only: data is gone when the process stops.`,
		Args:        cobra.NoArgs,
		Annotations: map[string]string{warnUnreadAnnotation: "true"},
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := lc.logger(os.Stderr)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			set := func(flag string) bool { return flagenv.Source(cmd.Flags().Lookup(flag)) != "default" }
			if !set("pg.dsn") {
				pg, err := devstack.StartPostgres(ctx)
				if err != nil {
					return err
				}
				defer pg.Close()
				rf.infra.PG.DSN = pg.URL()
				log.Info("dev postgres started", "dsn", pg.URL())
			}
			if !set("kafka.brokers") {
				k, err := devstack.StartKafka()
				if err != nil {
					return err
				}
				defer k.Close()
				rf.infra.Kafka.Brokers = k.Addrs()
				log.Info("dev kafka (kfake) started", "brokers", k.Addrs())
			}
			if !set("redis.url") {
				r, err := devstack.StartRedis()
				if err != nil {
					return err
				}
				defer r.Close()
				rf.infra.Redis.URL = "redis://" + r.Addr() + "/0"
				rf.infra.Redis.DisableCache = true
				log.Info("dev redis (miniredis) started", "addr", r.Addr())
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
			base := devBaseURL(rf.http.Addr)
			fmt.Fprintf(cmd.ErrOrStderr(), `
recsys dev is starting on %[1]s (all roles, embedded services; Ctrl-C stops and removes them)
  curl -s '%[1]s/readyz'
  curl -s -XPOST '%[1]s/log/watch' -H 'Content-Type: application/json' \
    -d '{"user_id":"u1","session_id":"s1","request_id":"r1","item_id":"i1","watch_time_sec":42,"ts_ms":'$(date +%%s000)'}'
  curl -s '%[1]s/reco?user_id=u1&session_id=s1&k=10'

`, base)
			return rf.run(cmd, lc, log)
		},
	}
	infos, _ := module.Default().Resolve(rf.roles)
	rf.register(cmd.Flags(), infos)
	return cmd
}

func devBaseURL(addr string) string {
	host, port := "127.0.0.1", strings.TrimPrefix(addr, ":")
	if i := strings.LastIndex(addr, ":"); i > 0 {
		if h := addr[:i]; h != "0.0.0.0" && h != "" {
			host = h
		}
		port = addr[i+1:]
	}
	return "http://" + host + ":" + port
}
