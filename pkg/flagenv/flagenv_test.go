package flagenv_test

import (
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"recsys/pkg/flagenv"
)

func newFS() (*pflag.FlagSet, *string, *time.Duration, *int) {
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	dsn := fs.String("pg.dsn", "default-dsn", "")
	poll := fs.Duration("relay.poll-interval", 500*time.Millisecond, "")
	size := fs.Int("relay.batch-size", 200, "")
	flagenv.Alias(fs, "pg.dsn", "DATABASE_URL")
	flagenv.Alias(fs, "relay.poll-interval", "OUTBOX_RELAY_POLL_INTERVAL_MS:ms")
	flagenv.Alias(fs, "relay.batch-size", "OUTBOX_RELAY_BATCH_SIZE")
	return fs, dsn, poll, size
}

func TestBindPrecedence(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		env      map[string]string
		wantDSN  string
		wantPoll time.Duration
		wantSize int
		source   string
	}{
		{name: "defaults", wantDSN: "default-dsn", wantPoll: 500 * time.Millisecond, wantSize: 200, source: "default"},
		{name: "legacy alias", env: map[string]string{"DATABASE_URL": "legacy"}, wantDSN: "legacy", wantPoll: 500 * time.Millisecond, wantSize: 200, source: "DATABASE_URL"},
		{name: "recsys env beats alias", env: map[string]string{"DATABASE_URL": "legacy", "RECSYS_PG_DSN": "own"}, wantDSN: "own", wantPoll: 500 * time.Millisecond, wantSize: 200, source: "RECSYS_PG_DSN"},
		{name: "flag beats env", args: []string{"--pg.dsn=flag"}, env: map[string]string{"RECSYS_PG_DSN": "own"}, wantDSN: "flag", wantPoll: 500 * time.Millisecond, wantSize: 200, source: "flag"},
		{name: "legacy ms number", env: map[string]string{"OUTBOX_RELAY_POLL_INTERVAL_MS": "250"}, wantDSN: "default-dsn", wantPoll: 250 * time.Millisecond, wantSize: 200, source: "default"},
		{name: "own env takes durations", env: map[string]string{"RECSYS_RELAY_POLL_INTERVAL": "2s", "RECSYS_RELAY_BATCH_SIZE": "7"}, wantDSN: "default-dsn", wantPoll: 2 * time.Second, wantSize: 7, source: "default"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fs, dsn, poll, size := newFS()
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			lookup := func(k string) (string, bool) { v, ok := tc.env[k]; return v, ok }
			if err := flagenv.Bind(fs, lookup); err != nil {
				t.Fatal(err)
			}
			if *dsn != tc.wantDSN || *poll != tc.wantPoll || *size != tc.wantSize {
				t.Fatalf("got dsn=%q poll=%s size=%d", *dsn, *poll, *size)
			}
			if got := flagenv.Source(fs.Lookup("pg.dsn")); got != tc.source {
				t.Fatalf("source = %q, want %q", got, tc.source)
			}
		})
	}
}

func TestBindInvalidValuesAreErrors(t *testing.T) {
	fs, _, _, _ := newFS()
	env := map[string]string{"OUTBOX_RELAY_BATCH_SIZE": "many", "RECSYS_RELAY_POLL_INTERVAL": "soon"}
	err := flagenv.Bind(fs, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err == nil {
		t.Fatal("invalid values were accepted")
	}
	for _, want := range []string{"OUTBOX_RELAY_BATCH_SIZE=\"many\" (flag --relay.batch-size)", "RECSYS_RELAY_POLL_INTERVAL=\"soon\" (flag --relay.poll-interval)"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
}

func TestRedact(t *testing.T) {
	tests := map[string]string{
		"postgres://app:s3cret@db:5432/recsys": "postgres://app:REDACTED@db:5432/recsys",
		"postgres://app@db/recsys":             "postgres://app@db/recsys",
		"redis://:pw@cache:6379/0":             "redis://:REDACTED@cache:6379/0",
		"plain-secret":                         "REDACTED",
		"":                                     "",
		"postgres://db:5432/recsys?user=recsys&password=s3cret&sslmode=require": "postgres://db:5432/recsys?user=recsys&password=REDACTED&sslmode=require",
		"postgres://app:s3cret@db/recsys?sslpassword=k3y":                       "postgres://app:REDACTED@db/recsys?sslpassword=REDACTED",
		"postgres://app:p@ss@db/recsys":                                         "postgres://app:REDACTED@db/recsys",
		// A raw "#" or "?" in a password (pgx and Redis clients take them) must not end the
		// user info early, and an "@" in the query then hides more than the password.
		"postgres://recsys:s3cr3t#tail@db:5432/recsys":      "postgres://recsys:REDACTED@db:5432/recsys",
		"redis://:s3cr3t?x@cache:6379/0":                    "redis://:REDACTED@cache:6379/0",
		"postgres://app:pw@db/recsys?note=a@b":              "postgres://app:REDACTED@b",
		"redis://cache:6379/0?password=s3cret":              "redis://cache:6379/0?password=REDACTED",
		"host=db user=recsys password=s3cret dbname=recsys": "host=db user=recsys password=REDACTED dbname=recsys",
		"host=db password = 's3 cret' dbname=recsys":        "host=db password = REDACTED dbname=recsys",
	}
	for in, want := range tests {
		if got := flagenv.Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestEffectiveRedactsSecrets(t *testing.T) {
	tests := []struct{ name, flag, value string }{
		{"user info", "pg.dsn", "postgres://u:S3cretPW@h/db"},
		{"query parameter", "pg.dsn", "postgres://db.internal:5432/recsys?user=recsys&password=S3cretPW&sslmode=require"},
		{"key=value", "pg.dsn", "host=db user=recsys password=S3cretPW"},
		{"URL of a flag not marked secret", "smoke.base-url", "http://admin:S3cretPW@api:8080"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
			fs.String(tc.flag, "", "")
			if tc.flag == "pg.dsn" {
				flagenv.Secret(fs, tc.flag)
			}
			if err := fs.Set(tc.flag, tc.value); err != nil {
				t.Fatal(err)
			}
			if got := flagenv.Effective(fs)[tc.flag]; strings.Contains(got, "S3cretPW") {
				t.Fatalf("the startup configuration line shows the password: %s", got)
			}
		})
	}
}

func TestRedactText(t *testing.T) {
	in := "cannot parse `postgres://u:S3cretPW@h:54x2/db`: invalid port; password=S3cretPW host=h"
	if got := flagenv.RedactText(in); strings.Contains(got, "S3cretPW") || !strings.Contains(got, "invalid port") {
		t.Fatalf("RedactText = %q", got)
	}
}

func TestEnvName(t *testing.T) {
	if got := flagenv.EnvName("relay.batch-size"); got != "RECSYS_RELAY_BATCH_SIZE" {
		t.Fatal(got)
	}
}
