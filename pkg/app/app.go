// Package app runs a set of modules as one process: resolve the roles, open the shared
// clients they need, build every module, serve HTTP, run, aggregate health, and shut down in
// order. `recsys all` and a single-role pod run this same code path.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/labstack/echo/v4"
	"github.com/spf13/pflag"

	"recsys/pkg/httpx"
	"recsys/pkg/infra"
	"recsys/pkg/logging"
	"recsys/pkg/migrate"
	"recsys/pkg/module"
	"recsys/pkg/openapi"
	"recsys/pkg/redis"
)

// ShutdownConfig bounds the drain (flags shutdown.*).
type ShutdownConfig struct {
	Delay   time.Duration
	Timeout time.Duration
}

// RegisterFlags adds the shutdown.* flags.
func (c *ShutdownConfig) RegisterFlags(fs *pflag.FlagSet) {
	fs.DurationVar(&c.Delay, "shutdown.delay", c.Delay, "time /readyz answers 503 before the server stops accepting requests (lets load balancers move traffic away)")
	fs.DurationVar(&c.Timeout, "shutdown.timeout", c.Timeout, "upper bound of the whole shutdown; keep it below the orchestrator's grace period")
}

// Validate reports invalid settings.
func (c ShutdownConfig) Validate() error {
	var errs []error
	if c.Delay < 0 {
		errs = append(errs, fmt.Errorf("--shutdown.delay must be >= 0, got %s", c.Delay))
	}
	if c.Timeout <= c.Delay {
		errs = append(errs, fmt.Errorf("--shutdown.timeout (%s) must be greater than --shutdown.delay (%s)", c.Timeout, c.Delay))
	}
	return errors.Join(errs...)
}

// Options is everything Run needs.
type Options struct {
	Registry *module.Registry
	Roles    []string
	HTTP     httpx.Config
	Shutdown ShutdownConfig
	Infra    infra.Config
	Configs  map[string]module.Config // by module name; missing entries get defaults
	Log      *slog.Logger
	Listener net.Listener       // optional; tests pass one bound to port 0
	OnReady  func(addr string)  // optional; called once the server listens
	Extra    func(e *echo.Echo) // optional extra routes (dev mode banner etc.), not in /openapi.json
	Version  string             // the build's version, for /openapi.json's info.version ("dev" if empty)
	// CrossCheck, optional, validates settings that span modules; it sees the configs of the
	// modules this process runs only (by name), so a rule applies where both modules run.
	CrossCheck func(cfgs map[string]module.Config) error
}

type running struct {
	info   module.Info
	mod    module.Module
	cancel context.CancelFunc
	done   chan struct{}
	err    error
	state  atomic.Value // string
}

// RateLimitClientName is the CLIENT LIST name of the Redis connection that counts the API
// keys' rates with --http.rate-limit-scope=cluster, apart from the process' feature client.
const RateLimitClientName = "recsys-rate-limits"

