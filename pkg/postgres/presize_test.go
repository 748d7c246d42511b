package postgres

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"
)

// TestArgBytesMatchesBinaryEncoding: the estimate is the size pgx encodes for the bulk types,
// so the reserved buffers are neither regrown nor oversized.
func TestArgBytesMatchesBinaryEncoding(t *testing.T) {
	s := "x"
	cases := []struct {
		name string
		oid  uint32
		v    any
	}{
		{"text", pgtype.TextOID, strings.Repeat("a", 300)},
		{"bytea", pgtype.ByteaOID, []byte("abcdef")},
		{"text[]", pgtype.TextArrayOID, []string{"item-1", "", strings.Repeat("b", 40)}},
		{"bytea[]", pgtype.ByteaArrayOID, [][]byte{[]byte("ab"), []byte("cde")}},
		{"text[] with NULLs", pgtype.TextArrayOID, []*string{&s, nil, &s}},
		{"int8[]", pgtype.Int8ArrayOID, []int64{1, 2, 3}},
		{"float8[]", pgtype.Float8ArrayOID, []float64{0.5, 1}},
		{"int4[]", pgtype.Int4ArrayOID, []int32{7, 8}},
		{"int2[]", pgtype.Int2ArrayOID, []int16{7, 8, 9}},
		{"bool[]", pgtype.BoolArrayOID, []bool{true, false}},
	}
	m := pgtype.NewMap()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			buf, err := m.Encode(tc.oid, pgtype.BinaryFormatCode, tc.v, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := argBytes(tc.v); got != len(buf) {
				t.Fatalf("argBytes = %d, binary encoding is %d bytes", got, len(buf))
			}
		})
	}
}

// TestHintedArgumentsEncodeAsTheirValue: a wrapped argument encodes to exactly the bytes of the
// value it wraps, with the parameter buffer grown once to the statement's size; nil and empty
// values are not wrapped (pgx sends a nil slice as NULL), nor types without a case.
func TestHintedArgumentsEncodeAsTheirValue(t *testing.T) {
	m := pgtype.NewMap()
	enableHints(m)
	enableHints(m) // idempotent
	if n := len(m.TryWrapEncodePlanFuncs); n != len(pgtype.NewMap().TryWrapEncodePlanFuncs)+1 {
		t.Fatalf("%d wrap functions after enabling twice", n)
	}
	vals := []struct {
		oid uint32
		v   any
	}{
		{pgtype.TextArrayOID, []string{strings.Repeat("d", 2000), "e"}},
		{pgtype.TextOID, strings.Repeat("f", 1500)},
		{pgtype.Int8ArrayOID, []int64{1, 1 << 40}},
	}
	for _, tc := range vals {
		want, err := m.Encode(tc.oid, pgtype.BinaryFormatCode, tc.v, nil)
		if err != nil {
			t.Fatal(err)
		}
		w, ok := wrapHint(tc.v, 64<<10)
		if !ok {
			t.Fatalf("%T not wrapped", tc.v)
		}
		got, err := m.Encode(tc.oid, pgtype.BinaryFormatCode, w, []byte("prefix"))
		if err != nil {
			t.Fatal(err)
		}
		if string(got[6:]) != string(want) || string(got[:6]) != "prefix" {
			t.Fatalf("%T: hinted encoding differs", tc.v)
		}
		if cap(got) < 64<<10 {
			t.Fatalf("%T: buffer capacity %d, want the hinted 64 KiB", tc.v, cap(got))
		}
	}
	// Presizing arguments again (a batch sent twice) wraps nothing more and estimates the same.
	args := []any{[]string{strings.Repeat("g", 3000)}, []int64{1}}
	n1 := hintArgs(m, args)
	n2 := hintArgs(m, args)
	if _, ok := args[0].(sizeHint[[]string]); !ok || n2 != n1 {
		t.Fatalf("presized twice: estimates %d then %d, first argument %T", n1, n2, args[0])
	}
	if _, ok := args[1].(hinted); ok {
		t.Fatal("a second argument was wrapped on the second pass")
	}
	for _, v := range []any{nil, []string(nil), []string{}, "", 42, struct{}{}} {
		if _, ok := wrapHint(v, 4096); ok {
			t.Fatalf("%#v wrapped", v)
		}
	}
}
