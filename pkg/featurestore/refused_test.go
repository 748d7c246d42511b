package featurestore

import (
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// TestRefused: what PostgreSQL will never accept from a batch is refused (its events go to
// the DLQ one by one); a conflict a retry resolves, an error of something else and a failed
// rebase (which rewrites every item, not the batch's rows) are not.
func TestRefused(t *testing.T) {
	underflow := &pgconn.PgError{Code: "22003", Message: "value out of range: underflow"}
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"data exception", fmt.Errorf("apply batch: %w", underflow), true},
		{"program limit", &pgconn.PgError{Code: "54000"}, true},
		// The server refuses every write until a VACUUM: retried, not dead-lettered.
		{"xid wraparound stop", &pgconn.PgError{Code: "54000", Routine: "GetNewTransactionId"}, false},
		{"multixact wraparound stop", &pgconn.PgError{Code: "54000", Routine: "GetNewMultiXactId"}, false},
		{"notify queue full", &pgconn.PgError{Code: "54000", Routine: "PreCommit_Notify"}, false},
		{"integrity violation", &pgconn.PgError{Code: "23502"}, true},
		{"dedup record written first", &pgconn.PgError{Code: "23505", ConstraintName: "feature_applied_pkey"}, false},
		{"not PostgreSQL's", errors.New("connection reset"), false},
		{"failed rebase", fmt.Errorf("apply: %w", &rebaseError{underflow}), false},
	} {
		if got := Refused(tc.err); got != tc.want {
			t.Errorf("%s: Refused(%v) = %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}
