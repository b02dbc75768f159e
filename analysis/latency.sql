-- title: Response latency
-- description: Per action and direction of the CALL (to_csms: the charger asked,
--   to_charger: the CSMS asked): answered CALLs, how many of the answers were
--   CALLERRORs, and the latency percentiles p50 / p95 / p99 and maximum in
--   milliseconds, as the proxy saw them (CALL received to answer received).
-- param identity: only this charger (default: every charger)
WITH answers AS (
    -- latency_ms was computed at recording time; a duplicate answer is not a new CALL.
    SELECT
        action,
        CASE direction WHEN 'to_charger' THEN 'to_csms' ELSE 'to_charger' END AS direction,
        message_type,
        latency_ms
    FROM frames
    WHERE message_type IN (3, 4)
        AND latency_ms IS NOT NULL
        -- The proxy's own injected CALLs are not traffic between charger and CSMS.
        AND NOT coalesce(injected, false)
        AND pairing IN ('matched', 'late')
        AND (
            $identity IS NULL
            OR connection_id IN (SELECT connection_id FROM connections WHERE identity = $identity)
        )
),
stats AS (
    SELECT
        action,
        direction,
        count(*) AS calls,
        count(*) FILTER (WHERE message_type = 4) AS errors,
        quantile_cont(latency_ms, [0.5, 0.95, 0.99]) AS q,
        max(latency_ms) AS max_ms
    FROM answers
    GROUP BY action, direction
)
SELECT
    action,
    direction,
    calls,
    errors,
    round(q[1], 3) AS p50_ms,
    round(q[2], 3) AS p95_ms,
    round(q[3], 3) AS p99_ms,
    round(max_ms, 3) AS max_ms
FROM stats
ORDER BY action, direction
