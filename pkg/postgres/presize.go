package postgres

import (
	"errors"
	"reflect"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// pgx keeps two buffers per connection for outgoing statements and shrinks both before the
// next statement: the parameter buffer back to 256 bytes (pgx.ExtendedQueryBuilder) and the
// protocol write buffer back to 1 KiB after each flush (pgproto3.Frontend). A statement with
// large parameters (the consumer's user documents, the autolog's arrays of shown items) then
// grows each of them again by append, in 1.25x steps past 256 bytes: every parameter byte is
// copied about five times over a dozen allocations, and those regrowths were a third of the
// bytes recsys allocated with the whole pipeline running (session 17). Neither size can be
// configured upstream, but both buffers are only appended to, so reserving their capacity
// once, just before the statement, turns the regrowths into one allocation each:
//   - PresizeArgs wraps a statement's first argument in a sizeHint: its encode plan grows the
//     parameter buffer to the size of all the statement's parameters, then encodes the value
//     as pgx would have;
//   - the send buffer is grown through Frontend.Send with a message that encodes to nothing
//     but capacity (reserveMsg).

// presizeMin is the size under which pgx's retained buffers already fit the statement.
const presizeMin = 1024

// stmtOverhead bounds what a statement adds to its parameters in the send buffer: the Bind
// message's header, statement name (~50 bytes in pgx's cache) and format codes, and the
// Describe and Execute messages after it. Short by a byte, the buffer would be regrown.
const stmtOverhead = 512

// sizeHint carries a statement argument and the bytes the whole statement's parameters take.
type sizeHint[T any] struct {
	value T
	bytes int
}

type hinted interface{ hint() (value any, bytes int) }

func (h sizeHint[T]) hint() (any, int) { return h.value, h.bytes }

// hintPlan grows the parameter buffer, then hands the value to the plan pgx chose for it.
type hintPlan struct{ next pgtype.EncodePlan }

func (p *hintPlan) SetNext(next pgtype.EncodePlan) { p.next = next }

func (p *hintPlan) Encode(value any, buf []byte) ([]byte, error) {
	v, n := value.(hinted).hint()
	return p.next.Encode(v, grow(buf, n))
}

var tryWrapHintPC = reflect.ValueOf(tryWrapHint).Pointer()

func tryWrapHint(value any) (pgtype.WrappedEncodePlanNextSetter, any, bool) {
	if h, ok := value.(hinted); ok {
		v, _ := h.hint()
		return &hintPlan{}, v, true
	}
	return nil, nil, false
}

// enableHints teaches a connection's type map to encode sizeHint arguments. The connection
// is held by the caller, so changing its map is safe; plans pgx memoised stay valid.
// (Asking the map for a plan would memoise "none" for the type it asked about.)
func enableHints(m *pgtype.Map) {
	if f := m.TryWrapEncodePlanFuncs; len(f) > 0 && reflect.ValueOf(f[0]).Pointer() == tryWrapHintPC {
		return
	}
	m.TryWrapEncodePlanFuncs = append([]pgtype.TryWrapEncodePlanFunc{tryWrapHint}, m.TryWrapEncodePlanFuncs...)
}

// reserveMsg is a protocol message of no bytes whose encoding reserves send-buffer capacity.
type reserveMsg int

func (reserveMsg) Frontend() {}

func (reserveMsg) Decode([]byte) error { return errors.New("postgres: reserveMsg is never received") }

func (n reserveMsg) Encode(dst []byte) ([]byte, error) { return grow(dst, int(n)), nil }

// grow is slices.Grow in one allocation: built with -race, slices.Grow allocates the room
// twice (its append of a make is not optimised away there).
func grow(b []byte, n int) []byte {
	if cap(b)-len(b) >= n {
		return b
	}
	nb := make([]byte, len(b), len(b)+n)
	copy(nb, b)
	return nb
}

// PresizeArgs prepares one statement's arguments for conn: when they are large, the first
// argument of a bulk type is wrapped so pgx encodes all of them into one allocation, and the
// send buffer is reserved for them. It returns args, changed in place.
func PresizeArgs(conn *pgx.Conn, args []any) []any {
	if n := hintArgs(conn.TypeMap(), args); n >= presizeMin {
		conn.PgConn().Frontend().Send(reserveMsg(n + stmtOverhead))
	}
	return args
}

// PresizeBatch does what PresizeArgs does for every statement of b, and reserves the send
// buffer for all of them: a batch goes out in one write.
func PresizeBatch(conn *pgx.Conn, b *pgx.Batch) {
	total := 0
	for _, q := range b.QueuedQueries {
		total += hintArgs(conn.TypeMap(), q.Arguments) + stmtOverhead
	}
	if total >= presizeMin {
		conn.PgConn().Frontend().Send(reserveMsg(total))
	}
}

// hintArgs wraps the first argument of a large statement that wrapHint knows; it returns the
// statement's estimated size.
func hintArgs(m *pgtype.Map, args []any) int {
	n := 0
	for _, a := range args {
		n += 4 + argBytes(a)
	}
	if n < presizeMin {
		return n
	}
	for _, a := range args {
		if _, ok := a.(hinted); ok {
			return n // presized before (a batch sent again)
		}
	}
	for i, a := range args {
		if w, ok := wrapHint(a, n); ok {
			enableHints(m)
			args[i] = w
			break
		}
	}
	return n
}

// wrapHint wraps a in a sizeHint of its own type, so pgx memoises one plan per argument type.
// It reports false for nil, empty values (pgx encodes a nil slice as NULL, and an unwrapped
// value keeps that) and the types without a case here.
func wrapHint(a any, n int) (any, bool) {
	switch v := a.(type) {
	case string:
		return hint(v, len(v), n)
	case []byte:
		return hint(v, len(v), n)
	case []string:
		return hint(v, len(v), n)
	case [][]byte:
		return hint(v, len(v), n)
	case []*string:
		return hint(v, len(v), n)
	case []int64:
		return hint(v, len(v), n)
	case []int32:
		return hint(v, len(v), n)
	case []int16:
		return hint(v, len(v), n)
	case []float64:
		return hint(v, len(v), n)
	case []bool:
		return hint(v, len(v), n)
	}
	return a, false
}

func hint[T any](v T, length, n int) (any, bool) {
	if length == 0 {
		return nil, false
	}
	return sizeHint[T]{v, n}, true
}

// argBytes estimates the binary encoding of a: exact for the types statements here send in
// bulk, a word for the rest. Arrays carry a 20-byte header and a 4-byte length per element.
func argBytes(a any) int {
	const hdr = 20
	switch v := a.(type) {
	case nil:
		return 0
	case hinted:
		inner, _ := v.hint()
		return argBytes(inner)
	case string:
		return len(v)
	case []byte:
		return len(v)
	case []string:
		n := hdr + 4*len(v)
		for _, s := range v {
			n += len(s)
		}
		return n
	case [][]byte:
		n := hdr + 4*len(v)
		for _, s := range v {
			n += len(s)
		}
		return n
	case []*string:
		n := hdr + 4*len(v)
		for _, s := range v {
			if s != nil {
				n += len(*s)
			}
		}
		return n
	case []int64:
		return hdr + 12*len(v)
	case []float64:
		return hdr + 12*len(v)
	case []int32:
		return hdr + 8*len(v)
	case []int16:
		return hdr + 6*len(v)
	case []bool:
		return hdr + 5*len(v)
	}
	return 8
}
