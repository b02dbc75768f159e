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
        coalesce(
            CASE f.action WHEN 'StopTransaction' THEN f.transactionData ELSE f.meterValue END,
            []
        ) AS meter_values
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
filled AS (
    SELECT
        l.* EXCLUDE (evse_id, connector_id),
        coalesce(l.evse_id, e.evse_id) AS evse_id,
        coalesce(l.connector_id, e.connector_id) AS connector_id
    FROM located AS l
    LEFT JOIN evses AS e USING (identity, transaction_id)
),
readings AS (
    -- An empty list still yields one row (NULL), so a violation is counted, not lost.
    SELECT
        * EXCLUDE (meter_values),
        unnest(CASE WHEN len(meter_values) = 0 THEN [NULL] ELSE meter_values END) AS mv
    FROM filled
),
samples AS (
    SELECT
        * EXCLUDE (mv),
        mv.timestamp AS sampled_text,
        unnest(
            CASE WHEN coalesce(len(mv.sampledValue), 0) = 0 THEN [NULL] ELSE mv.sampledValue END
        ) AS sv
    FROM readings
),
valued AS (
    SELECT
        *,
        -- The value as JSON text: a 2.x number (1500) or a 1.6 string ("1500").
        sv.value::VARCHAR AS value_text,
        TRY_CAST(trim(sv.value::VARCHAR, '"') AS DOUBLE) AS value_number,
        TRY_CAST(sampled_text AS TIMESTAMPTZ) AS sampled_at
    FROM samples
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
    coalesce(sv.measurand, 'Energy.Active.Import.Register') AS measurand,
    sv.phase AS phase,
    coalesce(sv.location, 'Outlet') AS location,
    coalesce(sv.unit, sv.unitOfMeasure.unit, 'Wh') AS unit,
    coalesce(TRY_CAST(sv.unitOfMeasure.multiplier AS INTEGER), 0) AS multiplier,
    coalesce(sv.context, 'Sample.Periodic') AS context,
    value_number AS value,
    list_filter(
        [
            CASE WHEN sv IS NULL THEN 'no sampled value' END,
            CASE WHEN sv IS NOT NULL AND value_text IS NULL THEN 'value missing' END,
            -- 1.6 signed values are not numbers, legally.
            CASE WHEN value_text IS NOT NULL AND value_number IS NULL
                AND coalesce(sv.format, 'Raw') <> 'SignedData' THEN 'value is not a number' END,
            CASE WHEN ocpp_version <> '1.6' AND starts_with(value_text, '"')
                THEN 'value is a string, not a number' END,
            CASE WHEN sampled_text IS NOT NULL AND sampled_at IS NULL
                THEN 'timestamp is not a date-time' END,
            CASE WHEN sv IS NOT NULL AND sampled_text IS NULL THEN 'timestamp missing' END
        ],
        lambda x: x IS NOT NULL
    ) AS issues
FROM valued
