"""The SQL behind ``ocproxy report --mirror`` (:mod:`ocproxy.analytics.report_mirror`).

``PAIRS`` and ``EXCHANGES`` fill two temporary tables of the report's in-memory DuckDB
connection: the mirror legs asked about (``$identity``) with the charger connection
each mirrors, and one row per CALL the charger sent on such a connection with the
primary's and the secondary's answers. The other statements read those two tables
(and ``frames`` for the secondary's own CALLs) and return small results.
"""

from __future__ import annotations

# The mirror legs asked about and the charger connection each mirrors.
PAIRS = """CREATE OR REPLACE TEMP TABLE m_pairs AS
SELECT connection_id AS mirror_id, mirror_of AS primary_id, identity, handshake_status,
    -- The secondary's URL as configured: without the charger's path the proxy appended.
    CASE WHEN path IS NOT NULL AND ends_with(upstream_url, path)
        THEN upstream_url[:length(upstream_url) - length(path)] ELSE upstream_url END
        AS upstream_url,
    opened_at, close_reason
FROM connections WHERE mirror_of IS NOT NULL AND ($identity IS NULL OR identity = $identity)"""

# One row per CALL the charger sent on a mirrored connection, with both answers.
EXCHANGES = """CREATE OR REPLACE TEMP TABLE m_exchanges AS
WITH calls AS (
    SELECT p.mirror_id, p.primary_id, p.identity, p.handshake_status = 101 AS leg_open,
        f.action, f.message_id, f.ts,
        -- The charger left before an answer was due: its mirror leg went with it.
        coalesce(pc.closed_at < f.ts + to_seconds($window), false) AS cut_off
    FROM m_pairs AS p JOIN frames AS f ON f.connection_id = p.primary_id
    LEFT JOIN connections AS pc ON pc.connection_id = p.primary_id
    WHERE f.direction = 'to_csms' AND f.message_type = 2 AND NOT coalesce(f.injected, false)
), sent AS (
    SELECT DISTINCT connection_id, message_id FROM frames
    WHERE connection_id IN (SELECT mirror_id FROM m_pairs)
        AND direction = 'to_csms' AND message_type = 2
), answers AS (
    SELECT connection_id, message_id, message_type, error_code, payload::VARCHAR AS payload,
        latency_ms
    FROM frames
    WHERE connection_id IN (SELECT primary_id FROM m_pairs UNION ALL SELECT mirror_id FROM m_pairs)
        AND direction = 'to_charger' AND message_type IN (3, 4) AND pairing IN ('matched', 'late')
)
SELECT c.identity, c.action, c.ts, c.leg_open, s.message_id IS NOT NULL AS sent, c.cut_off,
    p.message_type AS p_type, p.error_code AS p_code, p.payload AS p_payload, p.latency_ms AS p_ms,
    q.message_type AS s_type, q.error_code AS s_code, q.payload AS s_payload, q.latency_ms AS s_ms
FROM calls AS c
LEFT JOIN sent AS s ON s.connection_id = c.mirror_id AND s.message_id = c.message_id
LEFT JOIN answers AS p ON p.connection_id = c.primary_id AND p.message_id = c.message_id
LEFT JOIN answers AS q ON q.connection_id = c.mirror_id AND q.message_id = c.message_id"""

OVERVIEW = """SELECT
    (SELECT count(DISTINCT identity) FROM m_pairs) AS chargers,
    (SELECT count(*) FROM m_pairs) AS legs,
    (SELECT count(*) FILTER (WHERE handshake_status IS DISTINCT FROM 101) FROM m_pairs) AS refused,
    (SELECT list(DISTINCT upstream_url ORDER BY upstream_url) FROM m_pairs) AS secondaries,
    (SELECT min(ts) FROM m_exchanges) AS first_at, (SELECT max(ts) FROM m_exchanges) AS last_at"""

