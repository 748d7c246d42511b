package migrate

import (
	"io"
	"strings"
	"testing"
	"time"
)

// Every transactional file runs with the lock timeout on its first line (line numbers of
// golang-migrate's errors stay the file's); a CONCURRENTLY file, which a prefix would put in
// a transaction block, runs as it is.
func TestBoundedPrefixesTransactionalFiles(t *testing.T) {
	const prefix = "SET LOCAL lock_timeout = 1500; "
	tests := []struct {
		name    string
		timeout time.Duration
		body    string
		want    string
	}{
		{"statement", 1500 * time.Millisecond, "ALTER TABLE t ADD COLUMN c int;\n", prefix + "ALTER TABLE t ADD COLUMN c int;\n"},
		{"comment mentions concurrently", 1500 * time.Millisecond, "-- CONCURRENTLY is not available here\n/* nor\nconcurrently */ CREATE INDEX i ON t (c);\n",
			prefix + "-- CONCURRENTLY is not available here\n/* nor\nconcurrently */ CREATE INDEX i ON t (c);\n"},
		{"concurrent build", 1500 * time.Millisecond, "CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (c);\n", "CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (c);\n"},
		{"concurrent drop, lower case", 1500 * time.Millisecond, "drop index concurrently if exists i;", "drop index concurrently if exists i;"},
		{"no timeout", 0, "ALTER TABLE t ADD COLUMN c int;\n", "SET LOCAL lock_timeout = 0; ALTER TABLE t ADD COLUMN c int;\n"},
		{"below a millisecond", time.Microsecond, "SELECT 1;", "SET LOCAL lock_timeout = 1; SELECT 1;"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mg := &Migrator{LockTimeout: tc.timeout}
			r, _, err := mg.bounded(io.NopCloser(strings.NewReader(tc.body)), "test")
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(r)
			if string(got) != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}
