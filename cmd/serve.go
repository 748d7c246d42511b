package cmd

import (
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"recsys/modules/analytics"
	"recsys/modules/consumer"
	"recsys/modules/ingest"
	"recsys/modules/reco"
	"recsys/modules/relay"
	"recsys/pkg/app"
	"recsys/pkg/flagenv"
	"recsys/pkg/gctune"
	"recsys/pkg/httpx"
	"recsys/pkg/infra"
	writer "recsys/pkg/ingest"
	"recsys/pkg/module"
)

// runFlags is the configuration of a process that runs modules.
type runFlags struct {
	roles    []string
	gc       gctune.Config
	http     httpx.Config
	shutdown app.ShutdownConfig
	infra    infra.Config
	configs  map[string]module.Config
	// onReady, optional, gets the address the server listens on (dev mode's banner).
	onReady func(addr string)
}

// register adds the flags of the given modules and of the clients they need. serve registers
// every module's flags because the roles are known only after parsing (as Loki does with
// -target); presets register only their own closure so their --help stays short.
func (r *runFlags) register(fs *pflag.FlagSet, infos []module.Info) {
	r.gc = gctune.DefaultConfig()
	r.http = httpx.DefaultConfig()
	r.shutdown = app.ShutdownConfig{Delay: 0, Timeout: 25e9}
	r.infra = infra.DefaultConfig()
	r.configs = map[string]module.Config{}
	var need infra.Need
	for _, i := range infos {
		need |= i.Needs
		c := i.NewConfig()
		c.RegisterFlags(fs)
		r.configs[i.Name] = c
	}
	r.gc.RegisterFlags(fs)
	r.http.RegisterFlags(fs)
	flagenv.Alias(fs, "http.addr", "API_ADDR")
	r.shutdown.RegisterFlags(fs)
	r.infra.RegisterFlags(fs, need)
}

func (r *runFlags) run(cmd *cobra.Command, lc *logConfig, log *slog.Logger) error {
	if log == nil {
		var err error
		if log, err = lc.logger(os.Stderr); err != nil {
			return err
		}
	}
	if err := r.gc.Validate(); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	log.Info("configuration", "roles", r.roles, "flags", flagenv.Effective(cmd.Flags()), "gc", r.gc.Apply())
	linkConfigs(r.configs)
	version, _ := Version()
	return app.Run(cmd.Context(), app.Options{Registry: module.Default(), Roles: r.roles, HTTP: r.http, Version: version,
		Shutdown: r.shutdown, Infra: r.infra, Configs: r.configs, Log: log, OnReady: r.onReady,
		CrossCheck: func(selected map[string]module.Config) error {
			for _, w := range crossWarnings(selected, r.infra.PG.MaxConns) {
				log.Warn(w)
			}
			return crossCheck(selected, r.configs, r.http)
		}})
}

// crossWarnings are the settings of two modules run together that work but deserve a word.
func crossWarnings(selected map[string]module.Config, pgMaxConns int) []string {
	var out []string
	if need, parts := pgDemand(selected); need > pgMaxConns {
		out = append(out, fmt.Sprintf("--pg.max-conns (%d) is below the PostgreSQL connections this process's modules may hold at once (%d: %s): the rest wait for a connection (up to --pg.acquire-timeout) when all are busy", pgMaxConns, need, strings.Join(parts, ", ")))
	}
	in, okI := selected["ingest"].(*ingest.Config)
	_, okA := selected["analytics"].(*analytics.Config)
	// A roll-up rebuild (a definition change) starts from the oldest raw row: until the
	// window refills, a 30-day baseline counts only what the raw tables still hold.
	if longest := 30 * 24 * time.Hour; okI && okA && in.RawRetention != 0 && in.RawRetention < longest {
		out = append(out, fmt.Sprintf("--ingest.raw-retention (%s) is shorter than the longest KPI window (30 days): after a roll-up rebuild, GET /analytics/baseline covers only the last %s until the window refills", in.RawRetention, in.RawRetention))
	}
	return out
}

// pgDemand is how many pool connections the selected modules may hold at once: their
// concurrent transactions (the relay's LISTEN connection is its own, outside the pool).
func pgDemand(selected map[string]module.Config) (int, []string) {
	var need int
	var parts []string
	add := func(n int, what string) {
		need += n
		parts = append(parts, fmt.Sprintf("%d %s", n, what))
	}
	if c, ok := selected["ingest"].(*ingest.Config); ok {
		add(c.GroupCommitWorkers, "--ingest.group-commit-workers")
	}
	if c, ok := selected["reco"].(*reco.Config); ok {
		add(c.AutologCommitWorkers, "--reco.autolog-commit-workers")
		add(c.PGMaxConcurrent, "--reco.pg-max-concurrent")
	}
	if _, ok := selected["analytics"]; ok {
		add(1, "analytics roll-up")
	}
	if c, ok := selected["relay"].(*relay.Config); ok {
		add(c.Workers, "--relay.workers")
	}
	if c, ok := selected["consumer"].(*consumer.Config); ok {
		add(c.MaxInFlight+1, "--consumer.max-in-flight + its heal loop")
	}
	return need, parts
}

