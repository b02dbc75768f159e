-- title: Trace of one charger
-- description: Every frame of one charger, in order, readable: time, connection,
--   direction, message type, action, message id, latency of answers, error code,
--   parse status, whether ocproxy injected it (a CALL of its own, or the answer to
--   one: never forwarded) and payload. For following one conversation by eye.
-- param identity (required): the charger identity
-- param since: only frames at or after this time, e.g. 2026-01-31T12:00:00Z
-- param until: only frames before this time
SELECT
    f.ts,
    f.connection_id,
    f.seq,
    f.direction,
    CASE f.message_type
        WHEN 2 THEN 'CALL'
        WHEN 3 THEN 'CALLRESULT'
        WHEN 4 THEN 'CALLERROR'
        WHEN 5 THEN 'CALLRESULTERROR'
        WHEN 6 THEN 'SEND'
    END AS type,
    f.action,
    f.message_id,
    f.latency_ms,
    f.error_code,
    f.parse_status,
    coalesce(f.injected, false) AS injected,
    f.payload::VARCHAR AS payload
FROM frames AS f
JOIN connections AS c USING (connection_id)
WHERE c.identity = $identity
    AND ($since IS NULL OR f.ts >= CAST($since AS TIMESTAMPTZ))
    AND ($until IS NULL OR f.ts < CAST($until AS TIMESTAMPTZ))
ORDER BY f.ts, f.connection_id, f.seq
