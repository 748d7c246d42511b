// Package outbox is the relay side of the transactional outbox: the PostgreSQL repository that
// claims event_outbox rows under a lease, records what happened to them with fencing, reclaims
// expired leases, deletes old published rows, requeues rows for replay and computes the backlog
// snapshot shown by /healthz (in events), and the batch row codec (batch.go).
//
// # Row life cycle
//
// Writers insert rows as 'pending' (attempts 0, next_attempt_at now()) and NOTIFY Channel on
// commit. A claim moves due rows to 'publishing' under a lease (owner, expiry and a fencing
// token drawn from a sequence) and counts the attempt right away, so every claim is an attempt
// whether it ends in an ack, an error or a crash. Complete moves them to 'published' (or,
// with DeleteOnAck, deletes them), or back to 'pending' with a backoff, or to 'dead' once
// attempts reach max_attempts; it touches only
// rows that still carry the claim's token, so a relay that lost its lease cannot overwrite the
// new owner's outcome. Reap returns rows whose lease expired (a relay crashed or stalled) to
// 'pending' with a backoff, or to 'dead' when their attempts are used up, so a row that crashes
// every relay that touches it still ends dead. A row going dead loses, in the same
// transaction, the events of users erased before it was created (eraseForgotten): dead rows
// are kept for good, and `recsys users forget` (EraseDead) only scrubs those already dead.
//
// # Per-key order
//
// The order unit is (msg_key, topic). For a single row (payload_format 1) msg_key is the
// user id: exactly what a Kafka consumer can observe, since one key maps to one partition of
// one topic. For a batch row (payload_format 2, see batch.go) msg_key is the lane key: the
// row's events belong to many users, each of whom always writes to the same lane, so a lane
// in row order is each of its users' commit order (frames keep a row's events in order).
// A batch row is one unit of outcome: acked when every event is, otherwise retried whole. Within a unit, rows go out one claim at a time, in id
// order, and a later row never overtakes an earlier one that is retrying. The claim (one
// transaction, see claim.go) enforces it for any number of relays and workers:
//
//  1. A pending row is a candidate only if it is the head of its unit (the unit's lowest
//     unpublished id) or the head is itself pending and due: a unit whose head is in backoff
//     or in flight is skipped without being locked.
//  2. Candidates are locked with FOR UPDATE SKIP LOCKED.
//  3. In a snapshot taken after those locks, a unit is kept only if nothing of it is
//     'publishing' and no unpublished row of it with an id below the end of the locked run is
//     outside the run. A row another claimer skipped past because we held its lock, or one
//     locked by a claim still in progress elsewhere, is still 'pending' (unpublished) there,
//     so the unit is dropped rather than published concurrently: of two claimers racing for a
//     unit, at most the one holding its head run keeps it. When only the run's tail is
//     interrupted (a gap), the head row alone is kept.
//
// So a unit is claimed as a consecutive run that starts at its head, by one claim at a time,
// and the next run can only be claimed after the previous one was acked and marked. A batch
// may fail part-way (kafka-go reports errors per message): Settle walks each unit in id order
// and, after the first failure, holds back every later row of that unit (its attempt is
// refunded) even if Kafka acked it, so a later row is never marked published before an earlier
// one. A row held back after Kafka acked it is published again after the earlier row, so it
// reaches Kafka twice and its first copy precedes that row: possible only when one unit's
// messages were split over two produce requests and the earlier request failed (the relay
// sizes its writer so that a batch's messages for one partition normally fit one request).
// Consumers deduplicate on (event_id, user_id).
// Dead rows stop blocking their unit (the rest of it goes on); replay publishes them again
// after the rows that overtook them.
//
// The guarantee is in id order among committed rows. A row whose transaction commits after a
// later-id row of the same unit was already claimed goes out after it: that is commit order,
// which is the order the writers' transactions actually took effect in.
//
// # Bounded queries
//
// Every statement reads through a partial index on one status (migration 0003).
// The claim is two round trips (lock, then check and lease in one statement); with
// DeleteOnAck a row costs the database one non-HOT update (the claim: status is in every
// partial index's predicate) and one delete, whatever number of events it carries, which is
// why writers batch events into rows. A claim is bounded in rows (Limit) and in events
// (MaxEvents, a running sum of event_count in id order). The claim
// scans a bounded window of pending rows (a few times the batch size) from a cursor the caller
// advances when the front of the queue is congested by blocked units, so one hot key with a
// long retrying backlog cannot make every claim scan the whole table. Snapshot counts each
// status up to a limit instead of counting the table.
package outbox

