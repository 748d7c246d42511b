package postgres

import (
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"recsys/pkg/flagenv"
)

// Statement and lock timeouts go to the server in whole milliseconds: below 1 ms they would
// be sent as 0 (PostgreSQL's "no timeout") and above 2^31-1 ms the server refuses every
// session, so both must stop the process at start.
func TestServerTimeoutsMustFitWholeMilliseconds(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want string // "" = valid
	}{
		{"defaults", nil, ""},
		{"legacy sub-millisecond", map[string]string{"DB_STATEMENT_TIMEOUT_MS": "0.5"}, "--pg.statement-timeout must be between 1ms"},
		{"sub-millisecond duration", map[string]string{"RECSYS_PG_LOCK_TIMEOUT": "500us"}, "--pg.lock-timeout must be between 1ms"},
		{"above int32 milliseconds", map[string]string{"DB_LOCK_TIMEOUT_MS": "3000000000"}, "--pg.lock-timeout must be between 1ms"},
		{"largest accepted", map[string]string{"DB_STATEMENT_TIMEOUT_MS": "2147483647"}, ""},
		{"one millisecond", map[string]string{"RECSYS_PG_STATEMENT_TIMEOUT": "1ms"}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			c.DSN = "postgres://u:p@localhost/db"
			fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
			c.RegisterFlags(fs)
			if err := flagenv.Bind(fs, func(k string) (string, bool) { v, ok := tc.env[k]; return v, ok }); err != nil {
				t.Fatal(err)
			}
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("rejected: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("Validate = %v, want %q (statement_timeout=%s lock_timeout=%s)", err, tc.want, c.StatementTimeout, c.LockTimeout)
			}
		})
	}
}

// A malformed connection string is reported with what is wrong, never with its password.
func TestInvalidDSNSaysWhatIsWrongWithoutThePassword(t *testing.T) {
	tests := []struct{ dsn, want string }{
		{"postgres://recsys:S3cretPW@localhost:54x2/recsys", "port"},
		{"postgres://recsys:S3cret%zzPW@localhost/recsys", "percent-encoded"},
		{"host=localhost user=recsys password='S3cretPW dbname=recsys", "unterminated quoted string"},
		{"host=localhost password=S3cretPW port=x", "port"},
		// pgconn quotes the word after an unquoted space: the password's tail.
		{"host=localhost user=recsys password=pa S3cretPW dbname=recsys", "single quotes"},
	}
	for _, tc := range tests {
		c := DefaultConfig()
		c.DSN = tc.dsn
		err := c.Validate()
		if err == nil {
			t.Errorf("%s: accepted", tc.want)
			continue
		}
		if msg := err.Error(); strings.Contains(msg, "S3cret") || !strings.Contains(msg, tc.want) || strings.Contains(msg, ": REDACTED") {
			t.Errorf("Validate error %q: want the reason (%q) and no secret", msg, tc.want)
		}
	}
}

// pgx, as libpq, ends a URL's user info at its first '@': a password with a raw '@' was
// accepted, its tail taken for the host's name, and the connection errors (logged, and in
// /readyz, which needs no API key) named that host: "lookup retPW@db.internal: no such host".
// The start-up log's redaction, cutting at the last '@', showed nothing wrong.
func TestDSNWithARawAtInThePasswordIsRefused(t *testing.T) {
	for _, dsn := range []string{
		"postgres://recsys:S3c@retPW@db.internal:5432/recsys?sslmode=disable",
		"postgresql://recsys:S3c@retPW@db.internal/recsys",
		"postgres://recsys:S3c@ret%zzPW@db.internal:5432/recsys", // and unparsable besides
		"postgres://admin@server:S3c@db.internal/recsys",         // a user name with a raw '@'
	} {
		c := DefaultConfig()
		c.DSN = dsn
		err := c.Validate()
		if err == nil {
			t.Errorf("%s: accepted", dsn)
			continue
		}
		if msg := err.Error(); strings.Contains(msg, "retPW") || strings.Contains(msg, "S3c") || !strings.Contains(msg, "%40") {
			t.Errorf("Validate error %q: want the '@' explained (%%40) and no part of the password", msg)
		}
	}
	// An '@' elsewhere is not the user info's: a query value, or an encoded one.
	for _, dsn := range []string{
		"postgres://recsys:S3c%40retPW@db.internal:5432/recsys",
		"postgres://recsys@db.internal/recsys?application_name=a@b",
		"postgres://recsys@db.internal?application_name=a@b",
		"host=db.internal user=recsys password=S3c@ret@PW dbname=recsys",
	} {
		if _, err := ParseDSN(dsn); err != nil {
			t.Errorf("ParseDSN(%q) = %v, want it accepted", dsn, err)
		}
	}
}

// A DSN mounted from a Secret is given as a file: the error for a missing one names those
// variables too, or the operator who set RECSYS_PG_DSN_FILE in the wrong container cannot tell.
func TestMissingDSNNamesEveryWayToGiveIt(t *testing.T) {
	err := DefaultConfig().Validate()
	if err == nil {
		t.Fatal("no error without --pg.dsn")
	}
	for _, w := range []string{"--pg.dsn", "RECSYS_PG_DSN", "DATABASE_URL", "RECSYS_PG_DSN_FILE", "DATABASE_URL_FILE"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not name %s", err, w)
		}
	}
}
