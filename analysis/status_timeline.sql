-- title: Connector status timeline
-- description: Per charger and connector (1.6 connectorId, 0 = the charger itself;
--   2.0.1/2.1 evseId and connectorId), each status period from StatusNotification:
--   the status (and 1.6 error code), when it started (the notification's timestamp,
--   else when the proxy received it), when the next different status started, its
--   duration in seconds, and how many notifications reported it. The current status
--   has no end.
-- param identity: only this charger (default: every charger)
-- param legs = charger: whose connections: charger (its own), mirror (ocproxy's legs to a secondary CSMS) or all
WITH conn AS (
    SELECT connection_id, identity, ocpp_version
    FROM connections
    WHERE ($identity IS NULL OR identity = $identity)
        AND ($legs = 'all' OR (mirror_of IS NULL) = ($legs = 'charger'))
),
notes AS (
    -- Only StatusNotification CALLs are parsed. 1.6 says status, 2.x connectorStatus.
    SELECT
        c.identity,
        c.ocpp_version,
        f.ts,
        f.seq,
        TRY_CAST(f.payload ->> '$.evseId' AS INTEGER) AS evse_id,
        TRY_CAST(f.payload ->> '$.connectorId' AS INTEGER) AS connector_id,
        coalesce(f.payload ->> '$.status', f.payload ->> '$.connectorStatus') AS status,
        f.payload ->> '$.errorCode' AS error_code,
        TRY_CAST(f.payload ->> '$.timestamp' AS TIMESTAMPTZ) AS stamped_at,
        list_filter(
            [
                CASE WHEN coalesce(f.payload ->> '$.status', f.payload ->> '$.connectorStatus')
                    IS NULL THEN 'status missing' END,
                CASE WHEN coalesce(json_type(f.payload, '$.connectorId'), 'missing')
                    NOT IN ('BIGINT', 'UBIGINT') THEN 'connectorId missing or not an integer' END,
                CASE WHEN f.payload ->> '$.timestamp' IS NOT NULL
                    AND TRY_CAST(f.payload ->> '$.timestamp' AS TIMESTAMPTZ) IS NULL
                    THEN 'timestamp is not a date-time' END
            ],
            lambda x: x IS NOT NULL
        ) AS issues
    FROM frames AS f
    JOIN conn AS c USING (connection_id)
    WHERE f.action = 'StatusNotification' AND f.message_type = 2
),
ordered AS (
    SELECT
        *,
        coalesce(stamped_at, ts) AS began_at,
        -- A notification repeating the status in force does not start a new period.
        CASE
            WHEN lag(status) OVER w IS NOT DISTINCT FROM status
                AND lag(error_code) OVER w IS NOT DISTINCT FROM error_code
                AND row_number() OVER w > 1
                THEN 0
            ELSE 1
        END AS starts_period
    FROM notes
    WINDOW w AS (PARTITION BY identity, evse_id, connector_id ORDER BY coalesce(stamped_at, ts), ts, seq)
),
numbered AS (
    SELECT
        *,
        sum(starts_period) OVER (
            PARTITION BY identity, evse_id, connector_id
            ORDER BY began_at, ts, seq
            ROWS UNBOUNDED PRECEDING
        ) AS period
    FROM ordered
),
periods AS (
    SELECT
        identity,
        any_value(ocpp_version) AS ocpp_version,
        evse_id,
        connector_id,
        any_value(status) AS status,
        any_value(error_code) AS error_code,
        min(began_at) AS started_at,
        count(*) AS notifications,
        list_distinct(flatten(list(issues))) AS issues
    FROM numbered
    GROUP BY identity, evse_id, connector_id, period
)
SELECT
    identity,
    ocpp_version,
    evse_id,
    connector_id,
    status,
    error_code,
    started_at,
    lead(started_at) OVER w AS ended_at,
    round(epoch(lead(started_at) OVER w - started_at), 3) AS duration_s,
    notifications,
    issues
FROM periods
WINDOW w AS (PARTITION BY identity, evse_id, connector_id ORDER BY started_at)
ORDER BY identity, evse_id NULLS FIRST, connector_id, started_at
