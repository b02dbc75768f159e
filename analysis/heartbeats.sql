-- title: Heartbeat intervals
-- description: Per charger: Heartbeat CALLs, and statistics of the time between two
--   consecutive heartbeats on the same connection (a reconnect starts afresh), in
--   seconds, next to the interval the CSMS asked for in its latest BootNotification
--   answer (expected_s). Chargers that booted but never sent a heartbeat are listed
--   with 0 heartbeats.
-- param identity: only this charger (default: every charger)
-- param legs = charger: whose connections: charger (its own), mirror (ocproxy's legs to a secondary CSMS) or all
WITH conn AS (
    -- n: a number per connection, a cheaper sort key than its id for the window below.
    SELECT connection_id, identity, row_number() OVER () AS n
    FROM connections
    WHERE ($identity IS NULL OR identity = $identity)
        AND ($legs = 'all' OR (mirror_of IS NULL) = ($legs = 'charger'))
),
beats AS (
    SELECT
        c.identity,
        f.ts,
        epoch(f.ts - lag(f.ts) OVER (PARTITION BY c.n ORDER BY f.seq)) AS interval_s
    FROM frames AS f
    JOIN conn AS c USING (connection_id)
    WHERE f.action = 'Heartbeat' AND f.message_type = 2 AND NOT coalesce(f.injected, false)
),
stats AS (
    SELECT
        identity,
        count(*) AS heartbeats,
        count(interval_s) AS intervals,
        min(interval_s) AS min_s,
        quantile_cont(interval_s, [0.5, 0.95]) AS q,
        avg(interval_s) AS mean_s,
        max(interval_s) AS max_s,
        min(ts) AS first_at,
        max(ts) AS last_at
    FROM beats
    GROUP BY identity
),
expected AS (
    -- The BootNotification answers' interval, parsed when they were recorded (as JSON,
    -- to check its type).
    SELECT
        c.identity,
        arg_max(TRY_CAST(f.interval ->> '$' AS DOUBLE), f.ts) AS expected_s,
        count(*) FILTER (
            WHERE coalesce(json_type(f.interval), 'missing') NOT IN ('BIGINT', 'UBIGINT')
        ) AS bad_intervals
    FROM frame_fields AS f
    JOIN conn AS c USING (connection_id)
    WHERE f.action = 'BootNotification' AND f.message_type = 3
    GROUP BY c.identity
)
SELECT
    identity,
    coalesce(s.heartbeats, 0) AS heartbeats,
    coalesce(s.intervals, 0) AS intervals,
    round(s.min_s, 3) AS min_s,
    round(s.q[1], 3) AS p50_s,
    round(s.mean_s, 3) AS mean_s,
    round(s.q[2], 3) AS p95_s,
    round(s.max_s, 3) AS max_s,
    e.expected_s,
    s.first_at,
    s.last_at,
    CASE
        WHEN coalesce(e.bad_intervals, 0) > 0
            THEN ['BootNotification answer: interval missing or not an integer']
        ELSE []
    END AS issues
FROM stats AS s
FULL JOIN expected AS e USING (identity)
ORDER BY identity
