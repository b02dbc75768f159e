-- title: Cut-over
-- description: For a staged move to another CSMS (routes changed by a reload, chargers
--   closed with `ocproxy disconnect --identity PATTERN --spread DURATION`), one row per
--   charger and move: a connection whose upstream differs from that of the charger's
--   connection before it. from_upstream and to_upstream are the CSMS URLs without the
--   charger's path; left_at, left_by and left_reason say how the last connection to the
--   old one ended; moved_at is when the first connection to the new one opened (gap_s
--   after the old one closed) and handshake_status what the charger got; then the
--   first BootNotification on the new network: boot_sent_at, boot_answer (CALLRESULT,
--   CALLERROR or NULL when unanswered), boot_status (Accepted, Pending, Rejected),
--   boot_interval_s, boot_answered_at; connections_on_new counts the charger's
--   connections to the new CSMS since. A charger that has not moved (with `to`: not to
--   that CSMS) is one row too, with moved_at NULL; current_upstream is the CSMS of
--   each charger's latest connection. The chargers' own connections only: the legs to
--   a secondary CSMS (--mirror) are not moves.
-- param identity: only this charger (default: every charger)
-- param to: only moves to this CSMS: the start of its URL, e.g. wss://new-csms.example.org (default: every move)
WITH conns AS (
    SELECT
        identity,
        connection_id,
        opened_at,
        closed_at,
        close_reason,
        closed_by,
        handshake_status,
        -- The CSMS as configured: the recorded URL without the charger's path.
        CASE WHEN path IS NOT NULL AND ends_with(upstream_url, path)
            THEN upstream_url[:length(upstream_url) - length(path)]
            ELSE upstream_url END AS upstream
    FROM connections
    WHERE mirror_of IS NULL
        AND upstream_url IS NOT NULL
        AND ($identity IS NULL OR identity = $identity)
),
ordered AS (
    SELECT
        *,
        lag(upstream) OVER w AS from_upstream,
        lag(closed_at) OVER w AS left_at,
        lag(closed_by) OVER w AS left_by,
        lag(close_reason) OVER w AS left_reason,
        last_value(upstream) OVER (
            PARTITION BY identity ORDER BY opened_at, connection_id
            ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING
        ) AS current_upstream
    FROM conns
    WINDOW w AS (PARTITION BY identity ORDER BY opened_at, connection_id)
),
moves AS (
    SELECT *
    FROM ordered
    WHERE from_upstream IS NOT NULL
        AND upstream IS DISTINCT FROM from_upstream
        AND ($to IS NULL OR starts_with(upstream, $to))
),
boots AS (
    -- Derived columns only: the payload of BootNotification answers alone is parsed.
    SELECT c.identity, c.upstream, c.opened_at, f.connection_id, f.message_id, f.ts AS sent_at
    FROM conns AS c
    JOIN frames AS f USING (connection_id)
    WHERE f.action = 'BootNotification' AND f.message_type = 2 AND f.direction = 'to_csms'
),
answers AS (
    SELECT
        connection_id,
        message_id,
        ts AS answered_at,
        CASE message_type WHEN 3 THEN 'CALLRESULT' ELSE 'CALLERROR' END AS answer,
        CASE WHEN message_type = 3 THEN json_extract_string(payload, '$.status') END AS status,
        TRY_CAST(json_extract_string(payload, '$.interval') AS INTEGER) AS interval_s
    FROM frames
    WHERE action = 'BootNotification' AND message_type IN (3, 4) AND direction = 'to_charger'
        AND connection_id IN (SELECT connection_id FROM conns)
),
first_boot AS (
    SELECT
        m.connection_id AS move_id,
        arg_min(
            struct_pack(
                sent_at := b.sent_at, answer := a.answer, status := a.status,
                interval_s := a.interval_s, answered_at := a.answered_at
            ),
            b.sent_at
        ) AS boot
    FROM moves AS m
    JOIN boots AS b ON b.identity = m.identity AND b.upstream = m.upstream
        AND b.opened_at >= m.opened_at
    LEFT JOIN answers AS a ON a.connection_id = b.connection_id AND a.message_id = b.message_id
    GROUP BY m.connection_id
),
staying AS (
    SELECT count(*) AS connections_on_new, m.connection_id AS move_id
    FROM moves AS m
    JOIN conns AS c ON c.identity = m.identity AND c.upstream = m.upstream
        AND c.opened_at >= m.opened_at
    GROUP BY m.connection_id
)
SELECT
    m.identity,
    m.from_upstream,
    m.upstream AS to_upstream,
    m.left_at,
    m.left_by,
    m.left_reason,
    m.opened_at AS moved_at,
    round(epoch(m.opened_at) - epoch(m.left_at), 3) AS gap_s,
    m.handshake_status,
    fb.boot.sent_at AS boot_sent_at,
    fb.boot.answer AS boot_answer,
    fb.boot.status AS boot_status,
    fb.boot.interval_s AS boot_interval_s,
    fb.boot.answered_at AS boot_answered_at,
    s.connections_on_new,
    m.current_upstream
FROM moves AS m
LEFT JOIN first_boot AS fb ON fb.move_id = m.connection_id
LEFT JOIN staying AS s ON s.move_id = m.connection_id
UNION ALL
-- The chargers still to move (or that never did).
SELECT DISTINCT ON (identity)
    identity, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    0, current_upstream
FROM ordered
WHERE identity NOT IN (SELECT identity FROM moves)
ORDER BY moved_at NULLS LAST, identity