import (
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Channel is the PostgreSQL NOTIFY channel writers signal after committing outbox rows.
const Channel = "recsys_outbox"

// NotifyImpressionsOnly is the payload of a notification whose commit wrote impressions and
// nothing else: the relay may wait up to --relay.impression-linger to claim them together with
// later commits. Any other payload, the empty one of replays and of earlier writers included,
// asks for a claim within --relay.linger.
const NotifyImpressionsOnly = "i"

// Statuses of event_outbox rows.
const (
	StatusPending    = "pending"
	StatusPublishing = "publishing"
	StatusPublished  = "published"
	StatusDead       = "dead"
)

// Store is the event_outbox repository used by the relay and the replay command.
type Store struct {
	pool        *pgxpool.Pool
	deleteOnAck bool
}

// StoreOption tunes a Store.
type StoreOption func(*Store)

// DeleteOnAck makes Complete delete the rows Kafka acked instead of marking them 'published'
// for the age-based retention to delete later. Each message then costs one row update (the
// claim) and one delete, instead of two non-HOT updates (each adding index entries) and a
// delete, and the table holds only the unpublished backlog. Fencing is unchanged: only rows
// that still carry the claim's token are deleted.
func DeleteOnAck() StoreOption { return func(s *Store) { s.deleteOnAck = true } }

// NewStore returns a store over pool.
func NewStore(pool *pgxpool.Pool, opts ...StoreOption) *Store {
	s := &Store{pool: pool}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Row is one claimed outbox row.
type Row struct {
	ID            int64
	EventID       string
	EventType     string
	Topic         string
	Key           string // msg_key: the user id, the Kafka message key
	Payload       []byte
	SchemaVersion int16
	CorrelationID string
	// PayloadFormat is FormatSingle (the columns above are the one event) or FormatBatch
	// (Payload holds EventCount frames; Key is the lane key; see Messages).
	PayloadFormat int16
	EventCount    int
	Attempts      int // including the claim that returned this row
	MaxAttempts   int
	CreatedAt     time.Time
	// AgeAtClaim is now() - created_at measured by the database when the row was claimed, so
	// latencies derived from it do not depend on the relay's clock agreeing with the database's.
	AgeAtClaim time.Duration
}

// Messages returns the events the row carries, in order: for FormatSingle the one event its
// columns describe, for FormatBatch its decoded frames. An error means the row can never be
// published (a poison row): the relay sends it to 'dead' with the error at once.
func (r Row) Messages() ([]Message, error) {
	switch r.PayloadFormat {
	case FormatSingle, 0:
		return []Message{{EventID: r.EventID, EventType: r.EventType, Key: r.Key, CorrelationID: r.CorrelationID,
			SchemaVersion: r.SchemaVersion, Payload: r.Payload}}, nil
	case FormatBatch:
		return DecodeBatch(r.Payload, r.EventCount)
	default:
		return nil, fmt.Errorf("decode outbox row %d: unknown payload_format %d", r.ID, r.PayloadFormat)
	}
}

// Events is how many events the row carries (1 for FormatSingle).
func (r Row) Events() int { return max(r.EventCount, 1) }

// Unit is the per-key order unit of a row.
type Unit struct{ Key, Topic string }

// Unit returns the row's order unit.
func (r Row) Unit() Unit { return Unit{Key: r.Key, Topic: r.Topic} }