// crossCheck holds the rules between two modules' settings. selected are the configs of the
// modules this process runs, all those whose flags it registered: serve registers every
// module's, so an api pod given the relay's settings (a ConfigMap shared by the roles) checks
// its event limit against them. Rules between selected modules hold where both run in one
// process (split roles cannot see each other's flags; docs/configuration.md states them).
func crossCheck(selected, all map[string]module.Config, hc httpx.Config) error {
	var p flagenv.Problems
	in, okI := selected["ingest"].(*ingest.Config)
	an, okA := selected["analytics"].(*analytics.Config)
	// The server closes a connection whose answer is not written within --http.write-timeout:
	// a request allowed to take longer gets no answer at all, not even its own 503.
	if okA && an.QueryTimeout >= hc.WriteTimeout {
		p.Addf("--analytics.query-timeout (%s) must be below --http.write-timeout (%s): a baseline answered later never reaches its client", an.QueryTimeout, hc.WriteTimeout)
	}
	if okI && 2*in.WriteTimeout >= hc.WriteTimeout {
		p.Addf("--ingest.write-timeout (%s) must be below half --http.write-timeout (%s): a request may wait that long for a writer and again in its transaction, and an answer written later never reaches its client", in.WriteTimeout, hc.WriteTimeout)
	}
	if rl, ok := all["relay"].(*relay.Config); okI && ok && int64(in.MaxEventBytes)+writer.MessageOverhead > rl.MaxBatchBytes {
		// The relay could never publish the largest event the API accepts.
		p.Addf("--ingest.max-event-bytes (%d) must stay at least %d bytes below --relay.max-batch-bytes (%d)", in.MaxEventBytes, writer.MessageOverhead, rl.MaxBatchBytes)
	}
	// A row received before the roll-up's horizon must be committed by then: /reco's autolog
	// stamps an impression when it writes it (restamped on a retry), and the write may wait
	// up to its timeout in the writer's queue and take up to its timeout once taken.
	if rc, ok := selected["reco"].(*reco.Config); okA && ok && an.CommitMargin <= 2*rc.AutologWriteTimeout {
		p.Addf("--analytics.commit-margin (%s) must exceed twice --reco.autolog-write-timeout (%s): an impression may wait that long in the queue and again in its transaction", an.CommitMargin, rc.AutologWriteTimeout)
	}
	if !okA || !okI {
		return p.Err()
	}
	// The same for a write of the ingest module: up to twice the ingest write timeout.
	if an.CommitMargin <= 2*in.WriteTimeout {
		p.Addf("--analytics.commit-margin (%s) must exceed twice --ingest.write-timeout (%s): a request may wait that long for a writer and again in its transaction", an.CommitMargin, in.WriteTimeout)
	}
	// The roll-up folds raw rows attribution window + commit margin behind the clock; rows
	// deleted before that are never counted.
	if lag := an.AttributionWindow + an.CommitMargin; in.RawRetention != 0 && in.RawRetention < lag {
		p.Addf("--ingest.raw-retention (%s) must be 0 or at least --analytics.attribution-window + --analytics.commit-margin (%s)", in.RawRetention, lag)
	}
	return p.Err()
}

// linkConfigs hands a module the settings of another that it serves: /contract (ingest)
// states the latency targets /metrics/reco (reco) judges against.
func linkConfigs(all map[string]module.Config) {
	in, okI := all["ingest"].(*ingest.Config)
	rc, okR := all["reco"].(*reco.Config)
	if okI && okR {
		in.SLATargetP95Ms, in.SLATargetP99Ms = rc.SLATargetP95Ms, rc.SLATargetP99Ms
	}
}

func newServeCmd(lc *logConfig) *cobra.Command {
	var rf runFlags
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the selected roles in one process (--roles api,relay,consumer or all)",
		Long: fmt.Sprintf(`Run the selected roles in one process. Roles: %s, or all.
Each role can run alone (one pod per role) or colocated; the code path is the same.
/healthz, /readyz, /metrics and /metrics/prometheus are served on --http.addr by every process.`,
			strings.Join(module.Default().Roles(), ", ")),
		Args:        cobra.NoArgs,
		Annotations: map[string]string{warnUnreadAnnotation: "true"},
		RunE:        func(cmd *cobra.Command, _ []string) error { return rf.run(cmd, lc, nil) },
	}
	cmd.Flags().StringSliceVar(&rf.roles, "roles", []string{"api"}, "roles to run: comma list of "+strings.Join(module.Default().Roles(), ", ")+", or all")
	rf.register(cmd.Flags(), module.Default().All())
	return cmd
}

func newRolePresetCmd(lc *logConfig, use, short string, roles []string) *cobra.Command {
	var rf runFlags
	rf.roles = roles
	infos, err := module.Default().Resolve(roles)
	if err != nil {
		panic(fmt.Sprintf("preset %s: %v", use, err)) // a registry bug; the registry test catches it
	}
	cmd := &cobra.Command{
		Use:         use,
		Short:       short,
		Long:        short + ".\nSame as `recsys serve --roles " + strings.Join(roles, ",") + "`.",
		Args:        cobra.NoArgs,
		Annotations: map[string]string{warnUnreadAnnotation: "true"},
		RunE:        func(cmd *cobra.Command, _ []string) error { return rf.run(cmd, lc, nil) },
	}
	rf.register(cmd.Flags(), infos)
	return cmd
}