// Run runs the selected roles until ctx is cancelled or a module fails. It returns nil after a
// clean stop and an error naming the module after a failure.
func Run(ctx context.Context, o Options) error {
	infos, err := o.Registry.Resolve(o.Roles)
	if err != nil {
		return err
	}
	var need, optional infra.Need
	for _, i := range infos {
		need |= i.Needs
		optional |= i.Optional
	}
	// A need is soft only when every module that has it can run without it.
	for _, i := range infos {
		optional &^= i.Needs &^ i.Optional
	}
	cfgs := map[string]module.Config{}
	errs := []error{o.HTTP.Validate(), o.Shutdown.Validate(), o.Infra.Validate(need)}
	for _, i := range infos {
		c := o.Configs[i.Name]
		if c == nil {
			c = i.NewConfig()
		}
		cfgs[i.Name] = c
		if err := c.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("module %s: %w", i.Name, err))
		}
	}
	if o.HTTP.APIKeysFile != "" && o.HTTP.RateLimitScope == httpx.RateLimitCluster && !need.Has(infra.Redis) {
		// Opening Redis for the limits alone would give a role that never needed it a
		// dependency to fail on; the keys' budgets matter where the product API runs.
		errs = append(errs, fmt.Errorf("--http.rate-limit-scope=%s counts the API keys' rates in Redis, which the roles of this process (%s) do not use: set it to %s here, or run the keys on a process with the api role",
			httpx.RateLimitCluster, strings.Join(o.Roles, ","), httpx.RateLimitProcess))
	}
	if o.CrossCheck != nil {
		errs = append(errs, o.CrossCheck(cfgs))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}

	if pm := processModule(infos); pm != "" {
		o.Log = logging.WithComponent(o.Log, pm)
	}
	in, err := infra.Open(ctx, o.Infra, need, o.Log)
	if err != nil {
		return err
	}
	// Once the modules run, shutdown closes the clients within its deadline instead: closing
	// the pool waits for every connection a module or a request still holds.
	var started bool
	defer func() {
		if !started {
			in.Close()
		}
	}()

	e := httpx.New(o.HTTP, httpLogger(o.Log, infos))
	var mods []*running
	for _, i := range infos {
		m, err := i.New(cfgs[i.Name], in.Deps(i.Name, i.Needs))
		if err != nil {
			return fmt.Errorf("build module %s: %w", i.Name, err)
		}
		if rr, ok := m.(module.RouteRegistrar); ok {
			rr.RegisterRoutes(e)
		}
		r := &running{info: i, mod: m, done: make(chan struct{})}
		r.state.Store("starting")
		mods = append(mods, r)
	}

	var draining atomic.Bool
	checkMetrics := metrics.NewSet()
	metrics.RegisterSet(checkMetrics)
	defer metrics.UnregisterSet(checkMetrics, true)
	h := &health{mods: mods, in: in, optional: optional, draining: &draining, metrics: checkMetrics,
		details: make([]atomic.Pointer[map[string]any], len(mods))}
	e.GET("/healthz", h.healthz)
	e.GET("/livez", h.healthz)
	e.GET("/readyz", h.readyz)
	e.GET("/metrics", httpx.MetricsHandler)
	e.GET("/metrics/prometheus", httpx.MetricsHandler)
	if err := openapi.Serve(e, describe(o, mods)); err != nil {
		return err
	}
	if o.Extra != nil {
		o.Extra(e)
	}
	if o.HTTP.APIKeysFile != "" {
		// Installed after every module's middleware (echo runs them in order of Use), so
		// /reco's window records the 401s and 403s on its path like its other 4xx.
		limits := httpx.RateLimits{Scope: o.HTTP.RateLimitScope, KeyPrefix: o.Infra.Redis.KeyPrefix}
		if limits.Scope == httpx.RateLimitCluster {
			// A connection of its own: the limiter's 50 ms timeout closes the connection it
			// expires on (rueidis, one request in flight), which must not be the one that
			// carries /reco's feature reads and their longer budget.
			rc := o.Infra.Redis
			rc.ClientName, rc.DisableCache, rc.Connections = RateLimitClientName, true, 1
			rd, err := redis.Open(rc)
			if err != nil {
				return fmt.Errorf("open redis client for --http.rate-limit-scope=%s: %w", httpx.RateLimitCluster, err)
			}
			defer rd.Close()
			limits.Redis = rd
		}
		auth, err := httpx.NewAuth(o.HTTP.APIKeysFile, o.Log, limits)
		if err != nil {
			return err
		}
		e.Use(auth.Middleware)
	}

	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	var failed atomic.Pointer[error]
	fail := func(err error) {
		if failed.CompareAndSwap(nil, &err) {
			stop(err)
		}
	}

	// Modules that cannot work without PostgreSQL (relay, consumer) start only once the schema
	// is at least this binary's: on an older schema they would publish or fold events against
	// tables they do not match. The others start at once and serve degraded meanwhile.
	var schemaOK chan struct{}
	var gatedNames []string
	for _, r := range mods {
		if gated(r.info) {
			gatedNames = append(gatedNames, r.info.Name)
		}
	}
	if len(gatedNames) > 0 {
		// Checked once here so a current schema starts everything at once, without a
		// moment of "waiting".
		if err := schemaErr(ctx, in); refused(err) {
			// Its relay or consumer would publish or fold events against a schema
			// changed in a way it cannot follow.
			return fmt.Errorf("refusing to start module %s: %w", gatedNames[0], err)
		} else if err != nil {
			schemaOK = make(chan struct{})
			go func() {
				if waitForSchema(ctx, in, o.Log, schemaOK, err, fail) {
					watchSchema(ctx, in, gatedNames, fail)
				}
			}()
		} else {
			go watchSchema(ctx, in, gatedNames, fail)
		}
	}
	// Bound before any module runs: on a taken address (a second instance by mistake) a
	// relay or consumer started for nothing would claim outbox rows and join the consumer
	// group, pausing the instances that do run for a lease and two rebalances.
	ln := o.Listener
	if ln == nil {
		if ln, err = net.Listen("tcp", o.HTTP.Addr); err != nil {
			return fmt.Errorf("listen on %s: %w", o.HTTP.Addr, err)
		}
	}
	started = true
	for _, r := range mods {
		mctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		r.cancel = cancel
		var wait chan struct{}
		if gated(r.info) && schemaOK != nil {
			wait = schemaOK
			r.state.Store(fmt.Sprintf("waiting for schema version %d", migrate.Latest()))
		} else {
			r.state.Store("running")
		}
		go func() {
			defer close(r.done)
			if wait != nil {
				select {
				case <-wait:
				case <-mctx.Done():
					r.state.Store("stopped")
					return
				}
				r.state.Store("running")
			}
			err := r.mod.Run(mctx)
			if mctx.Err() == nil {
				if err == nil {
					err = errors.New("exited unexpectedly")
				}
				r.err = err
				r.state.Store("failed: " + err.Error())
				fail(fmt.Errorf("module %s: %w", r.info.Name, err))
				return
			}
			if err != nil && !errors.Is(err, context.Canceled) {
				r.err = err
				r.state.Store("failed: " + err.Error())
				fail(fmt.Errorf("module %s: %w", r.info.Name, err))
				return
			}
			r.state.Store("stopped")
		}()
	}

	srv := o.HTTP.Server(e)
	ln = httpx.LimitConnections(ln, o.HTTP.MaxConnections, srv)
	httpx.WarnDescriptorLimit(o.Log, o.HTTP.MaxConnections)
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fail(fmt.Errorf("http server: %w", err))
		}
	}()
	names := make([]string, len(infos))
	for k, i := range infos {
		names[k] = i.Name
	}
	o.Log.Info("started", "modules", names, "addr", ln.Addr().String())
	if o.OnReady != nil {
		o.OnReady(ln.Addr().String())
	}

	<-ctx.Done()
	var cause error
	if p := failed.Load(); p != nil {
		cause = *p
	}
	return shutdown(o, mods, in, srv, &draining, cause)
}