# Exchanges grouped by what both CSMSs answered, with what the default rules ignore blanked.
GROUPS = """WITH e AS (
    SELECT *,
        CASE WHEN $blank THEN regexp_replace(regexp_replace(p_payload, $times, '"<time>"', 'g'),
            $keys, '"\\1":"<id>"', 'g') ELSE p_payload END AS p_norm,
        CASE WHEN $blank THEN regexp_replace(regexp_replace(s_payload, $times, '"<time>"', 'g'),
            $keys, '"\\1":"<id>"', 'g') ELSE s_payload END AS s_norm,
        p_payload IS DISTINCT FROM s_payload AS raw_diff
    FROM m_exchanges
)
SELECT action, leg_open, sent, cut_off, p_type, p_code, s_type, s_code, count(*) AS n,
    count(*) FILTER (WHERE raw_diff) AS n_raw_diff,
    arg_min(p_payload, struct_pack(d := NOT raw_diff, i := identity, t := ts)) AS p_payload,
    arg_min(s_payload, struct_pack(d := NOT raw_diff, i := identity, t := ts)) AS s_payload,
    arg_min(identity, struct_pack(d := NOT raw_diff, i := identity, t := ts)) AS example_identity
FROM e GROUP BY action, leg_open, sent, cut_off, p_type, p_code, s_type, s_code, p_norm, s_norm"""

# The secondary's own CALLs, one row each: refused by the proxy (an injected CALLERROR
# on its leg) or relayed to the charger, whose answer went back to the secondary.
OWN_ROWS = """SELECT p.identity, o.action,
    coalesce(b.injected, false) AS proxy_refused, b.message_type AS answer_type,
    json_extract_string(b.payload, '$.status') AS status,
    coalesce(b.injected, false) OR b.message_type = 4
        OR (b.message_type = 3 AND json_extract_string(b.payload, '$.status')
            IS DISTINCT FROM 'Accepted') AS refused,
    CASE WHEN b.injected THEN 'refused by the proxy' WHEN b.message_type = 4
        THEN 'CALLERROR ' || b.error_code ELSE json_extract_string(b.payload, '$.status') END
        AS said
FROM m_pairs AS p
JOIN frames AS o ON o.connection_id = p.mirror_id AND o.direction = 'to_charger'
    AND o.message_type = 2
LEFT JOIN (
    SELECT connection_id, message_id, message_type, error_code, injected, payload FROM frames
    WHERE connection_id IN (SELECT mirror_id FROM m_pairs) AND direction = 'to_csms'
        AND message_type IN (3, 4)
) AS b ON b.connection_id = o.connection_id AND b.message_id = o.message_id"""

OWN_CALLS = f"""SELECT action, count(*) AS calls, count(*) FILTER (WHERE proxy_refused) AS refused,
    count(*) FILTER (WHERE NOT proxy_refused AND NOT refused AND answer_type = 3) AS accepted,
    count(*) FILTER (WHERE NOT proxy_refused AND refused) AS rejected,
    count(*) FILTER (WHERE answer_type IS NULL) AS unanswered
FROM ({OWN_ROWS}) GROUP BY action ORDER BY calls DESC, action"""

TOKEN_STATUS = """CASE WHEN action IN ('Authorize', 'StartTransaction', 'StopTransaction',
    'TransactionEvent') AND s_type = 3 THEN coalesce(json_extract_string(s_payload,
    '$.idTagInfo.status'), json_extract_string(s_payload, '$.idTokenInfo.status')) END"""

