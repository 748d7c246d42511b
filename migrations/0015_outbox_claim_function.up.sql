-- outbox_claim: the relay's claim in one round trip instead of two.
--
-- The claim has two steps that must not share a snapshot (pkg/outbox/outbox.go, "Per-key
-- order"): step 1 locks candidate rows FOR UPDATE SKIP LOCKED; step 2 checks, in a snapshot
-- taken after those locks, that each unit's run is its whole unpublished prefix and that
-- nothing of the unit is in flight, then leases the rows it keeps. The relay used to send
-- them as two statements of one transaction, so every claim waited for two round trips.
-- A VOLATILE PL/pgSQL function takes a new snapshot for each statement under READ
-- COMMITTED, so running both statements here keeps the guarantee and costs one round trip
-- (at low volume most of a claim's time, and each round trip is exposed to the scheduling
-- delays of a busy machine).
--
-- Result: the leased rows (all with the same fencing token), each also carrying the window
-- statistics (window_rows, window_end: the size and end of the scanned window of pending
-- rows, computed only when the claim is not full) and claim_full (the claim stopped at
-- p_limit rows or p_max_events events). When no row is leased, one row with id 0 carries
-- the statistics alone (identity ids start at 1).
--
-- Creating a function takes no lock on event_outbox; the relay of the previous release keeps
-- its two-statement claim and runs side by side with this one (the guarantee holds across
-- both, as it does between any claimers).
CREATE FUNCTION outbox_claim(p_after bigint, p_window integer, p_limit integer, p_max_events bigint,
    p_owner text, p_lease_ms bigint)
RETURNS TABLE (id bigint, event_id text, event_type text, topic text, msg_key text, payload bytea,
    schema_version smallint, correlation_id text, payload_format smallint, event_count integer,
    attempts integer, max_attempts integer, created_at timestamptz, age_us bigint, lease_token bigint,
    window_rows bigint, window_end bigint, claim_full boolean)
LANGUAGE plpgsql VOLATILE
-- The statements are index probes per row or unit whose estimated cost grows with the batch
-- size; past jit_above_cost PostgreSQL would JIT-compile them, which costs tens of
-- milliseconds and saves nothing here.
SET jit = off
AS $fn$
#variable_conflict use_column
DECLARE
    l_ids bigint[];
    l_keys text[];
    l_topics text[];
    l_events bigint;
    w_n bigint := 0;
    w_end bigint := 0;
    is_full boolean;
    r_keys text[];
    r_topics text[];
    r_first bigint[];
    r_last bigint[];
    r_n bigint[];
    x_ids bigint[];
    x_run bigint[];
BEGIN
    -- Step 1: from a window of pending rows, up to p_limit due rows (and p_max_events
    -- events) that are their unit's head or whose head is itself pending and due, locked.
    SELECT array_agg(s.id ORDER BY s.id), array_agg(s.msg_key ORDER BY s.id),
        array_agg(s.topic ORDER BY s.id), coalesce(sum(s.event_count), 0)
    INTO l_ids, l_keys, l_topics, l_events
    FROM (
        WITH cand AS (
            SELECT w.id, w.event_count
            FROM (
                SELECT e.id, e.msg_key, e.topic, e.next_attempt_at, e.event_count
                FROM event_outbox e
                WHERE e.status = 'pending' AND e.id > p_after
                ORDER BY e.id
                LIMIT p_window
            ) w
            CROSS JOIN LATERAL (
                SELECT h.id, h.status, h.next_attempt_at
                FROM event_outbox h
                WHERE h.msg_key = w.msg_key AND h.topic = w.topic AND h.status IN ('pending', 'publishing')
                ORDER BY h.id
                LIMIT 1
            ) head
            WHERE w.next_attempt_at <= now()
              AND (head.id = w.id OR (head.status = 'pending' AND head.next_attempt_at <= now()))
            ORDER BY w.id
            LIMIT p_limit
        ), ok AS (
            -- Candidates in id order while the events before them are below p_max_events,
            -- so a claim always gets its first row however many events that row carries.
            SELECT c.id FROM (SELECT cand.id, sum(cand.event_count) OVER (ORDER BY cand.id) - cand.event_count AS before FROM cand) c
            WHERE c.before < p_max_events
        )
        SELECT o.id, o.msg_key, o.topic, o.event_count
        FROM event_outbox o
        WHERE o.id = ANY(ARRAY(SELECT ok.id FROM ok)) AND o.status = 'pending' AND o.next_attempt_at <= now()
        ORDER BY o.id
        FOR UPDATE OF o SKIP LOCKED
    ) s;

    is_full := coalesce(cardinality(l_ids), 0) >= p_limit OR l_events >= p_max_events;
    IF NOT is_full THEN
        -- The window's size and end, for the relay's scan cursor; before step 2, so the rows
        -- it leases still count in the window.
        SELECT count(*), coalesce(max(w.id), 0) INTO w_n, w_end
        FROM (SELECT e.id FROM event_outbox e WHERE e.status = 'pending' AND e.id > p_after ORDER BY e.id LIMIT p_window) w;
    END IF;

    IF l_ids IS NOT NULL THEN
        -- The locked rows as per-unit runs (numbered in order of their first id), and the run
        -- of each row.
        SELECT array_agg(g.k ORDER BY g.f), array_agg(g.t ORDER BY g.f), array_agg(g.f ORDER BY g.f),
            array_agg(g.l ORDER BY g.f), array_agg(g.n ORDER BY g.f)
        INTO r_keys, r_topics, r_first, r_last, r_n
        FROM (SELECT u.k, u.t, min(u.i) AS f, max(u.i) AS l, count(*) AS n
              FROM unnest(l_ids, l_keys, l_topics) AS u(i, k, t) GROUP BY u.k, u.t) g;
        SELECT array_agg(u.i ORDER BY u.i), array_agg(r.i ORDER BY u.i) INTO x_ids, x_run
        FROM unnest(l_ids, l_keys, l_topics) AS u(i, k, t)
        JOIN unnest(r_keys, r_topics) WITH ORDINALITY AS r(k, t, i) ON r.k = u.k AND r.t = u.t;

        -- Step 2, in a new snapshot: per run, the whole run when it is its unit's entire
        -- unpublished prefix up to its last id and nothing of the unit is in flight, or only
        -- its first row (the unit's head) when the run's tail is interrupted; the kept rows
        -- are leased under one token drawn in an InitPlan, evaluated once for the statement.
        RETURN QUERY
        WITH ok AS (
            SELECT u.i, u.f, c.upto = u.n AS whole
            FROM unnest(r_keys, r_topics, r_first, r_last, r_n) WITH ORDINALITY AS u(k, t, f, l, n, i)
            CROSS JOIN LATERAL (
                SELECT count(*) FILTER (WHERE e.id < u.f) AS below, count(*) AS upto,
                    -- In the select list it stays one index probe per unit: as a NOT EXISTS in
                    -- WHERE the planner may turn it into an anti-join that compares every unit
                    -- with every row in flight.
                    EXISTS (SELECT 1 FROM event_outbox p WHERE p.msg_key = u.k AND p.topic = u.t AND p.status = 'publishing') AS busy
                FROM event_outbox e
                WHERE e.msg_key = u.k AND e.topic = u.t AND e.status IN ('pending', 'publishing') AND e.id <= u.l
            ) c
            WHERE c.below = 0 AND NOT c.busy
        ), leased AS (
            UPDATE event_outbox o
            SET status = 'publishing', attempts = o.attempts + 1, lease_owner = p_owner,
                lease_token = (SELECT nextval('event_outbox_lease_token_seq')),
                lease_expires_at = now() + p_lease_ms * interval '1 millisecond'
            WHERE o.id = ANY(ARRAY(
                SELECT x.id FROM unnest(x_ids, x_run) AS x(id, run) JOIN ok ON ok.i = x.run
                WHERE ok.whole OR x.id = ok.f
            ))
            RETURNING o.id, o.event_id, o.event_type, o.topic, o.msg_key, o.payload, o.schema_version,
                o.correlation_id, o.payload_format, o.event_count, o.attempts, o.max_attempts, o.created_at,
                greatest((extract(epoch FROM now() - o.created_at) * 1000000)::bigint, 0), o.lease_token
        )
        SELECT leased.*, w_n, w_end, is_full FROM leased ORDER BY 1;
        IF FOUND THEN
            RETURN;
        END IF;
    END IF;
    RETURN QUERY SELECT 0::bigint, ''::text, ''::text, ''::text, ''::text, ''::bytea, 0::smallint, NULL::text,
        0::smallint, 0, 0, 0, now(), 0::bigint, 0::bigint, w_n, w_end, is_full;
END
$fn$;
