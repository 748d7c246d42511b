package featurestore_test

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"recsys/pkg/featurestore"
	"recsys/pkg/testutil"
)

// A dead letter without a Kafka key (a message another producer published without one, or
// one the consumer stored without its key after PostgreSQL refused it whole) still holds the
// user's raw event. Forget deleted the DLQ by key only, so these kept an erased user's id,
// items and times for good. It now deletes those whose payload holds one of the users' ids
// as a JSON string value, whatever its escaping, and keeps the others' (and entries keyed by
// another user).
func TestForgetErasesKeylessDeadLettersOfTheUser(t *testing.T) {
	ctx := context.Background()
	dsn := testutil.MigratedDatabase(t)
	pool := testutil.Pool(t, dsn)
	st := featurestore.New(pool, nil, testutil.Unique("fk")+":", testConfig(), nil)
	const gone = "gone/é"
	for _, tc := range []struct {
		offset  int64
		key     []byte // nil: no key
		payload string
	}{
		{1, nil, `{"event_type":"watch","user_id":"gone/é","item_id":"i1","schema_version":9}`},
		{2, nil, `{"user_id": "gone\/\u00e9", "item_id": "i1"}`},                    // escaped as another encoder may
		{3, []byte{}, `{"user_id":"gone/é","item_id":"i1","watch_time_sec":"trunc`}, // not JSON: truncated
		{4, nil, `["x", "gone/é"]`},                          // a value, wherever it is
		{5, nil, `{"gone/é": 1, "user_id": "someone-else"}`}, // a member name, not a value
		{6, nil, `{"user_id":"gone/é-2"}`},                   // another id
		{7, []byte("someone-else"), `{"user_id":"someone-else","item_id":"gone/é"}`},
		{8, []byte(gone), `not json at all`}, // keyed: the deletion by key
		{9, nil, `not json, gone/é unquoted`},
		{10, nil, `{"wrapped":"{\"user_id\":\"gone/é\"}"}`}, // an event sent as a string
	} {
		if _, err := pool.Exec(ctx, `INSERT INTO feature_dlq (topic, kafka_partition, kafka_offset, msg_key, headers, payload, error)
VALUES ('t', 0, $1, $2, '{}', $3, 'decode')`, tc.offset, tc.key, []byte(tc.payload)); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := st.Forget(ctx, []string{gone}, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	left := dlqOffsets(t, pool)
	if want := []int64{5, 6, 7, 9}; !reflect.DeepEqual(left, want) {
		t.Errorf("dlq holds offsets %v after the erasure, want %v", left, want)
	}
	if rep.Deleted["feature_dlq"] != 1 || rep.Deleted["feature_dlq_keyless"] != 5 {
		t.Errorf("report deleted %v, want feature_dlq 1 and feature_dlq_keyless 5", rep.Deleted)
	}
	// A second run finds nothing more to delete.
	rep, err = st.Forget(ctx, []string{gone}, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Deleted["feature_dlq"] != 0 || rep.Deleted["feature_dlq_keyless"] != 0 {
		t.Errorf("second run deleted %v from the dlq, want nothing", rep.Deleted)
	}
}

// A batch storing a dead letter without a key judges it by the ids in its payload, as it
// judges a keyed one by its key: one of a user erased at or after its receive time is not
// stored. Otherwise such an entry stored after Forget cleared the DLQ (a consumer whose list
// predated the erasure) kept the user's raw event for good.
func TestKeylessDeadLetterOfAnErasedUserIsNotStored(t *testing.T) {
	ctx := context.Background()
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	st := featurestore.New(pool, nil, testutil.Unique("fs")+":", testConfig(), nil)
	const gone = "erased-keyless"
	rep, err := st.Forget(ctx, []string{gone}, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	entry := func(offset int64, key []byte, payload string, receivedMs int64) featurestore.DLQEntry {
		return featurestore.DLQEntry{Topic: "t", Partition: 0, Offset: offset, Key: key, Headers: map[string]string{},
			Payload: []byte(payload), Error: "decode", ReceivedMs: receivedMs}
	}
	before, after := rep.ForgottenAtMs-1000, rep.ForgottenAtMs+1000
	a, err := st.Apply(ctx, &featurestore.Batch{DLQ: []featurestore.DLQEntry{
		entry(1, nil, `{"user_id":"erased-keyless","ts_ms":"x"}`, before),
		entry(2, nil, `{"user_id":"erased-keyless","ts_ms":"x"}`, after), // the user came back
		entry(3, nil, `{"user_id":"someone-else","ts_ms":"x"}`, before),
		entry(4, []byte{}, `{"user_id":"erased-keyless"`, before),
		entry(5, []byte{0xff, 0xfe}, `{"user_id":"erased-keyless"}`, before), // a key no user id can be
		entry(6, nil, "\xff\"erased-keyless\"\x00 binary", before),
	}})
	if err != nil {
		t.Fatal(err)
	}
	stored := dlqOffsets(t, pool)
	if want := []int64{2, 3}; !reflect.DeepEqual(stored, want) {
		t.Errorf("dlq holds offsets %v, want %v", stored, want)
	}
	if want := []int{0, 3, 4, 5}; !reflect.DeepEqual(a.DLQErased, want) {
		t.Errorf("entries reported erased %v, want %v", a.DLQErased, want)
	}
}

// dlqOffsets are the Kafka offsets of the DLQ's entries, increasing.
func dlqOffsets(t *testing.T, pool *pgxpool.Pool) []int64 {
	t.Helper()
	rows, _ := pool.Query(context.Background(), `SELECT kafka_offset FROM feature_dlq ORDER BY kafka_offset`)
	offsets, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}
	return offsets
}
