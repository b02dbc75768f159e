-- title: Transactions
-- description: One row per charging transaction: OCPP 1.6 StartTransaction (with the
--   transactionId from its answer) and StopTransaction, 2.0.1/2.1 TransactionEvent
--   Started/Updated/Ended. Charger, transaction id, EVSE/connector, start and stop
--   time (the charger's timestamps), meter start and stop and the energy delivered in
--   Wh (from meterStart/meterStop, else from the first and last
--   Energy.Active.Import.Register sample), the id token as recorded, and the stop
--   reason (Local when omitted, as the spec says).
-- param identity: only this charger (default: every charger)
-- param legs = charger: whose connections: charger (its own), mirror (ocproxy's legs to a secondary CSMS) or all
WITH conn AS (
    SELECT connection_id, identity, ocpp_version
    FROM connections
    WHERE ($identity IS NULL OR identity = $identity)
        AND ($legs = 'all' OR (mirror_of IS NULL) = ($legs = 'charger'))
),
tx_frames AS NOT MATERIALIZED (
    -- The payload fields were parsed when the frames were recorded (frame_fields: one
    -- row per frame of these actions, leniently: a field of the wrong shape is NULL;
    -- fields whose type is checked are JSON text, 1 or "1"). 2.x MeterValues carry no
    -- transaction: they are not read.
    SELECT
        c.identity,
        c.ocpp_version,
        f.connection_id,
        f.seq,
        f.ts,
        f.action,
        f.message_type,
        f.request_seq,
        f.* EXCLUDE (connection_id, seq, ts, action, message_type, request_seq),
        coalesce(f.transactionInfo.transactionId, trim(f.transactionId::VARCHAR, '"'))
            AS transaction_id
    FROM frame_fields AS f
    JOIN conn AS c USING (connection_id)
    WHERE f.action IN ('StartTransaction', 'StopTransaction', 'MeterValues', 'TransactionEvent')
        AND (f.message_type = 2 OR (f.message_type = 3 AND f.action = 'StartTransaction'))
        AND NOT (f.action = 'MeterValues' AND c.ocpp_version IS DISTINCT FROM '1.6')
),
calls AS NOT MATERIALIZED (
    -- Every CALL with its transaction id: a 1.6 StartTransaction's is in its answer.
    SELECT
        s.* REPLACE (trim(r.transactionId::VARCHAR, '"') AS transaction_id),
        r.transactionId AS answer_transaction_id
    FROM tx_frames AS s
    JOIN tx_frames AS r
        ON r.connection_id = s.connection_id AND r.request_seq = s.seq AND r.message_type = 3
    WHERE s.action = 'StartTransaction' AND s.message_type = 2
    UNION ALL BY NAME
    SELECT *
    FROM tx_frames
    WHERE message_type = 2 AND action <> 'StartTransaction'
),
bounds AS (
    -- Where transactions begin and end (1.6 Start/StopTransaction, 2.x TransactionEvent
    -- Started/Ended), in the order recorded.
    SELECT
        identity,
        transaction_id,
        ts,
        seq,
        coalesce(action = 'StartTransaction' OR eventType = 'Started', false) AS is_start
    FROM calls
    WHERE transaction_id IS NOT NULL
        AND (action IN ('StartTransaction', 'StopTransaction')
            OR (action = 'TransactionEvent' AND eventType IN ('Started', 'Ended')))
),
occurrences AS (
    -- Ids repeat (a charger's counter restarts; several recordings read as one): a start
    -- after a stop of the same charger and id begins a new occurrence of that id, and
    -- every frame belongs to the latest occurrence begun when it was recorded. 0: frames
    -- before the first start (a recording that began mid-transaction).
    SELECT
        *,
        coalesce(
            lead(occurrence_from) OVER (PARTITION BY identity, transaction_id ORDER BY occurrence),
            'infinity'::TIMESTAMPTZ
        ) AS occurrence_to
    FROM (
        SELECT identity, transaction_id, occurrence, min(ts) AS occurrence_from
        FROM (
            SELECT
                *,
                sum(CASE WHEN is_start AND NOT coalesce(after_start, false) THEN 1 ELSE 0 END)
                    OVER (
                        PARTITION BY identity, transaction_id ORDER BY ts, seq
                        ROWS UNBOUNDED PRECEDING
                    ) AS occurrence
            FROM (
                SELECT
                    *,
                    lag(is_start) OVER (PARTITION BY identity, transaction_id ORDER BY ts, seq)
                        AS after_start
                FROM bounds
            )
        )
        GROUP BY identity, transaction_id, occurrence
    )
),
placed AS NOT MATERIALIZED (
    SELECT c.*, coalesce(o.occurrence, 0) AS occurrence
    FROM calls AS c
    LEFT JOIN occurrences AS o
        ON o.identity = c.identity
        AND o.transaction_id = c.transaction_id
        AND c.ts >= o.occurrence_from
        AND c.ts < o.occurrence_to
),
register AS (
    -- The energy register samples (the default measurand, of the whole outlet, in Wh)
    -- were picked from the meter values when the frames were recorded.
    SELECT
        identity,
        transaction_id,
        occurrence,
        seq,
        coalesce(TRY_CAST(r.timestamp AS TIMESTAMPTZ), ts) AS sampled_at,
        r.wh
    FROM (
        SELECT identity, transaction_id, occurrence, seq, ts, unnest(registers) AS r
        FROM placed
        WHERE action IN ('MeterValues', 'StopTransaction', 'TransactionEvent')
            AND transaction_id IS NOT NULL
    )
),
energy AS (
    SELECT
        identity,
        transaction_id,
        occurrence,
        -- Ordered by (sampled_at, seq) as one number: comparing structs costs 3x more.
        arg_min(wh, epoch_us(sampled_at)::HUGEINT << 40 | seq) AS first_wh,
        arg_max(wh, epoch_us(sampled_at)::HUGEINT << 40 | seq) AS last_wh
    FROM register
    WHERE wh IS NOT NULL
    GROUP BY identity, transaction_id, occurrence
),
starts16 AS (
    SELECT
        identity,
        ocpp_version,
        transaction_id,
        occurrence,
        TRY_CAST(trim(connectorId::VARCHAR, '"') AS INTEGER) AS connector_id,
        idTag AS id_token,
        TRY_CAST(trim(meterStart::VARCHAR, '"') AS DOUBLE) AS meter_start_wh,
        coalesce(TRY_CAST(timestamp AS TIMESTAMPTZ), ts) AS started_at,
        list_filter(
            [
                CASE WHEN NOT regexp_full_match(coalesce(meterStart::VARCHAR, '-'), '-?\d+')
                    THEN 'meterStart missing or not an integer' END,
                CASE WHEN NOT regexp_full_match(coalesce(connectorId::VARCHAR, '-'), '\d+')
                    THEN 'connectorId missing or not an integer' END,
                CASE WHEN TRY_CAST(timestamp AS TIMESTAMPTZ) IS NULL
                    THEN 'StartTransaction timestamp missing or not a date-time' END,
                CASE WHEN NOT regexp_full_match(
                        coalesce(answer_transaction_id::VARCHAR, '-'), '-?\d+')
                    THEN 'transactionId missing or not an integer' END
            ],
            lambda x: x IS NOT NULL
        ) AS issues
    FROM placed
    WHERE action = 'StartTransaction'
),
stops16 AS (
    SELECT
        identity,
        ocpp_version,
        trim(transactionId::VARCHAR, '"') AS transaction_id,
        occurrence,
        TRY_CAST(trim(meterStop::VARCHAR, '"') AS DOUBLE) AS meter_stop_wh,
        coalesce(TRY_CAST(timestamp AS TIMESTAMPTZ), ts) AS stopped_at,
        reason AS reason,
        idTag AS id_token,
        list_filter(
            [
                CASE WHEN NOT regexp_full_match(coalesce(meterStop::VARCHAR, '-'), '-?\d+')
                    THEN 'meterStop missing or not an integer' END,
                CASE WHEN NOT regexp_full_match(coalesce(transactionId::VARCHAR, '-'), '-?\d+')
                    THEN 'transactionId missing or not an integer' END,
                CASE WHEN TRY_CAST(timestamp AS TIMESTAMPTZ) IS NULL
                    THEN 'StopTransaction timestamp missing or not a date-time' END
            ],
            lambda x: x IS NOT NULL
        ) AS issues
    FROM placed
    WHERE action = 'StopTransaction'
    -- A StopTransaction retried after a timeout stops the same transaction once.
    QUALIFY row_number() OVER (
        PARTITION BY identity, transaction_id, occurrence ORDER BY ts, seq
    ) = 1
),
tx16 AS (
    SELECT
        coalesce(a.identity, b.identity) AS identity,
        coalesce(a.ocpp_version, b.ocpp_version) AS ocpp_version,
        coalesce(a.transaction_id, b.transaction_id) AS transaction_id,
        NULL::INTEGER AS evse_id,
        a.connector_id,
        a.started_at,
        b.stopped_at,
        -- Both ends from the StartTransaction/StopTransaction payloads, or both from samples.
        (a.meter_start_wh IS NOT NULL AND b.meter_stop_wh IS NOT NULL) AS from_payload,
        CASE WHEN from_payload THEN a.meter_start_wh ELSE e.first_wh END AS meter_start_wh,
        CASE WHEN from_payload THEN b.meter_stop_wh ELSE e.last_wh END AS meter_stop_wh,
        coalesce(a.id_token, b.id_token) AS id_token,
        NULL::VARCHAR AS id_token_type,
        CASE WHEN b.identity IS NOT NULL THEN coalesce(b.reason, 'Local') END AS stop_reason,
        list_concat(coalesce(a.issues, []), coalesce(b.issues, [])) AS issues
    FROM starts16 AS a
    FULL JOIN stops16 AS b
        ON a.identity = b.identity
        AND a.transaction_id = b.transaction_id
        AND a.occurrence = b.occurrence
    LEFT JOIN energy AS e
        ON e.identity = coalesce(a.identity, b.identity)
        AND e.transaction_id = coalesce(a.transaction_id, b.transaction_id)
        AND e.occurrence = coalesce(a.occurrence, b.occurrence)
),
events2 AS (
    SELECT
        identity,
        ocpp_version,
        seq,
        transactionInfo.transactionId AS transaction_id,
        CASE WHEN transactionInfo.transactionId IS NOT NULL THEN occurrence ELSE 0 END
            AS occurrence,
        eventType AS event_type,
        coalesce(TRY_CAST(timestamp AS TIMESTAMPTZ), ts) AS event_at,
        TRY_CAST(trim(evse.id::VARCHAR, '"') AS INTEGER) AS evse_id,
        TRY_CAST(evse.connectorId AS INTEGER) AS connector_id,
        idToken.idToken AS id_token,
        idToken.type AS id_token_type,
        transactionInfo.stoppedReason AS stopped_reason,
        list_filter(
            [
                CASE WHEN transactionInfo.transactionId IS NULL
                    THEN 'transactionId missing' END,
                CASE WHEN coalesce(eventType, '-') NOT IN ('Started', 'Updated', 'Ended')
                    THEN 'eventType missing or unknown' END,
                CASE WHEN TRY_CAST(timestamp AS TIMESTAMPTZ) IS NULL
                    THEN 'TransactionEvent timestamp missing or not a date-time' END,
                CASE WHEN NOT regexp_full_match(coalesce(evse.id::VARCHAR, '0'), '\d+')
                    THEN 'evse.id is not an integer' END
            ],
            lambda x: x IS NOT NULL
        ) AS issues
    FROM placed
    WHERE action = 'TransactionEvent'
),
tx2 AS (
    SELECT
        t.identity,
        any_value(t.ocpp_version) AS ocpp_version,
        t.transaction_id,
        min(t.evse_id) AS evse_id,
        min(t.connector_id) AS connector_id,
        min(t.event_at) FILTER (WHERE t.event_type = 'Started') AS started_at,
        max(t.event_at) FILTER (WHERE t.event_type = 'Ended') AS stopped_at,
        any_value(e.first_wh) AS meter_start_wh,
        any_value(e.last_wh) AS meter_stop_wh,
        arg_min(t.id_token, (t.event_at, t.seq)) AS id_token,
        arg_min(t.id_token_type, (t.event_at, t.seq)) AS id_token_type,
        CASE WHEN bool_or(t.event_type = 'Ended')
            THEN coalesce(max(t.stopped_reason), 'Local') END AS stop_reason,
        list_distinct(flatten(list(t.issues))) AS issues
    FROM events2 AS t
    LEFT JOIN energy AS e USING (identity, transaction_id, occurrence)
    GROUP BY t.identity, t.transaction_id, t.occurrence
)
SELECT
    identity,
    ocpp_version,
    transaction_id,
    evse_id,
    connector_id,
    started_at,
    stopped_at,
    round(epoch(stopped_at - started_at), 3) AS duration_s,
    meter_start_wh,
    meter_stop_wh,
    meter_stop_wh - meter_start_wh AS energy_wh,
    id_token,
    id_token_type,
    stop_reason,
    list_distinct(issues) AS issues
FROM (
    SELECT * EXCLUDE (from_payload) FROM tx16
    UNION ALL BY NAME
    SELECT * FROM tx2
)
ORDER BY identity, started_at NULLS LAST, transaction_id
