-- title: Errors and unanswered CALLs
-- description: CALLERRORs (and 2.1 CALLRESULTERRORs) counted by error code, action
--   and charger, and CALLs that never got an answer in the recording, by action and
--   charger. direction is that of the CALL (to_csms: the charger asked); source is the
--   connection's ('proxy', 'mirror', 'import', ...).
-- param identity: only this charger (default: every charger)
-- param legs = charger: whose connections: charger (its own), mirror (ocproxy's legs to a secondary CSMS) or all
WITH conn AS (
    SELECT connection_id, identity, source
    FROM connections
    WHERE ($identity IS NULL OR identity = $identity)
        AND ($legs = 'all' OR (mirror_of IS NULL) = ($legs = 'charger'))
),
short AS MATERIALIZED (
    -- Unanswered CALLs are rare, and the anti-join that finds them costs seconds over
    -- every frame: look only in the stretches of a connection (1,024 seqs each) with
    -- more CALLs than answers the recorder paired with one. Each CALL gets at most one
    -- "matched" answer, so a stretch whose every CALL was answered is never short.
    SELECT connection_id, block
    FROM (
        SELECT connection_id, seq >> 10 AS block, 1 AS calls
        FROM frames
        WHERE message_type = 2
        UNION ALL
        SELECT connection_id, request_seq >> 10, -1
        FROM frames
        WHERE message_type IN (3, 4) AND pairing = 'matched'
    )
    GROUP BY connection_id, block
    HAVING sum(calls) > 0
),
answered AS MATERIALIZED (
    SELECT connection_id, request_seq
    FROM frames
    SEMI JOIN short AS s ON s.connection_id = frames.connection_id AND s.block = request_seq >> 10
    WHERE message_type IN (3, 4) AND request_seq IS NOT NULL
),
own AS NOT MATERIALIZED (
    -- The proxy's own injected CALLs and their answers are not charger/CSMS traffic.
    SELECT f.*
    FROM frames AS f
    WHERE NOT coalesce(f.injected, false)
),
in_short AS MATERIALIZED (
    SELECT f.*
    FROM own AS f
    SEMI JOIN short AS s ON s.connection_id = f.connection_id AND s.block = f.seq >> 10
    WHERE f.message_type = 2
),
problems AS (
    SELECT
        CASE f.message_type WHEN 4 THEN 'callerror' ELSE 'callresulterror' END AS kind,
        c.identity,
        c.source,
        f.action,
        -- A CALLERROR travels against its CALL; a CALLRESULTERROR with it.
        CASE
            WHEN f.message_type = 5 THEN f.direction
            WHEN f.direction = 'to_charger' THEN 'to_csms'
            ELSE 'to_charger'
        END AS direction,
        f.error_code,
        f.error_description,
        f.ts
    FROM own AS f
    JOIN conn AS c USING (connection_id)
    WHERE f.message_type IN (4, 5)
    UNION ALL
    SELECT 'unanswered', c.identity, c.source, f.action, f.direction, NULL, NULL, f.ts
    FROM in_short AS f
    JOIN conn AS c USING (connection_id)
    ANTI JOIN answered AS a ON a.connection_id = f.connection_id AND a.request_seq = f.seq
)
SELECT
    kind,
    identity,
    action,
    direction,
    error_code,
    count(*) AS count,
    min(ts) AS first_at,
    max(ts) AS last_at,
    any_value(error_description) AS example_description,
    source
FROM problems
GROUP BY kind, identity, action, direction, error_code, source
ORDER BY kind, count DESC, identity, action, error_code
