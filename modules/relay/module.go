// Package relay is the "relay" role: it moves event_outbox rows to Kafka, safely with any
// number of relays, through any crash or broker outage, adding only milliseconds of delay.
//
// # How it works
//
// Workers (--relay.workers per process) each loop: claim a batch (pkg/outbox: leased rows
// under a fencing token, per-key order enforced by the claim; at most --relay.batch-size rows
// and --relay.batch-events events), publish every event of it with kafka.Producer
// (acks=all, one message per event, key = the event's user id, headers event_id, event_type,
// schema_version, outbox_id, outbox_seq for batch rows, correlation_id; one produce request
// per broker for the whole batch), then record the outcome for the rows whose lease the claim still holds. The
// lease is renewed every third of --relay.lease from the claim until the outcome is recorded
// (a renewal skips the rows the recording already holds locked, which no reap can take), so a
// recording slowed down past the lease by a degraded database does not let another relay
// publish the batch again, nor a reap send a row acked on its last attempt to dead; a recording
// that fails is retried for as long as one lease, so a database that refuses writes for less
// than that (a failover) costs no republished batch. An idle worker
// sleeps until a NOTIFY on recsys_outbox (a dedicated LISTEN connection, reconnected with
// backoff) or --relay.poll-interval; a worker that finds a full batch wakes another one, and a
// recorded batch wakes one when a claim left rows behind its units, so parallelism follows the
// backlog.
//
// # Rows and events
//
// A row of payload_format 1 is one event (its columns). A row of payload_format 2 (migration
// 0008, written by ingest: one row per topic and lane per group commit, msg_key the lane key)
// carries event_count events as frames (pkg/outbox.DecodeBatch); each becomes one message
// keyed by its user id. A user's events always ride in one lane, and the lane is the order
// unit, so per-user order holds. A row is acked only when all its messages are; otherwise the
// whole row is retried (its acked messages are sent again: at-least-once, consumers
// deduplicate on (event_id, user_id)) and the later rows of its lane wait. A batch row that does not
// decode is poison: it goes dead at once with the decode error (it would fail forever) and
// its lane goes on.
//
// Failures: a failed row retries after an exponential backoff with jitter
// (--relay.retry-base doubling up to --relay.retry-max) and ends dead with its last error
// after its max_attempts claims; a message larger than the broker accepts goes dead at once:
// within a batch row only that event, stored as a dead single-event row of its own (msg_key
// its user id, so a replay acts on it alone) in the transaction that records the row, whose
// other events (other clients' among them) are published. The broker's refusal is about a
// record batch, so kafka.Producer splits a refused batch of several messages until the broker
// takes the pieces; only an event refused alone goes dead, and what its partition did not send
// behind it is sent again in the same publish. The API refuses such events first
// (--ingest.max-event-bytes, which must stay well below --relay.max-batch-bytes), and the relay
// refuses to start with --relay.max-batch-bytes above a topic's max.message.bytes (a warning
// only when it may not describe the topics).
// Later rows of the failed row's key wait (see pkg/outbox for the per-key order mechanism).
// When a whole batch fails the relay treats Kafka as unreachable: it stops claiming and
// probes Kafka every --relay.probe-interval, so an outage spends no attempts beyond the batch
// in flight, and it resumes as soon as Kafka answers. Expired leases (a relay that crashed)
// are reclaimed every --relay.reap-interval and count as an attempt. With --relay.retention 0
// (the default) rows are deleted when their ack is recorded; with a positive value they are
// kept as 'published' that long (for `relay replay --status published`) and then deleted in
// batches of --relay.retention-batch.
//
// Each worker records a batch's outcome in the background while it claims and publishes its
// next batch (at most one recording pending per worker).
//
// Delivery is at-least-once: a relay that dies after Kafka acked a batch but before recording
// it leaves that batch to be published again after its lease expires, so duplicates are
// bounded by the batches in flight (per relay 2 × --relay.workers × --relay.batch-events: each
// worker has one batch publishing and at most one whose outcome is being recorded) and carry
// the same event_id header for consumers to deduplicate.
//
// # Metrics
//
// Contract names (api-contract §9.1):
//   - reco_outbox_relay_published_total{topic}: events (messages) acked by Kafka
//   - reco_outbox_relay_failed_total{topic}: events of failed publish attempts (every event of
//     a failed row, since all are sent again); both exported at 0 for the relay's topics
//     from its start
//   - reco_outbox_relay_event_lag_ms: now - created_at at each publish attempt, per event
//     (histogram, ms)
//   - reco_outbox_backlog_events{status=pending|publishing|dead}, reco_outbox_backlog_oldest_lag_ms:
//     the snapshot in events (sum of event_count, bounded), refreshed every
//     --relay.snapshot-interval; one series per process, which an api module also sets from
//     its health snapshot (outbox.ExportBacklog)
//   - reco_outbox_relay_errors_total{stage}: startup, claim, publish, mark_failed, process,
//     metrics, stop, stop_timeout, plus renew, reap, retention and listen
//
// recsys additions: recsys_relay_commit_to_ack_seconds (created_at to Kafka ack per event,
// measured with the database's clock for the part before the claim), recsys_relay_batch_size
// (events per claimed batch), recsys_relay_undecodable_rows_total (poison batch rows sent to
// dead),
// recsys_relay_publish_duration_seconds, recsys_relay_claim_duration_seconds,
// recsys_relay_complete_duration_seconds, recsys_relay_fenced_total (outcomes dropped because
// the lease was lost; a retry that finds its rows already recorded by an attempt whose answer
// was lost counts only once the lease could have expired, when the two cannot be told apart),
// recsys_relay_lease_lost_total (rows seen lost while renewing during the publish, each once;
// a row lost while its outcome is being recorded counts as fenced),
// recsys_relay_dead_total (rows this relay recorded as dead, plus events dead-lettered out of
// a batch row; a fenced outcome counts nothing),
// recsys_relay_held_back_total (rows put back behind an earlier
// failure of their key), recsys_relay_reaped_total{outcome=requeued|dead},
// recsys_relay_erased_events_total (events of users erased by `recsys users forget` before
// their row went dead, deleted from it rather than kept dead),
// recsys_relay_retention_deleted_total, recsys_relay_kafka_unreachable (1 while the relay
// publishes nothing because of Kafka: paused after a batch failed whole, or its topics not
// provisioned yet; the failed counter stops growing meanwhile).
//
// # Readiness
//
// Not ready until the topics exist (created at start with --kafka.partitions and
// --kafka.replication-factor, retried until Kafka answers), while Kafka looks unreachable
// (a whole batch failed and no probe has succeeded since), and while the last
// --relay.unready-after-failures claims failed (PostgreSQL refuses the relay's writes: a full
// disk, a revoked permission), or as many attempts to record batch outcomes failed (acked
// batches are then published again after their lease: no progress); the workers keep
// claiming and recording, and the first claim (or recording) that succeeds makes the relay
// ready again, as does no recording failing for --relay.lease + --relay.retry-max + 1 minute
// (nothing left to record). /healthz and /readyz carry
// {"event_backbone": {"mode": "transactional_outbox", "outbox": <snapshot>}} (pkg/outbox.Backlog).
package relay

import (
	"recsys/pkg/infra"
	"recsys/pkg/module"
)

func init() {
	newCfg, build := module.Typed(NewConfig, New)
	module.Register(module.Info{
		Name:      "relay",
		Summary:   "moves event_outbox rows to Kafka (leases with fencing, per-key order, retries, dead rows)",
		Role:      true,
		Before:    []string{"ingest", "reco"}, // stop after the producers: what they flush at shutdown is relayed in the deadline
		Needs:     infra.Postgres | infra.Kafka,
		NewConfig: newCfg,
		New:       build,
	})
}

// New wires the role from the process' shared clients.
func New(cfg *Config, d infra.Deps) (module.Module, error) { return NewRelay(cfg, d, Options{}) }
