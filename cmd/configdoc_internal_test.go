package cmd

import (
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	_ "recsys/modules/all"
	"recsys/pkg/flagenv"
)

// eachFlag calls fn for every flag of every visible command, as the reference lists them.
func eachFlag(fn func(c *cobra.Command, fs *pflag.FlagSet, r flagenv.Row)) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Hidden {
			return
		}
		for _, fs := range []*pflag.FlagSet{c.LocalNonPersistentFlags(), c.PersistentFlags()} {
			for _, r := range flagenv.Rows(fs) {
				fn(c, fs, r)
			}
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(NewRootCmd())
}

// A flag name several commands use with different defaults or help (--timeout, --k,
// --base-url, ...) gets one row per variant, each listing its own commands.
func TestConfigDocHasEveryCommandsOwnVariant(t *testing.T) {
	variants := configVariants()
	eachFlag(func(c *cobra.Command, _ *pflag.FlagSet, r flagenv.Row) {
		var found []variant
		for _, v := range variants {
			for _, path := range v.commands {
				if v.row.Flag == r.Flag && path == c.CommandPath() {
					found = append(found, v)
				}
			}
		}
		if len(found) != 1 {
			t.Errorf("--%s of %q is in %d rows, want 1", r.Flag, c.CommandPath(), len(found))
			return
		}
		if got := found[0].row; got.Default != r.Default || got.Usage != r.Usage || got.Aliases != r.Aliases {
			t.Errorf("--%s of %q documented as default %s %q, want default %s %q", r.Flag, c.CommandPath(), got.Default, got.Usage, r.Default, r.Usage)
		}
	})
	doc := ConfigDoc()
	for _, want := range []string{"`--k` | `RECSYS_K` |  | `10` | recsys eval |", "`--k` | `RECSYS_K` |  | `20` | recsys load |"} {
		if !strings.Contains(doc, want) {
			t.Errorf("configuration doc lacks the row %q", want)
		}
	}
}

// A name listed as not honoured must really be read by no flag, and the reference lists it.
func TestDroppedLegacyNamesAreNoAlias(t *testing.T) {
	dropped := map[string]bool{}
	for _, d := range flagenv.DroppedNames {
		dropped[d.Name] = true
	}
	eachFlag(func(c *cobra.Command, fs *pflag.FlagSet, r flagenv.Row) {
		for _, a := range strings.Split(r.Aliases, ", ") {
			name, _, _ := strings.Cut(strings.Trim(a, "`"), " ")
			if dropped[name] {
				t.Errorf("%s is listed as not honoured but is an alias of --%s (%s)", name, r.Flag, c.CommandPath())
			}
		}
	})
	doc := ConfigDoc()
	for name := range dropped {
		if !strings.Contains(doc, "| `"+name+"` |") {
			t.Errorf("configuration doc does not list %s", name)
		}
	}
}

