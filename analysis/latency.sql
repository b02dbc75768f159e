-- title: Response latency
-- description: Per action and direction of the CALL (to_csms: the charger asked,
--   to_charger: the CSMS asked): answered CALLs, how many of the answers were
--   CALLERRORs, and the latency percentiles p50 / p95 / p99 and maximum in
--   milliseconds, as the proxy saw them (CALL received to answer received), per source
--   of the connections ('proxy', 'mirror' for the legs to a secondary CSMS, ...).
-- param identity: only this charger (default: every charger)
-- param legs = charger: whose connections: charger (its own), mirror (ocproxy's legs to a secondary CSMS) or all
WITH conn AS (
    SELECT connection_id, source
    FROM connections
    WHERE ($identity IS NULL OR identity = $identity)
        AND ($legs = 'all' OR (mirror_of IS NULL) = ($legs = 'charger'))
),
answers AS (
    -- latency_ms was computed at recording time; a duplicate answer is not a new CALL.
    SELECT
        f.action,
        c.source,
        CASE f.direction WHEN 'to_charger' THEN 'to_csms' ELSE 'to_charger' END AS direction,
        f.message_type,
        f.latency_ms
    FROM frames AS f
    JOIN conn AS c USING (connection_id)
    WHERE f.message_type IN (3, 4)
        AND f.latency_ms IS NOT NULL
        -- The proxy's own injected CALLs are not traffic between charger and CSMS.
        AND NOT coalesce(f.injected, false)
        AND f.pairing IN ('matched', 'late')
),
stats AS (
    SELECT
        action,
        direction,
        source,
        count(*) AS calls,
        count(*) FILTER (WHERE message_type = 4) AS errors,
        quantile_cont(latency_ms, [0.5, 0.95, 0.99]) AS q,
        max(latency_ms) AS max_ms
    FROM answers
    GROUP BY action, direction, source
)
SELECT
    action,
    direction,
    calls,
    errors,
    round(q[1], 3) AS p50_ms,
    round(q[2], 3) AS p95_ms,
    round(q[3], 3) AS p99_ms,
    round(max_ms, 3) AS max_ms,
    source
FROM stats
ORDER BY action, direction, source