// gated reports whether a module must wait for the schema: it needs PostgreSQL and has no
// mode without it.
func gated(i module.Info) bool {
	return i.Needs.Has(infra.Postgres) && !i.Optional.Has(infra.Postgres)
}

// schemaPoll is how often a process waiting for the schema reads its version.
var schemaPoll = time.Second

// schemaErr reads the schema version and judges it (a schema ahead of the binary passes,
// unless a migration of it refuses this binary: a *migrate.TooOldError).
func schemaErr(ctx context.Context, in *infra.Infra) error {
	ctx, cancel := context.WithTimeout(ctx, infra.CheckBudget)
	defer cancel()
	return migrate.CheckSchema(ctx, in.PG)
}

// refused reports whether a schema verdict is a refusal of this binary, which no wait ends:
// only another image, or the schema reverted, does.
func refused(err error) bool {
	var old *migrate.TooOldError
	return errors.As(err, &old)
}

// waitForSchema closes ok once schemaErr passes, polling until ctx ends, and reports whether
// it did; err is the first verdict. It logs when the reason for waiting changes, not on every
// poll. A schema that moves ahead meanwhile to one that refuses this binary is passed to fail.
func waitForSchema(ctx context.Context, in *infra.Infra, log *slog.Logger, ok chan<- struct{}, err error, fail func(error)) bool {
	msg := fmt.Sprintf("waiting for schema version %d", migrate.Latest())
	log.Warn(msg, "reason", err.Error())
	last := err.Error()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(schemaPoll):
		}
		err := schemaErr(ctx, in)
		if err == nil {
			log.Info("schema ready, starting the modules that waited for it")
			close(ok)
			return true
		}
		if refused(err) {
			fail(fmt.Errorf("refusing to start the modules that waited for the schema: %w", err))
			return false
		}
		if ctx.Err() == nil && err.Error() != last {
			last = err.Error()
			log.Warn(msg, "reason", last)
		}
	}
}

// schemaWatch is how often a process running a relay or consumer re-reads the schema's
// verdict: it bounds how long they go on after a breaking migration commits (a few small
// queries, the last two only while the schema is ahead of the binary).
var schemaWatch = 5 * time.Second

