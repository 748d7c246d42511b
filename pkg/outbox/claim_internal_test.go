package outbox

import (
	"context"
	"strings"
	"testing"

	"recsys/pkg/testutil"
)

// TestClaimPlanIsCachedIndexProbes checks the plan the claim's settings give takeSQL on an
// empty, never analysed outbox (the case a cached generic plan would be stuck with while a
// backlog grows): a generic plan (parameters, not values), the per-unit checks materialized
// once, and the rows reached through the primary key, never a sequential scan. It also checks
// that the settings end with the claim's transaction.
func TestClaimPlanIsCachedIndexProbes(t *testing.T) {
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	ctx := context.Background()
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "PREPARE take_plan AS "+takeSQL); err != nil {
		t.Fatalf("prepare takeSQL: %v", err)
	}
	explain := func() string {
		rows, err := conn.Query(ctx, `EXPLAIN (COSTS OFF, VERBOSE) EXECUTE take_plan('{u}', '{t}', '{1}', '{2}', '{2}', '{1,2}', '{1,1}', 'owner', 30000)`)
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
	if _, err := conn.Exec(ctx, claimSettingsSQL); err != nil {
		t.Fatalf("claim settings: %v", err)
	}
	plan := explain()
	for _, want := range []string{"unnest($1)", "CTE ok", "event_outbox_pkey"} {
		if !strings.Contains(plan, want) {
			t.Errorf("claim plan lacks %q (want a generic plan, the checks materialized, rows by primary key):\n%s", want, plan)
		}
	}
	if strings.Contains(plan, "Seq Scan on event_outbox") {
		t.Errorf("claim plan scans the outbox sequentially:\n%s", plan)
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
