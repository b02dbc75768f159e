-- title: Availability per charger and day
-- description: Per charger and UTC day: seconds connected (a connection from its
--   opening to its close, or to its last frame when the recording has no close),
--   connections opened and reconnects (connections after the charger's first), and
--   connector-seconds in each state while connected, summed over the charger's
--   connectors (1.6 connector 0, the charger as a whole, is left out): available,
--   occupied (1.6 Preparing, Charging, SuspendedEV, SuspendedEVSE, Finishing; 2.x
--   Occupied), charging (1.6 Charging; 2.x TransactionEvent chargingState
--   Charging), reserved, unavailable and faulted. A status holds from its
--   StatusNotification until the connector's next one; time offline is not counted.
-- param identity: only this charger (default: every charger)
-- param legs = charger: whose connections: charger (its own), mirror (ocproxy's legs to a secondary CSMS) or all
WITH conn AS (
    SELECT connection_id, identity, opened_at, closed_at
    FROM connections
    WHERE handshake_status = 101 AND ($identity IS NULL OR identity = $identity)
        AND ($legs = 'all' OR (mirror_of IS NULL) = ($legs = 'charger'))
),
last_frames AS (
    SELECT connection_id, max(ts) AS last_ts
    FROM frames
    GROUP BY connection_id
),
online AS (
    SELECT
        c.connection_id,
        c.identity,
        c.opened_at AS start_at,
        coalesce(c.closed_at, greatest(c.opened_at, l.last_ts)) AS end_at,
        row_number() OVER (PARTITION BY c.identity ORDER BY c.opened_at, c.connection_id) AS nth
    FROM conn AS c
    LEFT JOIN last_frames AS l USING (connection_id)
),
notes AS (
    -- StatusNotification fields, parsed when the frames were recorded (frame_fields).
    SELECT
        c.identity,
        f.ts,
        f.seq,
        TRY_CAST(f.evseId AS INTEGER) AS evse_id,
        TRY_CAST(f.connectorId ->> '$' AS INTEGER) AS connector_id,
        coalesce(f.status, f.connectorStatus) AS status,
        coalesce(TRY_CAST(f.timestamp AS TIMESTAMPTZ), f.ts) AS began_at
    FROM frame_fields AS f
    JOIN conn AS c USING (connection_id)
    WHERE f.action = 'StatusNotification' AND f.message_type = 2
),
status_spans AS (
    SELECT
        identity,
        CASE
            WHEN status = 'Available' THEN 'available'
            WHEN status IN ('Preparing', 'Charging', 'SuspendedEV', 'SuspendedEVSE',
                'Finishing', 'Occupied') THEN 'occupied'
            WHEN status = 'Reserved' THEN 'reserved'
            WHEN status = 'Unavailable' THEN 'unavailable'
            WHEN status = 'Faulted' THEN 'faulted'
        END AS state,
        status,
        began_at AS start_at,
        coalesce(
            lead(began_at) OVER (
                PARTITION BY identity, evse_id, connector_id ORDER BY began_at, ts, seq
            ),
            'infinity'::TIMESTAMPTZ
        ) AS end_at
    FROM notes
    WHERE NOT (evse_id IS NULL AND connector_id = 0)
),
tx_events AS (
    SELECT
        c.identity,
        f.ts,
        f.seq,
        f.transactionInfo.transactionId AS transaction_id,
        f.eventType AS event_type,
        f.transactionInfo.chargingState AS charging_state,
        coalesce(TRY_CAST(f.timestamp AS TIMESTAMPTZ), f.ts) AS event_at
    FROM frame_fields AS f
    JOIN conn AS c USING (connection_id)
    WHERE f.action = 'TransactionEvent' AND f.message_type = 2
),
charging_spans AS (
    -- 2.x: the charging state holds until the transaction's next event says otherwise
    -- (an event without chargingState keeps it); Ended ends it. Consecutive charging
    -- spans of a transaction abut: each run of them is one span (a million periodic
    -- events would otherwise each be clipped and split by day below).
    SELECT identity, 'charging' AS state, min(start_at) AS start_at, max(end_at) AS end_at
    FROM (
        SELECT
            *,
            sum(CASE WHEN charging THEN 0 ELSE 1 END) OVER (
                PARTITION BY identity, transaction_id ORDER BY start_at, ts, seq
                ROWS UNBOUNDED PRECEDING
            ) AS run
        FROM (
            SELECT
                identity,
                transaction_id,
                ts,
                seq,
                coalesce(last_value(charging_state IGNORE NULLS) OVER w = 'Charging', false)
                    AND event_type IS DISTINCT FROM 'Ended' AS charging,
                event_at AS start_at,
                coalesce(
                    lead(event_at) OVER (
                        PARTITION BY identity, transaction_id ORDER BY event_at, ts, seq
                    ),
                    'infinity'::TIMESTAMPTZ
                ) AS end_at
            FROM tx_events
            WHERE transaction_id IS NOT NULL
            WINDOW w AS (
                PARTITION BY identity, transaction_id ORDER BY event_at, ts, seq
                ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
            )
        )
    )
    WHERE charging
    GROUP BY identity, transaction_id, run
),
state_spans AS (
    SELECT identity, state, start_at, end_at FROM status_spans WHERE state IS NOT NULL
    UNION ALL
    SELECT identity, 'charging', start_at, end_at FROM status_spans WHERE status = 'Charging'
    UNION ALL
    SELECT identity, state, start_at, end_at FROM charging_spans
),
clipped AS (
    -- A state only counts while the charger is connected: intersect with connections.
    SELECT s.identity, s.state, greatest(s.start_at, o.start_at) AS start_at,
        least(s.end_at, o.end_at) AS end_at
    FROM state_spans AS s
    JOIN online AS o
        ON o.identity = s.identity AND s.start_at < o.end_at AND o.start_at < s.end_at
    UNION ALL
    SELECT identity, 'connected', start_at, end_at FROM online
),
by_day AS (
    SELECT
        identity,
        state,
        day,
        epoch(least(end_at, day + INTERVAL 1 DAY) - greatest(start_at, day)) AS seconds
    FROM (
        SELECT
            *,
            unnest(generate_series(date_trunc('day', start_at), end_at, INTERVAL 1 DAY)) AS day
        FROM clipped
        WHERE end_at >= start_at
    )
    WHERE least(end_at, day + INTERVAL 1 DAY) > greatest(start_at, day)
),
opens AS (
    SELECT
        identity,
        date_trunc('day', start_at) AS day,
        count(*) AS connections,
        count(*) FILTER (WHERE nth > 1) AS reconnects
    FROM online
    GROUP BY ALL
),
totals AS (
    SELECT
        identity,
        day,
        sum(seconds) FILTER (WHERE state = 'connected') AS connected_s,
        sum(seconds) FILTER (WHERE state = 'available') AS available_s,
        sum(seconds) FILTER (WHERE state = 'occupied') AS occupied_s,
        sum(seconds) FILTER (WHERE state = 'charging') AS charging_s,
        sum(seconds) FILTER (WHERE state = 'reserved') AS reserved_s,
        sum(seconds) FILTER (WHERE state = 'unavailable') AS unavailable_s,
        sum(seconds) FILTER (WHERE state = 'faulted') AS faulted_s
    FROM by_day
    GROUP BY identity, day
)
SELECT
    identity,
    CAST(day AS DATE) AS day,
    round(coalesce(t.connected_s, 0), 3) AS connected_s,
    coalesce(o.connections, 0) AS connections,
    coalesce(o.reconnects, 0) AS reconnects,
    round(coalesce(t.available_s, 0), 3) AS available_s,
    round(coalesce(t.occupied_s, 0), 3) AS occupied_s,
    round(coalesce(t.charging_s, 0), 3) AS charging_s,
    round(coalesce(t.reserved_s, 0), 3) AS reserved_s,
    round(coalesce(t.unavailable_s, 0), 3) AS unavailable_s,
    round(coalesce(t.faulted_s, 0), 3) AS faulted_s
FROM totals AS t
FULL JOIN opens AS o USING (identity, day)
ORDER BY identity, day
