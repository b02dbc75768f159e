-- title: Meter values
-- description: One row per sampled value, from 1.6 MeterValues and the
--   transactionData of StopTransaction, and from 2.0.1/2.1 MeterValues and
--   TransactionEvent: charger, transaction, EVSE/connector, when it was sampled,
--   measurand, phase, location, unit, multiplier (2.x), context and the value as a
--   number. Omitted fields get the spec's defaults (measurand
--   Energy.Active.Import.Register, unit Wh, context Sample.Periodic, location Outlet).
--   Unordered: it can be millions of rows, and sorting them would cost more than the
--   query (add ORDER BY in your own SQL, or sort the export).
-- param identity: only this charger (default: every charger)
-- param legs = charger: whose connections: charger (its own), mirror (ocproxy's legs to a secondary CSMS) or all
WITH conn AS (
    SELECT connection_id, identity, ocpp_version
    FROM connections
    WHERE ($identity IS NULL OR identity = $identity)
        AND ($legs = 'all' OR (mirror_of IS NULL) = ($legs = 'charger'))
),
located AS NOT MATERIALIZED (
    -- The payload fields were parsed when the frames were recorded (frame_fields),
    -- leniently: a field of the wrong shape is NULL instead of failing the query.
    SELECT
        c.identity,
        c.ocpp_version,
        f.ts,
        f.seq,
        f.action AS source,
        coalesce(f.transactionInfo.transactionId, f.transactionId ->> '$') AS transaction_id,
        TRY_CAST(coalesce(f.evseId, f.evse.id ->> '$') AS INTEGER) AS evse_id,
        TRY_CAST(coalesce(f.connectorId ->> '$', f.evse.connectorId) AS INTEGER)
            AS connector_id,
        f.meterValue,
        f.transactionData
    FROM frame_fields AS f
    JOIN conn AS c USING (connection_id)
    WHERE f.message_type = 2
        AND f.action IN ('MeterValues', 'StopTransaction', 'TransactionEvent')
        -- A StopTransaction may omit its meter values: it then carries none, legally.
        AND NOT (f.action = 'StopTransaction' AND coalesce(len(f.transactionData), 0) = 0)
),
evses AS (
    -- 2.x names the EVSE only in the first TransactionEvent of a transaction: a small
    -- lookup (a join, not a window over every row) fills it in for the others.
    SELECT identity, transaction_id, max(evse_id) AS evse_id, max(connector_id) AS connector_id
    FROM located
    WHERE source = 'TransactionEvent' AND evse_id IS NOT NULL AND transaction_id IS NOT NULL
    GROUP BY identity, transaction_id
),
filled AS NOT MATERIALIZED (
    SELECT
        l.* EXCLUDE (evse_id, connector_id),
        coalesce(l.evse_id, e.evse_id) AS evse_id,
        coalesce(l.connector_id, e.connector_id) AS connector_id
    FROM located AS l
    LEFT JOIN evses AS e USING (identity, transaction_id)
),
readings AS NOT MATERIALIZED (
    -- An empty list still yields one row (NULL), so a violation is counted, not lost.
    -- meterValue and 1.6 transactionData (no unitOfMeasure) are unnested apart: one
    -- list of both would cast every frame's list to a common type.
    SELECT
        * EXCLUDE (meterValue, transactionData),
        unnest(
            CASE WHEN coalesce(len(meterValue), 0) = 0 THEN [NULL] ELSE meterValue END
        ) AS mv
    FROM filled
    WHERE source <> 'StopTransaction'
),
readings16 AS NOT MATERIALIZED (
    SELECT * EXCLUDE (meterValue, transactionData), unnest(transactionData) AS mv
    FROM filled
    WHERE source = 'StopTransaction'
),
samples AS (
    SELECT
        * EXCLUDE (mv, sv),
        sv IS NULL AS no_sample,
        sv.value AS value_json,
        sv.measurand,
        sv.phase,
        sv.location,
        sv.context,
        sv.format,
        sv.unit,
        sv.unitOfMeasure.unit AS measure_unit,
        sv.unitOfMeasure.multiplier AS measure_multiplier
    FROM (
        SELECT
            *,
            mv.timestamp AS sampled_text,
            -- Cast once per reading, not per sample: its samples share the timestamp.
            TRY_CAST(mv.timestamp AS TIMESTAMPTZ) AS sampled_at,
            unnest(
                CASE WHEN coalesce(len(mv.sampledValue), 0) = 0 THEN [NULL]
                    ELSE mv.sampledValue END
            ) AS sv
        FROM readings
    )
    UNION ALL BY NAME
    SELECT
        * EXCLUDE (mv, sv),
        sv IS NULL AS no_sample,
        sv.value AS value_json,
        sv.measurand,
        sv.phase,
        sv.location,
        sv.context,
        sv.format,
        sv.unit
    FROM (
        SELECT
            *,
            mv.timestamp AS sampled_text,
            -- Cast once per reading, not per sample: its samples share the timestamp.
            TRY_CAST(mv.timestamp AS TIMESTAMPTZ) AS sampled_at,
            unnest(
                CASE WHEN coalesce(len(mv.sampledValue), 0) = 0 THEN [NULL]
                    ELSE mv.sampledValue END
            ) AS sv
        FROM readings16
    )
),
valued AS (
    SELECT
        *,
        -- The value as JSON text: a 2.x number (1500) or a 1.6 string ("1500").
        value_json::VARCHAR AS value_text,
        TRY_CAST(trim(value_json::VARCHAR, '"') AS DOUBLE) AS value_number
    FROM samples
),
checked AS (
    SELECT
        *,
        no_sample AS no_sample_issue,
        NOT no_sample AND value_text IS NULL AS missing_issue,
        -- 1.6 signed values are not numbers, legally.
        value_text IS NOT NULL AND value_number IS NULL
            AND coalesce(format, 'Raw') <> 'SignedData' AS number_issue,
        ocpp_version <> '1.6' AND starts_with(value_text, '"') AS string_issue,
        sampled_text IS NOT NULL AND sampled_at IS NULL AS timestamp_issue,
        NOT no_sample AND sampled_text IS NULL AS no_timestamp_issue
    FROM valued
)
SELECT
    identity,
    ocpp_version,
    ts AS recorded_at,
    sampled_at,
    source,
    transaction_id,
    evse_id,
    connector_id,
    coalesce(measurand, 'Energy.Active.Import.Register') AS measurand,
    phase,
    coalesce(location, 'Outlet') AS location,
    coalesce(unit, measure_unit, 'Wh') AS unit,
    coalesce(TRY_CAST(measure_multiplier AS INTEGER), 0) AS multiplier,
    coalesce(context, 'Sample.Periodic') AS context,
    value_number AS value,
    -- Most samples are clean: their empty list costs nothing to build.
    CASE
        WHEN no_sample_issue OR missing_issue OR number_issue OR string_issue
            OR timestamp_issue OR no_timestamp_issue
            THEN list_filter(
                [
                    CASE WHEN no_sample_issue THEN 'no sampled value' END,
                    CASE WHEN missing_issue THEN 'value missing' END,
                    CASE WHEN number_issue THEN 'value is not a number' END,
                    CASE WHEN string_issue THEN 'value is a string, not a number' END,
                    CASE WHEN timestamp_issue THEN 'timestamp is not a date-time' END,
                    CASE WHEN no_timestamp_issue THEN 'timestamp missing' END
                ],
                lambda x: x IS NOT NULL
            )
        ELSE []::VARCHAR[]
    END AS issues
FROM checked
