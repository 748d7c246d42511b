package outbox

import (
	"context"
	"regexp"
	"strings"
	"testing"

	"recsys/pkg/testutil"
)

// TestClaimPlanIsCachedIndexProbes checks the plans byKeySQL gives the claim's statements and those
// that record a batch on an empty, never analysed outbox (the case a cached generic plan would
// be stuck with while a backlog grows): generic plans (parameters, not values), the per-unit
// checks materialized once, and the rows reached through the primary key, never a sequential
// scan. It also checks that the settings end with the transaction.
func TestClaimPlanIsCachedIndexProbes(t *testing.T) {
	generic := regexp.MustCompile(`\$[0-9]`)
	byPartialIndex := regexp.MustCompile(`Index Scan using event_outbox_\w+_idx on public.event_outbox\n\s+Output: event_outbox.ctid`)
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	ctx := context.Background()
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	for name, sql := range map[string]string{"scan_plan": scanLockSQL, "take_plan": takeSQL, "delete_plan": deletePublishedSQL,
		"mark_plan": markPublishedSQL, "renew_plan": renewSQL, "mixed_plan": completeMixedSQL,
		"reap_plan": reapSQL, "retention_plan": deleteOldPublishedSQL} {
		if _, err := conn.Exec(ctx, "PREPARE "+name+" AS "+sql); err != nil {
			t.Fatalf("prepare %s: %v", name, err)
		}
	}
	explain := func(execute string) string {
		rows, err := conn.Query(ctx, `EXPLAIN (COSTS OFF, VERBOSE) EXECUTE `+execute)
		if err != nil {
			t.Fatalf("explain: %v", err)
		}
		var b strings.Builder
		for rows.Next() {
			var line string
			if err := rows.Scan(&line); err != nil {
				t.Fatal(err)
			}
			b.WriteString(line + "\n")
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}

	if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, byKeySQL); err != nil {
		t.Fatalf("claim settings: %v", err)
	}
	// The lock step reaches the candidates by primary key: a full scan of a partial index
	// filtered by id walks every dead entry until vacuum.
	plan := explain(`scan_plan(0, 1024, 256, 100000)`)
	if !strings.Contains(plan, "event_outbox_pkey") || !strings.Contains(plan, "Index Cond: (o.id = ANY") {
		t.Errorf("claim scan does not lock its candidates by primary key:\n%s", plan)
	}
	if strings.Contains(plan, "Seq Scan on public.event_outbox") || strings.Contains(plan, "Seq Scan on event_outbox") {
		t.Errorf("claim scan reads the outbox sequentially:\n%s", plan)
	}
	plan = explain(`take_plan('{u}', '{t}', '{1}', '{2}', '{2}', '{1,2}', '{1,1}', 'owner', 30000)`)
	for _, want := range []string{"unnest($1)", "CTE ok", "event_outbox_pkey"} {
		if !strings.Contains(plan, want) {
			t.Errorf("claim plan lacks %q (want a generic plan, the checks materialized, rows by primary key):\n%s", want, plan)
		}
	}
	if strings.Contains(plan, "Seq Scan on event_outbox") {
		t.Errorf("claim plan scans the outbox sequentially:\n%s", plan)
	}
	// Recording or renewing a batch reaches its rows by primary key too, not by a full scan
	// of a partial index filtered by id (see leaseHeld).
	for _, execute := range []string{`delete_plan('{1,2}', 7)`, `mark_plan('{1,2}', 7)`, `renew_plan('{1,2}', 7, 30000)`,
		`mixed_plan('{1,2}', '{published,pending}', '{0,100}', '{"",""}', '{0,0}', 7)`,
		`reap_plan(500, 100, 60000)`, `retention_plan(3600000, 1000)`} {
		plan := explain(execute)
		// A generic plan shows parameters ($n), a custom one the values; the rows named by id
		// are reached by primary key, not by a partial index's full scan filtered by id.
		if !strings.Contains(plan, "event_outbox_pkey") || !generic.MatchString(plan) || strings.Contains(plan, "Seq Scan on") ||
			byPartialIndex.MatchString(plan) {
			t.Errorf("%s: want a generic plan reaching its rows by primary key:\n%s", execute, plan)
		}
	}
	if _, err := conn.Exec(ctx, "COMMIT"); err != nil {
		t.Fatal(err)
	}

	var mode, seq string
	if err := conn.QueryRow(ctx, "SELECT current_setting('plan_cache_mode'), current_setting('enable_seqscan')").Scan(&mode, &seq); err != nil {
		t.Fatal(err)
	}
	if mode != "auto" || seq != "on" {
		t.Errorf("after the claim's transaction plan_cache_mode = %q, enable_seqscan = %q; want the server defaults (auto, on)", mode, seq)
	}
}
