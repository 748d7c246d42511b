// Package relay is the "relay" role: it moves event_outbox rows to Kafka, safely with any
// number of relays, through any crash or broker outage, adding only milliseconds of delay.
//
// # How it works
//
// Workers (--relay.workers per process) each loop: claim a batch (pkg/outbox: leased rows
// under a fencing token, per-key order enforced by the claim), publish it with the kafka-go
// Writer (acks=all, key = user id, headers event_id, event_type, schema_version, outbox_id,
// correlation_id; one WriteMessages call per topic), then record the outcome for the rows
// whose lease the claim still holds. The lease is renewed every third of --relay.lease while
// the batch is in flight. An idle worker sleeps until a NOTIFY on recsys_outbox (a dedicated
// LISTEN connection, reconnected with backoff) or --relay.poll-interval; a worker that finds
// a full batch wakes another one, so parallelism follows the backlog.
//
// Failures: a failed row retries after an exponential backoff with jitter
// (--relay.retry-base doubling up to --relay.retry-max) and ends dead with its last error
// after its max_attempts claims; a message larger than the broker accepts goes dead at once.
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
// bounded by the batches in flight (per relay 2 × --relay.workers × --relay.batch-size: each
// worker has one batch publishing and at most one whose outcome is being recorded) and carry
// the same event_id header for consumers to deduplicate.
//
// # Metrics
//
// Contract names (api-contract §9.1):
//   - reco_outbox_relay_published_total{topic}: rows acked by Kafka
//   - reco_outbox_relay_failed_total{topic}: failed publish attempts
//   - reco_outbox_relay_event_lag_ms: now - created_at at each publish attempt (histogram, ms)
//   - reco_outbox_backlog_events{status=pending|publishing|dead}, reco_outbox_backlog_oldest_lag_ms:
//     the snapshot, refreshed every --relay.snapshot-interval
//   - reco_outbox_relay_errors_total{stage}: startup, claim, publish, mark_failed, process,
//     metrics, stop, stop_timeout, plus renew, reap, retention and listen
//
// recsys additions: recsys_relay_commit_to_ack_seconds (created_at to Kafka ack, measured
// with the database's clock for the part before the claim), recsys_relay_batch_size,
// recsys_relay_publish_duration_seconds, recsys_relay_claim_duration_seconds,
// recsys_relay_complete_duration_seconds, recsys_relay_fenced_total (outcomes dropped because
// the lease was lost), recsys_relay_lease_lost_total (seen while renewing),
// recsys_relay_dead_total, recsys_relay_held_back_total (rows put back behind an earlier
// failure of their key), recsys_relay_reaped_total{outcome=requeued|dead},
// recsys_relay_retention_deleted_total.
//
// # Readiness
//
// Not ready until the topics exist (created at start with --kafka.partitions and
// --kafka.replication-factor, retried until Kafka answers) and while Kafka looks unreachable
// (a whole batch failed and no probe has succeeded since). /healthz and /readyz carry
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
		Needs:     infra.Postgres | infra.Kafka,
		NewConfig: newCfg,
		New:       build,
	})
}

// New wires the role from the process' shared clients.
func New(cfg *Config, d infra.Deps) (module.Module, error) { return NewRelay(cfg, d, Options{}) }