// watchSchema stops the process (fail) once the schema refuses this binary: a breaking
// migration applied while the relay or consumer ran, as every rollout of one does to the
// previous release's pods. They would go on writing what the new schema or the new binaries
// misread, or failing at every batch; unready alone would not stop them. The process exits
// rather than pausing them: a paused consumer would keep its partitions in the group, so the
// new release's consumers could not apply them, and the restart that follows refuses at start
// like any process of this image (resuming by itself once the schema is reverted). Other
// verdicts (PostgreSQL down, a schema behind) are left to the modules and the readiness checks.
func watchSchema(ctx context.Context, in *infra.Infra, names []string, fail func(error)) {
	t := time.NewTicker(schemaWatch)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := schemaErr(ctx, in); refused(err) {
			fail(fmt.Errorf("stopping module %s: a migration applied while it ran refuses this binary: %w", strings.Join(names, ", "), err))
			return
		}
	}
}

// shutdown: readiness 503, optional delay, HTTP drain, modules in reverse order, then the
// shared clients. The whole of it is bounded by the shutdown timeout.
func shutdown(o Options, mods []*running, in *infra.Infra, srv *http.Server, draining *atomic.Bool, cause error) error {
	start := time.Now()
	draining.Store(true)
	if cause != nil {
		o.Log.Error("module failed, stopping", "err", cause)
	} else {
		o.Log.Info("draining", "delay_s", o.Shutdown.Delay.Seconds())
		time.Sleep(o.Shutdown.Delay)
	}
	deadline, cancel := context.WithTimeout(context.Background(), o.Shutdown.Timeout-o.Shutdown.Delay)
	defer cancel()
	var errs []error
	if cause != nil {
		errs = append(errs, cause)
	}
	if srv != nil {
		if err := httpx.Shutdown(deadline, srv); err != nil {
			errs = append(errs, err)
		}
	}
	for i := len(mods) - 1; i >= 0; i-- {
		r := mods[i]
		if r.cancel == nil {
			continue
		}
		r.cancel()
		select {
		case <-r.done:
		case <-deadline.Done():
			errs = append(errs, fmt.Errorf("module %s did not stop within --shutdown.timeout", r.info.Name))
		}
	}
	// The pool's Close returns only once every connection is back: a module that did not
	// stop, or a request still running after the drain, would hold the process past the
	// timeout until the orchestrator kills it. Past the deadline the clients are left to the
	// process' exit.
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		in.Close()
	}()
	select {
	case <-closed:
	case <-deadline.Done():
		select {
		case <-closed: // a deadline already past when the close began
		case <-time.After(10 * time.Millisecond):
			errs = append(errs, errors.New("shared clients not closed within --shutdown.timeout: a connection is still in use"))
		}
	}
	o.Log.Info("stopped", "duration_s", time.Since(start).Seconds())
	return errors.Join(errs...)
}

// processModule names the process for its log lines' component (contract §2.1): the API when
// it serves the API, else the relay or the consumer it runs alone; "" for a relay and a
// consumer together, which no one component names.
func processModule(infos []module.Info) string {
	var workers []string
	for _, i := range infos {
		switch i.Name {
		case "relay", "consumer":
			workers = append(workers, i.Name)
		default:
			return "api"
		}
	}
	if len(workers) == 1 {
		return workers[0]
	}
	return ""
}

// httpLogger is the logger of the server's own lines (access log, failed requests, panics).
// Their component is the process' (contract §2.1): log queries for component "api" must
// find the API's access and error lines, and a relay or consumer pod's lines name it.
func httpLogger(log *slog.Logger, infos []module.Info) *slog.Logger {
	switch m := processModule(infos); m {
	case "":
		return log
	case "api":
		return log.With("module", "http")
	default:
		return log.With("module", m)
	}
}

type health struct {
	mods     []*running
	in       *infra.Infra
	optional infra.Need
	draining *atomic.Bool
	metrics  *metrics.Set                     // reco_api_check_status
	details  []atomic.Pointer[map[string]any] // last HealthDetails per module, for a slow answer
}

// moduleAnswer is what one module said within the budget.
type moduleAnswer struct {
	state     string // the state the module was asked in
	readyDone bool
	readyErr  error
	details   map[string]any // nil when the module has none or did not answer in time
}