# Per charger: boots the secondary did not accept, tokens it did not accept, and its own
# RemoteStart/RequestStart refused (by the proxy, or by the charger).
REJECTED = f"""WITH boots AS (
    SELECT identity, count(*) AS boots,
        count(*) FILTER (WHERE s_type IS DISTINCT FROM 3
            OR json_extract_string(s_payload, '$.status') IS DISTINCT FROM 'Accepted')
            AS boots_rejected,
        list(DISTINCT 'boot ' || CASE WHEN s_type = 3 THEN json_extract_string(s_payload,
            '$.status') WHEN s_type = 4 THEN 'CALLERROR ' || s_code ELSE 'not answered' END)
            FILTER (WHERE s_type IS DISTINCT FROM 3
                OR json_extract_string(s_payload, '$.status') IS DISTINCT FROM 'Accepted')
            AS boot_said
    FROM m_exchanges WHERE action = 'BootNotification' AND sent GROUP BY identity
), tokens AS (
    SELECT identity, count(token) AS tokens,
        count(*) FILTER (WHERE token <> 'Accepted') AS tokens_rejected,
        list(DISTINCT 'token ' || token) FILTER (WHERE token <> 'Accepted') AS token_said
    FROM (SELECT identity, {TOKEN_STATUS} AS token FROM m_exchanges) GROUP BY identity
), starts AS (
    SELECT identity, count(*) AS remote_starts, count(*) FILTER (WHERE refused) AS refused,
        list(DISTINCT 'remote start ' || said) FILTER (WHERE refused) AS start_said
    FROM ({OWN_ROWS}) WHERE action IN ('RemoteStartTransaction', 'RequestStartTransaction')
    GROUP BY identity
)
SELECT identity, coalesce(boots, 0) AS boots, coalesce(boots_rejected, 0) AS boots_rejected,
    coalesce(tokens, 0) AS tokens, coalesce(tokens_rejected, 0) AS tokens_rejected,
    coalesce(remote_starts, 0) AS remote_starts, coalesce(refused, 0) AS remote_starts_refused,
    list_sort(list_concat(coalesce(boot_said, []), coalesce(token_said, []),
        coalesce(start_said, []))) AS statuses
FROM boots FULL JOIN tokens USING (identity) FULL JOIN starts USING (identity)
WHERE coalesce(boots_rejected, 0) + coalesce(tokens_rejected, 0) + coalesce(refused, 0) > 0
ORDER BY boots_rejected + tokens_rejected + remote_starts_refused DESC, identity LIMIT $top"""

LATENCY = """SELECT action,
    count(p_ms) AS primary_answers, round(quantile_cont(p_ms, 0.5), 3) AS primary_p50_ms,
    round(quantile_cont(p_ms, 0.99), 3) AS primary_p99_ms,
    count(s_ms) AS secondary_answers, round(quantile_cont(s_ms, 0.5), 3) AS secondary_p50_ms,
    round(quantile_cont(s_ms, 0.99), 3) AS secondary_p99_ms
FROM m_exchanges GROUP BY action ORDER BY count(*) DESC, action LIMIT $top"""

# Chargers the secondary never accepted: every leg refused, or none of the BootNotifications
# the charger sent on a mirrored connection answered Accepted by it.
NEVER_ACCEPTED = """WITH legs AS (
    SELECT identity, count(*) AS legs, count(*) FILTER (WHERE handshake_status = 101) AS opened,
        arg_max(coalesce(close_reason, 'HTTP ' || handshake_status), opened_at) AS last_close
    FROM m_pairs GROUP BY identity
), boots AS (
    SELECT identity, count(*) AS boots, count(*) FILTER (WHERE sent) AS sent,
        count(*) FILTER (WHERE s_type = 3
            AND json_extract_string(s_payload, '$.status') = 'Accepted') AS accepted,
        arg_max(CASE WHEN s_type = 3 THEN 'answered ' || json_extract_string(s_payload,
            '$.status') WHEN s_type = 4 THEN 'answered CALLERROR ' || s_code
            ELSE 'not answered' END, ts) FILTER (WHERE sent) AS last_answer
    FROM m_exchanges WHERE action = 'BootNotification' GROUP BY identity
)
SELECT identity, legs,
    CASE WHEN opened = 0 THEN 'handshake: ' || last_close
        WHEN sent > 0 THEN 'BootNotification ' || last_answer || ' (' || sent
            || ' sent, none Accepted)'
        ELSE 'no BootNotification reached it; its leg closed: '
            || coalesce(nullif(last_close, ''), 'no reason given') END AS reason
FROM legs JOIN boots USING (identity)
WHERE opened = 0 OR accepted = 0
ORDER BY identity"""
