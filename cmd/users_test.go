package cmd

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"recsys/pkg/testutil"
)

// The users to erase come from the arguments and the file, each once; an empty list, an id
// no event could have and too many users are refused before anything is touched.
func TestForgetList(t *testing.T) {
	file := filepath.Join(t.TempDir(), "users")
	if err := os.WriteFile(file, []byte("u2\n\nu3\nu1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := forgetList([]string{"u1", "u2"}, file)
	if err != nil || !slices.Equal(got, []string{"u1", "u2", "u3"}) {
		t.Errorf("forgetList = %v, %v; want u1 u2 u3", got, err)
	}
	// /log/* accepts any 1-128 characters but NUL, spaces included, so a line is an id as
	// it stands: trimming it made " u3 " impossible to erase from a file (the run said it
	// was erased). Only the line end (\n or \r\n) and a UTF-8 byte order mark go.
	for _, tc := range []struct {
		name, content string
		want          []string
	}{
		{"spaces kept", "  u3 \n\tu4\n", []string{"  u3 ", "\tu4"}},
		{"CRLF", "u1\r\nu2 \r\n\r\n", []string{"u1", "u2 "}},
		{"no final newline", "u1\nu2", []string{"u1", "u2"}},
		{"byte order mark", "\uFEFFu1\nu2\n", []string{"u1", "u2"}},
		{"multi-byte id of 128 characters", strings.Repeat("ü", 128) + "\n", []string{strings.Repeat("ü", 128)}},
	} {
		f := filepath.Join(t.TempDir(), "users.txt")
		if err := os.WriteFile(f, []byte(tc.content), 0o600); err != nil {
			t.Fatal(err)
		}
		if got, err := forgetList(nil, f); err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("%s: forgetList = %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
	many := make([]string, maxForgetUsers+1)
	for i := range many {
		many[i] = "u" + strconv.Itoa(i)
	}
	for _, tc := range []struct {
		name string
		args []string
		file string
		want string
	}{
		{"nothing", nil, "", "no user to erase"},
		{"missing file", nil, filepath.Join(t.TempDir(), "none"), "--from-file"},
		{"too long an id", []string{strings.Repeat("x", 129)}, "", "longer than 128 characters"},
		{"too long a multi-byte id", []string{strings.Repeat("ü", 129)}, "", "longer than 128 characters"},
		{"empty id", []string{"u1", ""}, "", "empty user id"},
		{"too many", many, "", "at most 100000 per run"},
	} {
		if _, err := forgetList(tc.args, tc.file); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}

// `recsys users forget` run with another key prefix than the deployment's (a workstation's
// default, say) would delete the users' hashes from a copy nobody reads and report success,
// while /reco kept serving their features: it refuses, naming both prefixes, before it
// records or deletes anything.
func TestForgetRefusesAnotherKeyPrefix(t *testing.T) {
	dsn := testutil.MigratedDatabase(t)
	pool := testutil.Pool(t, dsn)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `INSERT INTO deployment_settings (name, value) VALUES ('redis.key-prefix', 'prod:')`); err != nil {
		t.Fatal(err)
	}
	root := NewRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs([]string{"users", "forget", "u1", "--settle", "10s", "--pg.dsn", dsn,
		"--redis.url", testutil.StartPrivate(t, "redis").URL, "--redis.key-prefix", "recsys:"})
	err := root.ExecuteContext(ctx)
	if err == nil || !strings.Contains(err.Error(), `"recsys:"`) || !strings.Contains(err.Error(), `"prod:"`) ||
		!strings.Contains(err.Error(), "--redis.key-prefix") {
		t.Fatalf("forget with another prefix: %v", err)
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM forgotten_users`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("%d users recorded as forgotten by a refused run", n)
	}
}