// askModules asks every running module for its readiness and details concurrently and
// returns what arrived before ctx's deadline; later answers only refresh the details cache.
func (h *health) askModules(ctx context.Context) []moduleAnswer {
	type reply struct {
		i       int
		ready   bool // a readiness answer (else details)
		err     error
		details map[string]any
	}
	replies := make(chan reply, 2*len(h.mods))
	pending := 0
	answers := make([]moduleAnswer, len(h.mods))
	for i, r := range h.mods {
		answers[i].state = r.state.Load().(string)
		if answers[i].state != "running" {
			answers[i].readyDone = true
		} else if rd, ok := r.mod.(module.Readier); ok {
			pending++
			go func() { replies <- reply{i: i, ready: true, err: rd.Ready(ctx)} }()
		} else {
			answers[i].readyDone = true
		}
		if hr, ok := r.mod.(module.HealthReporter); ok {
			pending++
			go func() {
				d := hr.HealthDetails(ctx)
				h.details[i].Store(&d)
				replies <- reply{i: i, details: d}
			}()
		}
	}
	for ; pending > 0; pending-- {
		select {
		case rp := <-replies:
			if rp.ready {
				answers[rp.i].readyDone, answers[rp.i].readyErr = true, rp.err
			} else {
				answers[rp.i].details = rp.details
			}
		case <-ctx.Done():
			return answers
		}
	}
	return answers
}

// report builds the body shared by /healthz and /readyz; scope is "healthz" or "readyz", the
// label of the contract's reco_api_check_status gauge (§9.1).
func (h *health) report(ctx context.Context, scope string) (map[string]any, bool) {
	ready := !h.draining.Load()
	checks := map[string]any{}
	clients := map[string]string{}
	// A schema at another version than this binary's is never soft: it is only reported when
	// PostgreSQL answers, and such a process must not take traffic.
	soft := map[string]infra.Need{"postgres": infra.Postgres, "redis": infra.Redis, "kafka": infra.Kafka}
	// Every dependency check and every module's readiness and details run concurrently under
	// one budget: a hung dependency costs a probe CheckBudget, not a sum of timeouts that
	// outgrows the probes' timeoutSeconds.
	ctx, cancel := context.WithTimeout(ctx, infra.CheckBudget)
	defer cancel()
	checked := make(chan map[string]error, 1)
	go func() { checked <- h.in.Checks(ctx) }()
	answers := h.askModules(ctx)
	for name, err := range <-checked {
		ok := err == nil
		switch {
		case ok:
			clients[name] = "ok"
		case soft[name] != 0 && h.optional.Has(soft[name]):
			clients[name] = "degraded: " + err.Error()
		default:
			clients[name] = err.Error()
			ready = false
		}
		// The contract's check names, kept for existing dashboards and scripts.
		switch name {
		case "postgres":
			checks["db"] = ok
		case "redis":
			checks["online_cache"] = ok
		default:
			checks[name] = ok
		}
	}
	for name, ok := range checks {
		v := 0.0
		if ok.(bool) {
			v = 1
		}
		h.metrics.GetOrCreateGauge(fmt.Sprintf(`reco_api_check_status{scope=%q,check=%q}`, scope, name), nil).Set(v)
	}
	modules := map[string]string{}
	body := map[string]any{}
	for i, r := range h.mods {
		a := answers[i]
		st := a.state
		if st != "running" {
			ready = false
		} else if a.readyDone && a.readyErr != nil {
			st = "not ready: " + a.readyErr.Error()
			ready = false
		} else if !a.readyDone {
			st = fmt.Sprintf("not ready: no answer within %s", infra.CheckBudget)
			ready = false
		}
		modules[r.info.Name] = st
		details := a.details
		if details == nil {
			// Not answered within the budget: the last details are better than none.
			if p := h.details[i].Load(); p != nil {
				details = *p
			}
		}
		for k, v := range details {
			body[k] = v
		}
	}
	if h.draining.Load() {
		body["draining"] = true
	}
	if s := h.in.Schema(); s.Ahead() {
		body["schema"] = s
	}
	body["checks"], body["clients"], body["modules"] = checks, clients, modules
	return body, ready
}

func (h *health) healthz(c echo.Context) error {
	body, _ := h.report(c.Request().Context(), "healthz")
	body["status"] = "ok"
	return c.JSON(http.StatusOK, body)
}

func (h *health) readyz(c echo.Context) error {
	body, ready := h.report(c.Request().Context(), "readyz")
	body["ready"] = ready
	if !ready {
		return c.JSON(http.StatusServiceUnavailable, map[string]any{"detail": body})
	}
	return c.JSON(http.StatusOK, body)
}
