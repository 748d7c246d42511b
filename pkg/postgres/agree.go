package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Setting is one flag whose value every pod of a deployment must share for the data to stay
// correct (table deployment_settings, migration 0023): the Redis key prefix the feature copy
// lives under, the topics events travel on. Two values at once do not fail anything by
// themselves: a consumer with another prefix writes a second copy that /reco never reads
// (and leaves the real one stale after the fix), an API pod with another topic publishes
// events no consumer applies.
type Setting struct {
	Flag  string // without the dashes: "redis.key-prefix"
	Value string
}

// DisagreeError is a setting whose value differs from the one the deployment recorded.
type DisagreeError struct {
	Flag, Here, Recorded string
	RecordedAt           time.Time
}

func (e *DisagreeError) Error() string {
	env := "RECSYS_" + strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(e.Flag))
	return fmt.Sprintf("--%s (%s) is %q in this process but %q in the deployment's database (recorded %s): "+
		"every pod of one deployment must use the same value; set %q here, or change it on every pod as "+
		"docs/runbook.md \"Settings every pod must agree on\" describes",
		e.Flag, env, e.Here, e.Recorded, e.RecordedAt.UTC().Format(time.RFC3339), e.Recorded)
}

// Agree records the settings not yet recorded (the first pod to start sets them) and returns
// a *DisagreeError (joined, one per setting) for each whose recorded value differs.
func Agree(ctx context.Context, pool *pgxpool.Pool, settings ...Setting) error {
	if len(settings) == 0 {
		return nil
	}
	names, values := make([]string, len(settings)), make([]string, len(settings))
	for i, s := range settings {
		names[i], values[i] = s.Flag, s.Value
	}
	// Two statements, so the read's snapshot sees the row of a pod that recorded another
	// value at the same moment (the insert waited for it, then did nothing).
	if _, err := pool.Exec(ctx, `INSERT INTO deployment_settings (name, value) SELECT * FROM unnest($1::text[], $2::text[])
ON CONFLICT (name) DO NOTHING`, names, values); err != nil {
		return fmt.Errorf("record deployment settings: %w", err)
	}
	rows, err := pool.Query(ctx, `SELECT name, value, recorded_at FROM deployment_settings WHERE name = ANY($1)`, names)
	if err != nil {
		return fmt.Errorf("read deployment settings: %w", err)
	}
	recorded := map[string]DisagreeError{}
	var d DisagreeError
	if _, err := pgx.ForEachRow(rows, []any{&d.Flag, &d.Recorded, &d.RecordedAt}, func() error {
		recorded[d.Flag] = d
		return nil
	}); err != nil {
		return fmt.Errorf("read deployment settings: %w", err)
	}
	var errs []error
	for _, s := range settings {
		if r, ok := recorded[s.Flag]; ok && r.Recorded != s.Value {
			r.Here = s.Value
			errs = append(errs, &r)
		}
	}
	return errors.Join(errs...)
}

// Agreement runs Agree in the background for a role that serves while PostgreSQL is down
// (the API), so that a disagreement fails its readiness instead of its start.
type Agreement struct {
	err atomic.Pointer[error]
}

// Run retries check (an Agree) every retry until the settings agree or ctx ends. A failed
// check (PostgreSQL down, a schema without the table yet) is passed to onErr; a disagreement
// is kept for Err, passed to onDisagree when first found, and checked again like a failure:
// an operator who corrects the recorded value (docs/runbook.md) makes the pod ready without
// a restart.
func (a *Agreement) Run(ctx context.Context, check func(context.Context) error, retry time.Duration, onErr, onDisagree func(error)) {
	for {
		err := check(ctx)
		if err == nil {
			a.err.Store(nil)
			return
		}
		var de *DisagreeError
		var pgErr *pgconn.PgError
		switch {
		case errors.As(err, &de):
			if a.err.Swap(&err) == nil && onDisagree != nil {
				onDisagree(err)
			}
		// The table is missing while the schema is behind this binary (the migration Job of a
		// rollout not run yet): readiness already says so.
		case onErr != nil && ctx.Err() == nil && !(errors.As(err, &pgErr) && pgErr.Code == "42P01"):
			onErr(err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(retry):
		}
	}
}

// Err is the disagreement found (nil until one is, and while none is).
func (a *Agreement) Err() error {
	if p := a.err.Load(); p != nil {
		return *p
	}
	return nil
}
