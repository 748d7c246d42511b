package postgres

// ByKeyPlans is a select list for the first statement of a hot transaction whose every
// statement reaches its rows by key (ids or primary keys in an array): it plans them, for this
// transaction only, as index probes cached once per connection. Two failures it prevents,
// both measured (docs/scaling.md, "Plans of the hot transactions"):
//
//   - planning on every call: PostgreSQL may judge a statement's custom plans cheaper than its
//     generic plan and then plans it anew each time (the relay's claim: 0.6 ms of backend CPU
//     per claim, more than running it), so plan_cache_mode is force_generic_plan;
//   - a plan cached on an empty table: a connection keeps the generic plan it made while a
//     table was empty or small (a fresh deployment, a rebuilt table) until an ANALYZE
//     invalidates it, and scans the whole table with it meanwhile (the consumer read
//     feature_users whole 1,900 times in 15 s), so sequential scans are off;
//
// and JIT is off with them, because a disabled sequential scan (a one-row table with no
// index) costs 10^10 planner units, far past jit_above_cost: compiling took 22 ms per
// statement.
const ByKeyPlans = `set_config('enable_seqscan', 'off', true), set_config('jit', 'off', true),
    set_config('plan_cache_mode', 'force_generic_plan', true)`
