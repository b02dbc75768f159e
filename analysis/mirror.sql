-- title: Mirror differences
-- description: For chargers mirrored to a secondary CSMS (proxy --mirror, or [[mirror]]
--   in the config), each CALL the charger sent that the primary and the secondary
--   answered differently: another message type (CALLRESULT, CALLERROR, or no answer),
--   another error code, or another payload once the fields that differ between any two
--   CSMSs are left out (currentTime, transactionId, idTagInfo.expiryDate,
--   idTokenInfo.cacheExpiryDateTime). One row per differing exchange, oldest first.
-- param identity: only this charger (default: every charger)
WITH pairs AS (
    SELECT connection_id AS mirror_id, mirror_of AS primary_id, identity
    FROM connections
    WHERE mirror_of IS NOT NULL AND ($identity IS NULL OR identity = $identity)
),
calls AS (
    -- The charger's own CALLs on its primary connection: what both CSMSs received.
    SELECT p.mirror_id, p.primary_id, p.identity, f.ts, f.action, f.message_id
    FROM pairs AS p JOIN frames AS f ON f.connection_id = p.primary_id
    WHERE f.direction = 'to_csms' AND f.message_type = 2 AND NOT coalesce(f.injected, false)
),
answers AS (
    SELECT connection_id, message_id, message_type, error_code,
           json_merge_patch(
               coalesce(payload, '{}'),
               '{"currentTime": null, "transactionId": null,
                 "idTagInfo": {"expiryDate": null},
                 "idTokenInfo": {"cacheExpiryDateTime": null}}'
           ) AS payload
    FROM frames
    WHERE direction = 'to_charger' AND message_type IN (3, 4)
      AND connection_id IN (SELECT primary_id FROM pairs UNION ALL SELECT mirror_id FROM pairs)
)
SELECT
    c.identity,
    c.ts AS sent_at,
    c.action,
    c.message_id,
    CASE p.message_type WHEN 3 THEN 'CALLRESULT' WHEN 4 THEN 'CALLERROR' ELSE 'no answer' END
        AS primary_answer,
    CASE s.message_type WHEN 3 THEN 'CALLRESULT' WHEN 4 THEN 'CALLERROR' ELSE 'no answer' END
        AS secondary_answer,
    p.error_code AS primary_error_code,
    s.error_code AS secondary_error_code,
    p.payload AS primary_payload,
    s.payload AS secondary_payload
FROM calls AS c
LEFT JOIN answers AS p ON p.connection_id = c.primary_id AND p.message_id = c.message_id
LEFT JOIN answers AS s ON s.connection_id = c.mirror_id AND s.message_id = c.message_id
WHERE p.message_type IS DISTINCT FROM s.message_type
   OR p.error_code IS DISTINCT FROM s.error_code
   OR p.payload::VARCHAR IS DISTINCT FROM s.payload::VARCHAR
ORDER BY c.ts, c.identity
