package flagenv

import (
	"fmt"
	"sort"
	"strings"

	"github.com/spf13/pflag"
)

// Dropped is a variable of the original service (contract §11.2) that recsys does not read.
type Dropped struct {
	Name    string
	Instead string // what replaces it, for the start-up warning and the reference
}

// DroppedNames lists the original service's variables recsys does not honour. The ones it
// does honour are declared with Alias next to their flag.
var DroppedNames = []Dropped{
	{"APP_ENV", "nothing: there is no dev/prod mode; recsys has no default secrets to check (--pg.dsn and --redis.url are required where used)"},
	{"ENVIRONMENT", "nothing (see APP_ENV)"},
	{"ALLOW_INSECURE_PROD_DEFAULTS", "nothing (see APP_ENV)"},
	{"POSTGRES_USER", "--pg.dsn (DATABASE_URL) carries the credentials"},
	{"POSTGRES_PASSWORD", "--pg.dsn (DATABASE_URL) carries the credentials"},
	{"POSTGRES_DB", "--pg.dsn (DATABASE_URL) names the database"},
	{"DB_INIT_ON_STARTUP", "`recsys migrate up` before the roles start (a Job or the compose migrate service); roles never migrate"},
	{"UVICORN_WORKERS", "nothing: one process uses every core (GOMAXPROCS)"},
	{"KAFKA_DUAL_WRITE_ENABLED", "nothing: events always go through the transactional outbox"},
	{"FEATURE_CONSUMER_STARTUP_MAX_RETRIES", "nothing: the consumer keeps retrying (--consumer.retry-backoff) and /readyz reports it"},
	{"PROMETHEUS_METRICS_ENABLED", "nothing: /metrics and /metrics/prometheus are always served on --http.addr"},
	{"METRICS_HOST", "--http.addr: metrics are served on the API port"},
	{"METRICS_PORT", "--http.addr: metrics are served on the API port"},
	{"OUTBOX_RELAY_METRICS_PORT", "--http.addr of the relay process"},
	{"FEATURE_CONSUMER_METRICS_PORT", "--http.addr of the consumer process"},
	{"ONLINE_CACHE_ENABLED", "nothing: Redis is always the serving store; /reco falls back to PostgreSQL while it is down"},
	{"ONLINE_CACHE_BACKEND", "nothing: the backend is Redis (--redis.url); there is no in-memory backend"},
	{"ONLINE_CACHE_STRICT_BACKEND", "nothing: a Redis outage shows as degraded in /readyz, never as a silent fallback"},
	{"ONLINE_CACHE_MEMORY_MAX_KEYS", "nothing: there is no in-memory backend (see --redis.client-cache-mb)"},
	{"ONLINE_CACHE_HISTORY_TTL_SEC", "--reco.user-cache-ttl"},
	{"ONLINE_CACHE_RELATED_TTL_SEC", "--reco.item-cache-ttl"},
	{"ONLINE_CACHE_POPULARITY_TTL_SEC", "--reco.global-refresh"},
}

// toolingPrefixes are RECSYS_ variables read by scripts, tests and compose, not by flags.
var toolingPrefixes = []string{"RECSYS_TEST_", "RECSYS_BENCH_", "RECSYS_SERVICES_"}

var toolingNames = map[string]bool{
	"RECSYS_INTEGRATION": true, "RECSYS_DATASETS": true, "RECSYS_CACHE_DIR": true,
	"RECSYS_IMAGE": true, "RECSYS_VERSION": true, "RECSYS_COMMIT": true,
	"RECSYS_PUBLISH_ADDR": true, "RECSYS_PUBLISH_PORT": true,
	// scripts/services.sh
	"RECSYS_PG_BIN": true, "RECSYS_PG_DURABLE": true, "RECSYS_PG_PORT": true, "RECSYS_PG_START_TIMEOUT": true,
	"RECSYS_KAFKA_PORT": true, "RECSYS_KAFKA_CONTROLLER_PORT": true, "RECSYS_KAFKA_HEAP": true,
	"RECSYS_KAFKA_JIT": true, "RECSYS_KAFKA_START_TIMEOUT": true, "RECSYS_KAFKA_VERSION": true, "RECSYS_KAFKA_SASL_SSL_PORT": true,
	"RECSYS_KAFKA_ACLS": true, "RECSYS_REDIS_PORT": true,
	"RECSYS_REDIS_START_TIMEOUT": true,
}

func tooling(name string) bool {
	if toolingNames[name] || strings.HasSuffix(name, "_TEST_CHILD") {
		return true
	}
	for _, p := range toolingPrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// Unread lists the set environment variables that configure nothing in the running command,
// as "NAME: why" lines: RECSYS_ variables that are no flag of any command (elsewhere holds the
// variables of every command's flags, EnvNames), and set DroppedNames. A setting of another command is
// not listed: the roles of a deployment share one configuration (a ConfigMap), so each
// role's pod holds the others' settings. environ is os.Environ()'s format.
func Unread(fs *pflag.FlagSet, elsewhere map[string]bool, environ []string) []string {
	own := map[string]bool{}
	fs.VisitAll(func(f *pflag.Flag) {
		for _, n := range EnvNames(f) {
			own[n] = true
		}
	})
	set := map[string]bool{}
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		set[name] = true
	}
	var out []string
	for name := range set {
		if strings.HasPrefix(name, Prefix) && !own[name] && !elsewhere[name] && !tooling(name) {
			out = append(out, name+": no such setting (see docs/configuration.md)")
		}
	}
	for _, d := range DroppedNames {
		if set[d.Name] {
			out = append(out, fmt.Sprintf("%s: not read by recsys; instead: %s", d.Name, d.Instead))
		}
	}
	sort.Strings(out)
	return out
}

// DroppedMarkdown renders DroppedNames as a table for the configuration reference.
func DroppedMarkdown() string {
	var b strings.Builder
	b.WriteString("| variable | instead |\n|---|---|\n")
	for _, d := range DroppedNames {
		fmt.Fprintf(&b, "| `%s` | %s |\n", d.Name, strings.ReplaceAll(d.Instead, "|", `\|`))
	}
	return b.String()
}
