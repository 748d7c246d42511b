package postgres_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"recsys/pkg/postgres"
	"recsys/pkg/testutil"
)

// presizeStatement sums what the server received, so a wrongly encoded parameter shows.
const presizeStatement = `SELECT coalesce(sum(length(d)), 0), count(*), $2::int8[] = ARRAY[1, 2, 3]::int8[], $3::text[] IS NULL, $4::text
	FROM unnest($1::text[]) d`

type presizeResult struct {
	bytes, docs int64
	idsEqual    bool
	nullIsNull  bool
	tail        string
}

func presizeArgs(docs []string) []any {
	return []any{docs, []int64{1, 2, 3}, []string(nil), "tail"}
}

// TestPresizedStatementsRoundTripWithFewerBytes (real PostgreSQL): statements and batches
// whose arguments were presized reach the server unchanged (a nil slice still as NULL), and
// encoding them allocates well under half of what pgx's regrowing buffers allocate.
func TestPresizedStatementsRoundTripWithFewerBytes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, testutil.PGDSN(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)

	docs := make([]string, 150)
	want := presizeResult{docs: int64(len(docs)), idsEqual: true, nullIsNull: true, tail: "tail"}
	for i := range docs {
		docs[i] = fmt.Sprintf("doc-%03d:", i) + strings.Repeat("x", 1000)
		want.bytes += int64(len(docs[i]))
	}
	scan := func(r pgx.Row) presizeResult {
		t.Helper()
		var got presizeResult
		if err := r.Scan(&got.bytes, &got.docs, &got.idsEqual, &got.nullIsNull, &got.tail); err != nil {
			t.Fatal(err)
		}
		return got
	}
	single := func(presize bool) presizeResult {
		args := presizeArgs(docs)
		if presize {
			args = postgres.PresizeArgs(conn, args)
		}
		return scan(conn.QueryRow(ctx, presizeStatement, args...))
	}
	batch := func(presize bool) presizeResult {
		var b pgx.Batch
		for range 3 {
			b.Queue(presizeStatement, presizeArgs(docs)...)
		}
		if presize {
			postgres.PresizeBatch(conn, &b)
		}
		br := conn.SendBatch(ctx, &b)
		defer br.Close()
		var got presizeResult
		for range 3 {
			if got = scan(br.QueryRow()); got != want {
				return got
			}
		}
		return got
	}
	for _, tc := range []struct {
		name string
		run  func(presize bool) presizeResult
	}{{"statement", single}, {"batch", batch}} {
		t.Run(tc.name, func(t *testing.T) {
			for _, presize := range []bool{false, true} {
				if got := tc.run(presize); got != want {
					t.Fatalf("presize=%v: server saw %+v, want %+v", presize, got, want)
				}
			}
			allocated := func(presize bool) uint64 {
				var before, after runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&before)
				for range 20 {
					tc.run(presize)
				}
				runtime.ReadMemStats(&after)
				return after.TotalAlloc - before.TotalAlloc
			}
			plain, presized := allocated(false), allocated(true)
			t.Logf("allocated per run: %d bytes with pgx's buffers, %d presized", plain/20, presized/20)
			if presized*2 > plain {
				t.Fatalf("presized statements allocated %d bytes, pgx's buffers %d: want under half", presized, plain)
			}
		})
	}
}
