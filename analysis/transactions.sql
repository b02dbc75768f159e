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
tx_frames AS (
    -- Filter on the derived columns first; only these frames' payloads are parsed, each
    -- once, into a struct covering every shape involved. from_json is lenient: a field
    -- of the wrong shape becomes NULL. Fields whose type is checked are kept as JSON
    -- text (1 or "1"). 2.x MeterValues carry no transaction: they are not read.
    SELECT
        c.identity,
        c.ocpp_version,
        f.connection_id,
        f.seq,
        f.ts,
        f.action,
        f.message_type,
        f.request_seq,
        from_json(
            f.payload,
            '{"connectorId": "JSON", "idTag": "VARCHAR", "meterStart": "JSON",
              "meterStop": "JSON", "timestamp": "VARCHAR", "transactionId": "JSON",
              "reason": "VARCHAR", "eventType": "VARCHAR",
              "transactionInfo": {"transactionId": "VARCHAR", "stoppedReason": "VARCHAR"},
              "evse": {"id": "JSON", "connectorId": "VARCHAR"},
              "idToken": {"idToken": "VARCHAR", "type": "VARCHAR"},
              "meterValue": [{"timestamp": "VARCHAR", "sampledValue": [{"value": "VARCHAR",
                  "measurand": "VARCHAR", "phase": "VARCHAR", "location": "VARCHAR",
                  "unit": "VARCHAR", "unitOfMeasure": {"unit": "VARCHAR",
                  "multiplier": "VARCHAR"}}]}],
              "transactionData": [{"timestamp": "VARCHAR", "sampledValue": [{"value": "VARCHAR",
                  "measurand": "VARCHAR", "phase": "VARCHAR", "location": "VARCHAR",
                  "unit": "VARCHAR"}]}]}'
        ) AS p
    FROM frames AS f
    JOIN conn AS c USING (connection_id)
    WHERE f.action IN ('StartTransaction', 'StopTransaction', 'MeterValues', 'TransactionEvent')
        AND (f.message_type = 2 OR (f.message_type = 3 AND f.action = 'StartTransaction'))
        AND NOT (f.action = 'MeterValues' AND c.ocpp_version IS DISTINCT FROM '1.6')
),
meter_values AS (
    SELECT
        identity,
        seq,
        ts,
        coalesce(p.transactionInfo.transactionId, trim(p.transactionId::VARCHAR, '"'))
            AS transaction_id,
        unnest(
            CASE action WHEN 'StopTransaction' THEN p.transactionData ELSE p.meterValue END
        ) AS mv
    FROM tx_frames
    WHERE message_type = 2 AND action IN ('MeterValues', 'StopTransaction', 'TransactionEvent')
),
sampled AS (
    SELECT
        identity,
        transaction_id,
        seq,
        coalesce(TRY_CAST(mv.timestamp AS TIMESTAMPTZ), ts) AS sampled_at,
        unnest(mv.sampledValue) AS sv
    FROM meter_values
    WHERE transaction_id IS NOT NULL
),
register AS (
    -- The energy register (the default measurand) of the whole outlet, in Wh.
    SELECT
        identity,
        transaction_id,
        seq,
        sampled_at,
        TRY_CAST(sv.value AS DOUBLE)
            * CASE lower(coalesce(sv.unit, sv.unitOfMeasure.unit, 'Wh'))
                WHEN 'kwh' THEN 1000 ELSE 1 END
            * pow(10, coalesce(TRY_CAST(sv.unitOfMeasure.multiplier AS INTEGER), 0)) AS wh
    FROM sampled
    WHERE coalesce(sv.measurand, 'Energy.Active.Import.Register')
            = 'Energy.Active.Import.Register'
        AND sv.phase IS NULL
        AND coalesce(sv.location, 'Outlet') = 'Outlet'
        AND lower(coalesce(sv.unit, sv.unitOfMeasure.unit, 'Wh')) IN ('wh', 'kwh')
),
energy AS (
    SELECT
        identity,
        transaction_id,
        arg_min(wh, (sampled_at, seq)) AS first_wh,
        arg_max(wh, (sampled_at, seq)) AS last_wh
    FROM register
    WHERE wh IS NOT NULL
    GROUP BY identity, transaction_id
),
starts16 AS (
    SELECT
        s.identity,
        s.ocpp_version,
        trim(r.p.transactionId::VARCHAR, '"') AS transaction_id,
        TRY_CAST(trim(s.p.connectorId::VARCHAR, '"') AS INTEGER) AS connector_id,
        s.p.idTag AS id_token,
        TRY_CAST(trim(s.p.meterStart::VARCHAR, '"') AS DOUBLE) AS meter_start_wh,
        coalesce(TRY_CAST(s.p.timestamp AS TIMESTAMPTZ), s.ts) AS started_at,
        list_filter(
            [
                CASE WHEN NOT regexp_full_match(coalesce(s.p.meterStart::VARCHAR, '-'), '-?\d+')
                    THEN 'meterStart missing or not an integer' END,
                CASE WHEN NOT regexp_full_match(coalesce(s.p.connectorId::VARCHAR, '-'), '\d+')
                    THEN 'connectorId missing or not an integer' END,
                CASE WHEN TRY_CAST(s.p.timestamp AS TIMESTAMPTZ) IS NULL
                    THEN 'StartTransaction timestamp missing or not a date-time' END,
                CASE WHEN NOT regexp_full_match(coalesce(r.p.transactionId::VARCHAR, '-'), '-?\d+')
                    THEN 'transactionId missing or not an integer' END
            ],
            lambda x: x IS NOT NULL
        ) AS issues
    FROM tx_frames AS s
    JOIN tx_frames AS r
        ON r.connection_id = s.connection_id AND r.request_seq = s.seq AND r.message_type = 3
    WHERE s.action = 'StartTransaction' AND s.message_type = 2
),
stops16 AS (
    SELECT
        identity,
        ocpp_version,
        trim(p.transactionId::VARCHAR, '"') AS transaction_id,
        TRY_CAST(trim(p.meterStop::VARCHAR, '"') AS DOUBLE) AS meter_stop_wh,
        coalesce(TRY_CAST(p.timestamp AS TIMESTAMPTZ), ts) AS stopped_at,
        p.reason AS reason,
        p.idTag AS id_token,
        list_filter(
            [
                CASE WHEN NOT regexp_full_match(coalesce(p.meterStop::VARCHAR, '-'), '-?\d+')
                    THEN 'meterStop missing or not an integer' END,
                CASE WHEN NOT regexp_full_match(coalesce(p.transactionId::VARCHAR, '-'), '-?\d+')
                    THEN 'transactionId missing or not an integer' END,
                CASE WHEN TRY_CAST(p.timestamp AS TIMESTAMPTZ) IS NULL
                    THEN 'StopTransaction timestamp missing or not a date-time' END
            ],
            lambda x: x IS NOT NULL
        ) AS issues
    FROM tx_frames
    WHERE action = 'StopTransaction' AND message_type = 2
    -- A StopTransaction retried after a timeout stops the same transaction once.
    QUALIFY row_number() OVER (PARTITION BY identity, transaction_id ORDER BY ts, seq) = 1
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
    FULL JOIN stops16 AS b ON a.identity = b.identity AND a.transaction_id = b.transaction_id
    LEFT JOIN energy AS e
        ON e.identity = coalesce(a.identity, b.identity)
        AND e.transaction_id = coalesce(a.transaction_id, b.transaction_id)
),
events2 AS (
    SELECT
        identity,
        ocpp_version,
        seq,
        p.transactionInfo.transactionId AS transaction_id,
        p.eventType AS event_type,
        coalesce(TRY_CAST(p.timestamp AS TIMESTAMPTZ), ts) AS event_at,
        TRY_CAST(trim(p.evse.id::VARCHAR, '"') AS INTEGER) AS evse_id,
        TRY_CAST(p.evse.connectorId AS INTEGER) AS connector_id,
        p.idToken.idToken AS id_token,
        p.idToken.type AS id_token_type,
        p.transactionInfo.stoppedReason AS stopped_reason,
        list_filter(
            [
                CASE WHEN p.transactionInfo.transactionId IS NULL
                    THEN 'transactionId missing' END,
                CASE WHEN coalesce(p.eventType, '-') NOT IN ('Started', 'Updated', 'Ended')
                    THEN 'eventType missing or unknown' END,
                CASE WHEN TRY_CAST(p.timestamp AS TIMESTAMPTZ) IS NULL
                    THEN 'TransactionEvent timestamp missing or not a date-time' END,
                CASE WHEN NOT regexp_full_match(coalesce(p.evse.id::VARCHAR, '0'), '\d+')
                    THEN 'evse.id is not an integer' END
            ],
            lambda x: x IS NOT NULL
        ) AS issues
    FROM tx_frames
    WHERE action = 'TransactionEvent' AND message_type = 2
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
    LEFT JOIN energy AS e USING (identity, transaction_id)
    GROUP BY t.identity, t.transaction_id
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
