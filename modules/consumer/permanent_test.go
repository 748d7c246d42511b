package consumer

import (
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// A permanent error sends events to the DLQ (after the batch is split), a transient one
// retries with backoff: a valid event must never be dead-lettered for a conflict or an outage.
func TestPermanent(t *testing.T) {
	pg := func(code, constraint string) error {
		return fmt.Errorf("apply batch: %w", &pgconn.PgError{Code: code, ConstraintName: constraint})
	}
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"not a PostgreSQL error", errors.New("connection reset by peer"), false},
		{"invalid text representation", pg("22P02", ""), true},
		{"check violation", pg("23514", "feature_items_check"), true},
		{"unique violation of another constraint", pg("23505", "feature_dlq_pkey"), true},
		{"dedup record written concurrently", pg("23505", "feature_applied_pkey"), false},
		{"program limit", pg("54000", ""), true},
		{"serialization failure", pg("40001", ""), false},
		{"connection failure", pg("08006", ""), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := permanent(tc.err); got != tc.want {
				t.Fatalf("permanent(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}
