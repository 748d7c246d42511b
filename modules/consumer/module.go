// Package consumer is the "consumer" role: it applies the impression and watch events of
// Kafka to the feature store (pkg/featurestore), exactly once, watches within milliseconds.
//
// # How it works
//
// One consumer group (--consumer.group-id) reads both topics; each member fetches all its
// partitions in one request per leader broker (kafka.GroupReader), so the broker's fetch
// requests grow with members and brokers, not partitions. A fetch goroutine decodes each
// message (structural validation only: old events from backfills and replays apply) and hands
// it to the apply loop, which takes everything available (waiting --consumer.linger for more,
// --consumer.impression-linger while it has impressions only) and splits it by user (hashed)
// into --consumer.max-in-flight lanes, each share at most --consumer.max-batch events. Each
// lane applies its share in ONE PostgreSQL transaction, its shares one after the other, while
// the other lanes' transactions run: PostgreSQL works on one while Go works on another. The
// (event_id, user_id) keys are recorded in feature_applied in that transaction, so a redelivery, a rebalance
// or a crash between the commit and the Kafka offset commit changes nothing; one user's events
// stay in one lane, so they keep their partition order even when a transaction fails and is
// retried; hot items get one UPSERT per transaction, keys sorted (users, then lists, then
// items) so lanes and consumers never deadlock, and their effects are sums (any commit order
// gives the same state). Poison messages (undecodable, invalid, unsupported schema) are stored
// in feature_dlq in the same transaction, with their raw bytes and Kafka coordinates, and the
// partition moves on; the line logged for each carries its event_id and the correlation_id of
// its Kafka header (the X-Correlation-ID of the request that sent it). Offsets are committed by their own goroutine, off the apply path, and
// only for batches whose every share AND every earlier batch committed in PostgreSQL (highest
// offset per partition, coalesced while a commit is in flight; what was applied is committed at
// shutdown). Redis is written after the commit with the absolute values the commit returned.
//
// Failures: a transient error (PostgreSQL or Kafka blip, lock timeout) retries the whole batch
// with exponential backoff (--consumer.retry-backoff doubling up to --consumer.retry-max-backoff)
// without committing, so the retry survives a rebalance or a restart (the messages are simply
// redelivered). Valid events never go to the DLQ for a transient error; a PostgreSQL data
// error that one event causes is isolated by applying the batch event by event, and only
// that event is dead-lettered. A failed Redis write leaves the batch's journal row, which the
// heal loop (every --consumer.heal-interval) rewrites from PostgreSQL; when P+"ready" is
// missing (Redis restarted empty or was flushed) the heal loop repopulates the copy from
// PostgreSQL by itself. A decay landmark rebase (an event more than 500 half-lives after the
// landmark: every ~125 days with a 6 h half-life) is applied in PostgreSQL under an exclusive
// lock and triggers such a repopulation; it rewrites every item, so it is not bounded by
// --consumer.drain-timeout as a batch's attempts are (a shutdown during one waits for it).
//
// # Metrics
//
// Contract names (api-contract §9.1):
//   - reco_feature_consumer_processed_total{topic,status}: status processed, duplicate,
//     invalid_payload, invalid_event, dlq (stored in the DLQ), error (events of a failed attempt)
//   - reco_feature_consumer_event_lag_ms{topic}: now - Kafka message time (histogram, ms)
//   - reco_feature_consumer_partition_lag{topic,partition}: high watermark - next offset to
//     apply, from the fetched messages, the commits and a ListOffsets every heal interval (it
//     grows while nothing is applied); a member reports the partitions it owns only, and a
//     partition whose high-water mark could not be read keeps the last one read (a lower
//     bound; counted under lag_metrics and logged)
//   - reco_feature_consumer_errors_total{stage}: startup, poll, process, poison_message,
//     dlq_store, commit, lag_metrics, dlq_metrics, stop, plus redis (a failed Redis write), heal
//     (repopulation or journal healing), retention and forgotten_users; these and the processed
//     counters of the consumer's topics are exported at 0 from the start
//   - reco_feature_consumer_dlq_events_total{outcome="stored"}, and
//     recsys_consumer_dlq_erased_total: poison messages not stored because their user was
//     erased after their receive time (processed status "ignored")
//   - reco_feature_consumer_dlq_backlog{status=pending|replayed},
//     reco_feature_consumer_dlq_oldest_pending_ms (refreshed every 30 s)
//   - reco_watch_event_to_feature_latency_ms: now - watch ts_ms when the watch is visible in
//     Redis (histogram, ms; old events from backfills land in the top buckets)
//
// Replayed DLQ entries and dedup records older than --consumer.dedup-retention are deleted
// every 30 s in bounded batches, as are, by one consumer at a time, items and users inactive
// for --consumer.item-retention and --consumer.user-retention. At start the consumer warns
// when one of its topics may keep a message longer (retention.ms + segment.ms, or
// retention.ms -1): a group that starts over from the oldest offset would apply such a
// message twice.
//
// recsys additions: recsys_consumer_accepted_to_visible_seconds (API acceptance,
// server_received_ts_ms, to visible in Redis), recsys_consumer_apply_seconds (PostgreSQL
// transaction), recsys_consumer_redis_write_seconds, recsys_consumer_batch_size,
// recsys_consumer_batch_retries_total, recsys_consumer_redis_write_failures_total,
// recsys_consumer_redis_repopulations_total, recsys_consumer_redis_journal_healed_total,
// recsys_consumer_redis_resent_total{kind} (users' hashes and neighbour lists a write found
// behind the version before its changes and sent whole: a write lost, or writes crossing),
// recsys_consumer_dedup_purged_total, recsys_consumer_items_trimmed_total,
// recsys_consumer_users_trimmed_total, recsys_consumer_offset_commits_total (Kafka offset
// commits, spaced by --consumer.commit-interval), recsys_consumer_apply_phase_seconds{phase} (lock,
// compute, write, merge, items: where a transaction spends its time; see featurestore.Hooks),
// recsys_consumer_fetch_delay_seconds (Kafka message time, i.e. the relay's produce, to the
// start of its apply: the relay's produce, the broker, the fetch and the wait behind the
// batch in flight), recsys_consumer_queue_delay_seconds (the reader handing the message over
// to the start of its apply: the consumer's own wait, mostly behind the batch in flight),
// recsys_consumer_user_writes_total{kind} (users written: overlay, the impression counters'
// overlay alone; fold, the counters rewritten; documents, a user with a watch; at a feed's
// steady state with the overlay on, folds were 11 % of the impression-only writes in
// BenchmarkRecoHTTP at the counter cap).
//
// # Readiness
//
// Ready once the reader has joined the consumer group and the Redis copy is complete
// (P+"ready"); unready while a batch has failed --consumer.unready-after-failures times in a
// row (it keeps retrying) or while the copy is being repopulated.
package consumer

import (
	"recsys/pkg/infra"
	"recsys/pkg/module"
)

func init() {
	newCfg, build := module.Typed(NewConfig, New)
	module.Register(module.Info{
		Name:      "consumer",
		Summary:   "applies Kafka events to the feature store (PostgreSQL durable, Redis serving), exactly once",
		Role:      true,
		Before:    []string{"ingest", "reco", "relay"}, // stop after the producers and the relay feeding it
		Needs:     infra.Postgres | infra.Redis | infra.Kafka,
		NewConfig: newCfg,
		New:       build,
	})
}

// New wires the role; it starts nothing.
func New(cfg *Config, d infra.Deps) (module.Module, error) {
	return newConsumer(cfg, d), nil
}
