package migrate

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// TooOldError refuses a binary that a migration it does not embed broke: that migration
// recorded (table schema_breaking_migrations, migration 0025) that binaries whose newest
// migration is below MinBinary do not work on the schema it leaves. Such a binary would write
// rows the new schema or the new consumers misread, or fail with SQL errors at request time.
type TooOldError struct {
	Binary    uint   // the newest migration this binary embeds
	Schema    uint   // the schema's version
	MinBinary uint   // the newest migration a binary must embed to run on the schema
	By        uint   // the migration that recorded MinBinary
	Reason    string // why, as that migration recorded it
	DownTo    uint   // the version below every migration that refuses this binary
}

func (e *TooOldError) Error() string {
	return fmt.Sprintf("this binary embeds migrations up to %04d, but the schema (version %d) no longer works with binaries "+
		"older than %04d: migration %04d recorded it (%s). Run an image that embeds migration %04d or later "+
		"(a pod left from an older release: finish its rollout or delete it), or, to run this binary, first "+
		"revert the schema with the newer image: `recsys migrate down --to-version %d` (docs/rollback.md, "+
		"\"Marking a breaking migration\")",
		e.Binary, e.Schema, e.MinBinary, e.By, e.Reason, e.MinBinary, e.DownTo)
}

// Floor returns a *TooOldError when a migration of the schema (at version schema) recorded
// that a binary embedding migrations up to binary must not run on it; nil when none did, or
// the schema predates the record. A recorded minimum is never above its own migration, so
// only a schema ahead of the binary can refuse it, and a current one is not read.
func Floor(ctx context.Context, q Querier, schema, binary uint) error {
	if schema <= binary {
		return nil
	}
	var exists bool
	if err := q.QueryRow(ctx, "SELECT to_regclass('schema_breaking_migrations') IS NOT NULL").Scan(&exists); err != nil {
		return fmt.Errorf("look for schema_breaking_migrations: %w", err)
	}
	if !exists {
		return nil
	}
	var minBinary, by, downTo int64
	var reason string
	err := q.QueryRow(ctx, `SELECT min_binary, version, reason,
		(SELECT min(version) FROM schema_breaking_migrations WHERE min_binary > $1) - 1
		FROM schema_breaking_migrations WHERE min_binary > $1 ORDER BY min_binary DESC, version LIMIT 1`,
		int64(binary)).Scan(&minBinary, &by, &reason, &downTo)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read schema_breaking_migrations: %w", err)
	}
	return &TooOldError{Binary: binary, Schema: schema, MinBinary: uint(minBinary), By: uint(by), Reason: reason, DownTo: uint(downTo)}
}
