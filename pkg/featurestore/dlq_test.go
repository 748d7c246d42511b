package featurestore_test

import (
	"bytes"
	"context"
	"testing"

	"recsys/pkg/featurestore"
	"recsys/pkg/testutil"
)

// Whatever bytes a poison message's headers or error hold, its DLQ entry is stored (text and
// jsonb refuse NUL and invalid UTF-8: they are replaced), and its key and payload exactly.
func TestDLQEntryWithAnyBytesIsStored(t *testing.T) {
	ctx := context.Background()
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	st := featurestore.New(pool, nil, testutil.Unique("dlq")+":", testConfig(), nil)
	for i, tc := range []struct {
		name        string
		headers     map[string]string
		err         string
		wantHeaders string
		wantErr     string
	}{
		{"nul in a header value", map[string]string{"event_type": "watch", "trace": "\x00\x01"},
			"bad", `{"trace": "\ufffd\u0001", "event_type": "watch"}`, "bad"},
		{"nul in a header key", map[string]string{"a\x00b": "v"}, "bad", `{"a\ufffdb": "v"}`, "bad"},
		{"invalid utf-8", map[string]string{"bin": "\xff\xfe"}, "bad \xff", `{"bin": "\ufffd"}`, "bad \ufffd"},
		{"nul in the error", nil, "decode: \x00 at 3", `{}`, "decode: \ufffd at 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			payload, key := []byte("raw \x00\xff payload"), []byte("k\x00\xff")
			e := featurestore.DLQEntry{Topic: "t", Partition: 0, Offset: int64(i), Key: key, Headers: tc.headers, Payload: payload, Error: tc.err}
			if _, err := st.Apply(ctx, &featurestore.Batch{DLQ: []featurestore.DLQEntry{e}}); err != nil {
				t.Fatalf("store dlq entry: %v", err)
			}
			var gotKey, gotPayload []byte
			var gotHeaders, gotErr string
			if err := pool.QueryRow(ctx, `SELECT msg_key, payload, headers::text, error FROM feature_dlq WHERE kafka_offset = $1`, i).
				Scan(&gotKey, &gotPayload, &gotHeaders, &gotErr); err != nil {
				t.Fatal(err)
			}
			var want string
			_ = pool.QueryRow(ctx, `SELECT $1::jsonb::text`, tc.wantHeaders).Scan(&want)
			if !bytes.Equal(gotKey, key) || !bytes.Equal(gotPayload, payload) || gotHeaders != want || gotErr != tc.wantErr {
				t.Errorf("stored key %q payload %q headers %s error %q; want %q %q %s %q", gotKey, gotPayload, gotHeaders, gotErr,
					key, payload, want, tc.wantErr)
			}
		})
	}
}
