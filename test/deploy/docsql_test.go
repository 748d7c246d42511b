package deploy_test

import (
	"context"
	"regexp"
	"strings"
	"testing"

	"recsys/pkg/testutil"
)

var (
	sqlFence = regexp.MustCompile("(?s)```sql\n(.*?)```")
	// sqlSpan is a statement in a code span: the runbook's one-line UPDATE, the rollback's checks.
	sqlSpan = regexp.MustCompile(`(?i)^(SELECT\s.*\sFROM\s|UPDATE\s|DELETE\s+FROM\s)`)
	// sqlPlaceholder is what the operator fills in: '{...}' (ids), <migration pid>.
	sqlPlaceholder = regexp.MustCompile(`'\{\.\.\.\}'|<[a-z ]+>`)
)

// docSQL returns the SQL statements of a Markdown text: its sql code blocks, split on ';',
// and the code spans that are one statement; placeholders become values that parse.
func docSQL(text string) []string {
	var out []string
	for _, m := range sqlFence.FindAllStringSubmatch(text, -1) {
		for _, s := range strings.Split(m[1], ";") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
	}
	for _, m := range inlineCode.FindAllStringSubmatch(fence.ReplaceAllString(text, ""), -1) {
		if s := strings.TrimSpace(m[1]); sqlSpan.MatchString(s) {
			out = append(out, strings.TrimSuffix(s, ";"))
		}
	}
	for i, s := range out {
		out[i] = sqlPlaceholder.ReplaceAllStringFunc(s, func(p string) string {
			if strings.HasPrefix(p, "'") {
				return "'{}'"
			}
			return "0"
		})
	}
	return out
}

// The SQL the runbook and the rollback guide give operators runs on the current schema
// (planned with EXPLAIN, so the UPDATE changes nothing): a query naming a column a migration
// renamed fails in the middle of the incident it is for.
func TestDocumentedSQLRunsOnTheSchema(t *testing.T) {
	var stmts []string
	where := map[string]string{}
	for _, doc := range allDocs(t) {
		if doc == "docs/performance-log.md" { // a record of past sessions, not instructions
			continue
		}
		for _, s := range docSQL(string(readFile(t, doc))) {
			stmts = append(stmts, s)
			where[s] = doc
		}
	}
	if len(stmts) < 8 {
		t.Fatalf("only %d SQL statements found; the extraction is broken", len(stmts))
	}
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	for _, s := range stmts {
		if _, err := pool.Exec(context.Background(), "EXPLAIN "+s); err != nil {
			t.Errorf("%s: %s: %v", where[s], strings.Join(strings.Fields(s), " "), err)
		}
	}
}

func TestDocSQLExtraction(t *testing.T) {
	text := "Run\n```sql\nSELECT id FROM event_outbox WHERE status = 'dead';\nSELECT 1 FROM feature_dlq\n```\n" +
		"then `UPDATE feature_dlq SET status = 'replayed' WHERE id = ANY('{...}');`, " +
		"`SELECT pid FROM pg_stat_activity WHERE pid = ANY (pg_blocking_pids(<migration pid>))` and `select` alone.\n"
	got := docSQL(text)
	want := []string{"SELECT id FROM event_outbox WHERE status = 'dead'", "SELECT 1 FROM feature_dlq",
		"UPDATE feature_dlq SET status = 'replayed' WHERE id = ANY('{}')",
		"SELECT pid FROM pg_stat_activity WHERE pid = ANY (pg_blocking_pids(0))"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("docSQL = %q, want %q", got, want)
	}
}

// The documents' queries also run, not only plan, on the rows an incident leaves: a dead
// letter is there because it does not decode, so its payload may be any bytes, and a query
// that fails on one (convert_from on invalid UTF-8) shows the operator nothing at all.
func TestDocumentedQueriesReadIncidentRows(t *testing.T) {
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `INSERT INTO feature_dlq (topic, kafka_partition, kafka_offset, msg_key, payload, error)
VALUES ('recsys.watches.v1', 0, 1, '\xfe'::bytea, '\xff00c328'::bytea, 'decode: invalid payload'),
       ('recsys.watches.v1', 0, 2, NULL, convert_to('{"user_id":"u"}', 'UTF8'), 'decode: no event_type')`); err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, doc := range allDocs(t) {
		if doc == "docs/performance-log.md" {
			continue
		}
		for _, s := range docSQL(string(readFile(t, doc))) {
			if !strings.HasPrefix(strings.ToUpper(s), "SELECT") {
				continue
			}
			total++
			rows, err := pool.Query(ctx, s)
			if err == nil {
				for rows.Next() {
				}
				rows.Close()
				err = rows.Err()
			}
			if err != nil {
				t.Errorf("%s: %s: %v", doc, strings.Join(strings.Fields(s), " "), err)
			}
		}
	}
	if total < 8 {
		t.Fatalf("only %d queries found; the extraction is broken", total)
	}
}
