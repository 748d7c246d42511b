package ingest_test

import (
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"recsys/pkg/ingest"
)

// TestRequestSpecificProgramLimits: a program limit (class 54) is one request's fault when
// its data exceeds it (an index row, a document too deep), but not when the server refuses
// every write (transaction ids stopped before wraparound, a full NOTIFY queue, which every
// group's pg_notify meets): those fail the group as unavailable, so /reco's autolog buffers
// its impressions and the group is not retried request by request against a database that
// refuses all of them.
func TestRequestSpecificProgramLimits(t *testing.T) {
	for _, tc := range []struct {
		name string
		pe   *pgconn.PgError
		want bool
	}{
		{"index row too large", &pgconn.PgError{Severity: "ERROR", Code: "54000", Routine: "index_form_tuple_context"}, true},
		{"document too deep", &pgconn.PgError{Severity: "ERROR", Code: "54001", Routine: "check_stack_depth"}, true},
		{"xid wraparound stop", &pgconn.PgError{Severity: "ERROR", Code: "54000", Routine: "GetNewTransactionId"}, false},
		{"multixact wraparound stop", &pgconn.PgError{Severity: "ERROR", Code: "54000", Routine: "GetNewMultiXactId"}, false},
		{"notify queue full", &pgconn.PgError{Severity: "ERROR", Code: "54000", Routine: "PreCommit_Notify"}, false},
	} {
		if got := ingest.RequestSpecific(fmt.Errorf("commit: %w", tc.pe)); got != tc.want {
			t.Errorf("%s: requestSpecific = %v, want %v", tc.name, got, tc.want)
		}
	}
}