// contractVariables are the original service's environment variables (api-contract §11.2):
// operators carry them over, so each is either read (an alias of a flag) or listed as not
// honoured, which makes a process say so at start instead of ignoring it.
var contractVariables = []string{
	"APP_ENV", "ENVIRONMENT", "ALLOW_INSECURE_PROD_DEFAULTS", "LOG_FORMAT", "LOG_LEVEL", "DATABASE_URL",
	"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "DB_INIT_ON_STARTUP", "DB_POOL_MIN_SIZE", "DB_POOL_MAX_SIZE",
	"DB_CONNECT_TIMEOUT_SEC", "DB_POOL_OPEN_TIMEOUT_SEC", "DB_STATEMENT_TIMEOUT_MS", "DB_LOCK_TIMEOUT_MS",
	"UVICORN_WORKERS", "RECO_ASYNC_IMPRESSION_LOGGING", "RECO_MAX_BACKGROUND_TASKS", "RECO_BACKGROUND_BACKPRESSURE_MODE",
	"RECO_BACKGROUND_SHUTDOWN_TIMEOUT_SEC", "RECO_METRICS_WINDOW_SEC", "RECO_METRICS_MAX_SAMPLES",
	"WATCH_FEATURE_UPDATE_MODE", "CONTRACT_MAX_EVENT_FUTURE_MS", "CONTRACT_MAX_EVENT_AGE_MS", "CONTRACT_MAX_BATCH_SIZE",
	"KAFKA_BOOTSTRAP_SERVERS", "KAFKA_TOPIC_IMPRESSIONS", "KAFKA_TOPIC_WATCHES", "KAFKA_CLIENT_ID",
	"KAFKA_REQUEST_TIMEOUT_MS", "KAFKA_DUAL_WRITE_ENABLED", "OUTBOX_MAX_ATTEMPTS", "OUTBOX_RELAY_POLL_INTERVAL_MS",
	"OUTBOX_RELAY_BATCH_SIZE", "OUTBOX_RELAY_LEASE_SEC", "OUTBOX_RELAY_BASE_RETRY_SEC", "OUTBOX_RELAY_MAX_RETRY_SEC",
	"OUTBOX_RELAY_PUBLISH_TIMEOUT_SEC", "OUTBOX_RELAY_STARTUP_MAX_RETRIES", "OUTBOX_RELAY_STARTUP_BACKOFF_SEC",
	"OUTBOX_RELAY_SHUTDOWN_TIMEOUT_SEC", "FEATURE_CONSUMER_GROUP_ID", "FEATURE_CONSUMER_CLIENT_ID",
	"FEATURE_CONSUMER_POLL_TIMEOUT_MS", "FEATURE_CONSUMER_MAX_POLL_RECORDS", "FEATURE_CONSUMER_MAX_RETRIES_PER_MESSAGE",
	"FEATURE_CONSUMER_STARTUP_MAX_RETRIES", "FEATURE_CONSUMER_STARTUP_BACKOFF_SEC", "FEATURE_CONSUMER_SHUTDOWN_TIMEOUT_SEC",
	"STREAM_FEATURE_HISTORY_SIZE", "PROMETHEUS_METRICS_ENABLED", "METRICS_HOST", "METRICS_PORT",
	"OUTBOX_RELAY_METRICS_PORT", "FEATURE_CONSUMER_METRICS_PORT", "ONLINE_CACHE_ENABLED", "ONLINE_CACHE_BACKEND",
	"ONLINE_CACHE_STRICT_BACKEND", "ONLINE_CACHE_REDIS_URL", "ONLINE_CACHE_REDIS_TIMEOUT_SEC",
	"ONLINE_CACHE_MEMORY_MAX_KEYS", "ONLINE_CACHE_HISTORY_TTL_SEC", "ONLINE_CACHE_RELATED_TTL_SEC",
	"ONLINE_CACHE_POPULARITY_TTL_SEC",
}

func TestContractVariablesAreReadOrListed(t *testing.T) {
	known := map[string]bool{}
	for _, d := range flagenv.DroppedNames {
		known[d.Name] = true
	}
	eachFlag(func(_ *cobra.Command, _ *pflag.FlagSet, r flagenv.Row) {
		for _, a := range strings.Split(r.Aliases, ", ") {
			name, _, _ := strings.Cut(strings.Trim(a, "`"), " ")
			known[name] = true
		}
	})
	for _, name := range contractVariables {
		if !known[name] {
			t.Errorf("%s (api-contract §11.2) is neither an alias of a flag nor listed in flagenv.DroppedNames", name)
		}
	}
}

// A secret's _FILE variable must not be another flag's variable: Bind would read that
// flag's value as a file name.
func TestSecretFileVariablesCollideWithNoFlag(t *testing.T) {
	vars := map[string]string{}
	var secrets []string
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, fs := range []*pflag.FlagSet{c.LocalFlags(), c.PersistentFlags()} {
			fs.VisitAll(func(f *pflag.Flag) {
				vars[flagenv.EnvName(f.Name)] = f.Name
				if flagenv.IsSecret(f) {
					secrets = append(secrets, f.Name)
				}
			})
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(NewRootCmd())
	if len(secrets) == 0 {
		t.Fatal("no secret flag found")
	}
	for _, s := range secrets {
		if other, ok := vars[flagenv.EnvName(s)+flagenv.FileSuffix]; ok {
			t.Errorf("--%s's file variable %s is --%s's variable", s, flagenv.EnvName(s)+flagenv.FileSuffix, other)
		}
	}
}

// A flag that carries credentials is marked secret: redacted in the configuration log line
// and readable from a file (_FILE).
func TestCredentialFlagsAreSecret(t *testing.T) {
	credential := func(name string) bool {
		for _, s := range []string{"dsn", "database-url", "password", "api-key", "redis.url", "token"} {
			if strings.HasSuffix(name, s) {
				return true
			}
		}
		return false
	}
	n := 0
	eachFlag(func(c *cobra.Command, fs *pflag.FlagSet, r flagenv.Row) {
		if !credential(r.Flag) {
			return
		}
		n++
		if f := fs.Lookup(r.Flag); !flagenv.IsSecret(f) {
			t.Errorf("%s --%s carries credentials but is not marked secret (flagenv.Secret)", c.CommandPath(), r.Flag)
		}
	})
	if n == 0 {
		t.Fatal("no credential flag found")
	}
}
