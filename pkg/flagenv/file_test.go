package flagenv_test

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"recsys/pkg/flagenv"
)

func TestBindSecretFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	dsnFile := write("dsn", "postgres://u:S3cretPW@db/recsys\n")
	crlfFile := write("crlf", "S3cretPW\r\n")
	bareFile := write("bare", "S3cretPW")
	big := write("big", strings.Repeat("x", 65<<10))
	missing := filepath.Join(dir, "nosuch")
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantDSN string
		wantPW  string
		source  string
		wantErr []string // substrings of the error; nil: no error
	}{
		{name: "own variable's file", env: map[string]string{"RECSYS_PG_DSN_FILE": dsnFile}, wantDSN: "postgres://u:S3cretPW@db/recsys", source: "RECSYS_PG_DSN_FILE"},
		{name: "legacy alias' file", env: map[string]string{"DATABASE_URL_FILE": dsnFile}, wantDSN: "postgres://u:S3cretPW@db/recsys", source: "DATABASE_URL_FILE"},
		{name: "own file beats legacy variable", env: map[string]string{"RECSYS_PG_DSN_FILE": dsnFile, "DATABASE_URL": "legacy"}, wantDSN: "postgres://u:S3cretPW@db/recsys", source: "RECSYS_PG_DSN_FILE"},
		{name: "flag beats file", args: []string{"--pg.dsn=flag"}, env: map[string]string{"RECSYS_PG_DSN_FILE": missing}, wantDSN: "flag", source: "flag"},
		{name: "CRLF trimmed", env: map[string]string{"RECSYS_KAFKA_SASL_PASSWORD_FILE": crlfFile}, wantPW: "S3cretPW"},
		{name: "no line break", env: map[string]string{"RECSYS_KAFKA_SASL_PASSWORD_FILE": bareFile}, wantPW: "S3cretPW"},
		{name: "both set", env: map[string]string{"RECSYS_PG_DSN": "x", "RECSYS_PG_DSN_FILE": dsnFile},
			wantErr: []string{"RECSYS_PG_DSN and RECSYS_PG_DSN_FILE", "--pg.dsn"}},
		{name: "both legacy set", env: map[string]string{"DATABASE_URL": "x", "DATABASE_URL_FILE": dsnFile},
			wantErr: []string{"DATABASE_URL and DATABASE_URL_FILE"}},
		{name: "missing file", env: map[string]string{"RECSYS_KAFKA_SASL_PASSWORD_FILE": missing},
			wantErr: []string{"RECSYS_KAFKA_SASL_PASSWORD_FILE", missing, "--kafka.sasl-password"}},
		{name: "directory", env: map[string]string{"RECSYS_PG_DSN_FILE": dir}, wantErr: []string{"RECSYS_PG_DSN_FILE", dir}},
		{name: "empty file name", env: map[string]string{"RECSYS_PG_DSN_FILE": ""}, wantErr: []string{"RECSYS_PG_DSN_FILE"}},
		{name: "too large", env: map[string]string{"RECSYS_PG_DSN_FILE": big}, wantErr: []string{"RECSYS_PG_DSN_FILE", big}},
		// Only secrets have a file form: a path in a _FILE variable of another flag is a
		// mistake Unread reports.
		{name: "not a secret", env: map[string]string{"RECSYS_RELAY_BATCH_SIZE_FILE": bareFile}, source: "default"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
			dsn := fs.String("pg.dsn", "", "")
			pw := fs.String("kafka.sasl-password", "", "")
			fs.Int("relay.batch-size", 200, "")
			flagenv.Alias(fs, "pg.dsn", "DATABASE_URL")
			flagenv.Secret(fs, "pg.dsn")
			flagenv.Secret(fs, "kafka.sasl-password")
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			err := flagenv.Bind(fs, func(k string) (string, bool) { v, ok := tc.env[k]; return v, ok })
			if tc.wantErr != nil {
				if err == nil {
					t.Fatal("no error")
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not name %q", err, w)
					}
				}
				if strings.Contains(err.Error(), "S3cretPW") || strings.Contains(err.Error(), "xxxx") {
					t.Errorf("error %q shows the secret", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if *dsn != tc.wantDSN || *pw != tc.wantPW {
				t.Fatalf("dsn=%q password=%q, want %q %q", *dsn, *pw, tc.wantDSN, tc.wantPW)
			}
			if tc.source != "" {
				if got := flagenv.Source(fs.Lookup("pg.dsn")); got != tc.source {
					t.Fatalf("source = %q, want %q", got, tc.source)
				}
			}
		})
	}
}

func TestSecretFileVariablesAreSettings(t *testing.T) {
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	fs.String("pg.dsn", "", "")
	fs.Int("relay.batch-size", 200, "")
	flagenv.Alias(fs, "pg.dsn", "DATABASE_URL")
	flagenv.Secret(fs, "pg.dsn")
	got := flagenv.Unread(fs, nil, []string{"RECSYS_PG_DSN_FILE=/run/secrets/dsn", "RECSYS_RELAY_BATCH_SIZE_FILE=/x"})
	if len(got) != 1 || !strings.HasPrefix(got[0], "RECSYS_RELAY_BATCH_SIZE_FILE: no such setting") {
		t.Fatalf("Unread = %q, want only the batch size's _FILE", got)
	}
	var row flagenv.Row
	for _, r := range flagenv.Rows(fs) {
		if r.Flag == "pg.dsn" {
			row = r
		}
	}
	md := flagenv.Markdown([]flagenv.Row{row})
	for _, w := range []string{"`RECSYS_PG_DSN`, `RECSYS_PG_DSN_FILE`", "`DATABASE_URL`, `DATABASE_URL_FILE`"} {
		if !strings.Contains(md, w) {
			t.Errorf("reference row %q does not list %s", md, w)
		}
	}
}

// A _FILE variable naming a named pipe (or anything else that is not a regular file) is an
// error naming the variable and the path: opening the pipe blocked start-up for good. A
// symlink is followed, since Kubernetes mounts secrets as links.
func TestBindSecretFileRefusesWhatIsNoRegularFile(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	linkToFifo := filepath.Join(dir, "link-to-fifo")
	secret := filepath.Join(dir, "secret")
	linkToSecret := filepath.Join(dir, "link-to-secret")
	if err := os.WriteFile(secret, []byte("S3cretPW\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, l := range [][2]string{{fifo, linkToFifo}, {secret, linkToSecret}} {
		if err := os.Symlink(l[0], l[1]); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name, path string
		wantErr    []string // nil: no error, the secret read
	}{
		{"named pipe", fifo, []string{"RECSYS_PG_DSN_FILE", fifo, "named pipe"}},
		{"symlink to a named pipe", linkToFifo, []string{"RECSYS_PG_DSN_FILE", linkToFifo, "named pipe"}},
		{"character device", os.DevNull, []string{"RECSYS_PG_DSN_FILE", os.DevNull, "device"}},
		{"symlink to a regular file", linkToSecret, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
			dsn := fs.String("pg.dsn", "", "")
			flagenv.Secret(fs, "pg.dsn")
			done := make(chan error, 1)
			go func() {
				done <- flagenv.Bind(fs, func(k string) (string, bool) {
					if k == "RECSYS_PG_DSN_FILE" {
						return tc.path, true
					}
					return "", false
				})
			}()
			var err error
			select {
			case err = <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("Bind still blocked after 5 s")
			}
			if tc.wantErr == nil {
				if err != nil || *dsn != "S3cretPW" {
					t.Fatalf("Bind = %v, dsn %q; want the secret", err, *dsn)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
		})
	}
}
