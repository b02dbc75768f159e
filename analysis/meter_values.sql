-- title: Meter values
-- description: One row per sampled value, from 1.6 MeterValues and the
--   transactionData of StopTransaction, and from 2.0.1/2.1 MeterValues and
--   TransactionEvent: charger, transaction, EVSE/connector, when it was sampled,
--   measurand, phase, location, unit, multiplier (2.x), context and the value as a
--   number. Omitted fields get the spec's defaults (measurand
--   Energy.Active.Import.Register, unit Wh, context Sample.Periodic, location Outlet).
-- param identity: only this charger (default: every charger)
WITH conn AS (
    SELECT connection_id, identity, ocpp_version
    FROM connections
    WHERE $identity IS NULL OR identity = $identity
),
carriers AS (
    -- Only the frames that carry meter values are parsed (filtered on action first).
    SELECT
        c.identity,
        c.ocpp_version,
        f.ts,
        f.seq,
        f.action AS source,
        CASE f.action
            WHEN 'TransactionEvent' THEN f.payload ->> '$.transactionInfo.transactionId'
            ELSE f.payload ->> '$.transactionId'
        END AS transaction_id,
        TRY_CAST(coalesce(f.payload ->> '$.evseId', f.payload ->> '$.evse.id') AS INTEGER)
            AS evse_id,
        TRY_CAST(
            coalesce(f.payload ->> '$.connectorId', f.payload ->> '$.evse.connectorId') AS INTEGER
        ) AS connector_id,
        CASE f.action
            WHEN 'StopTransaction' THEN json_extract(f.payload, '$.transactionData[*]')
            ELSE json_extract(f.payload, '$.meterValue[*]')
        END AS meter_values
    FROM frames AS f
    JOIN conn AS c USING (connection_id)
    WHERE f.message_type = 2
        AND f.action IN ('MeterValues', 'StopTransaction', 'TransactionEvent')
),
filled AS (
    -- 2.x names the EVSE only in the first TransactionEvent of a transaction.
    SELECT
        * EXCLUDE (evse_id, connector_id),
        CASE WHEN transaction_id IS NULL THEN evse_id
            ELSE coalesce(evse_id, max(evse_id) OVER tx) END AS evse_id,
        CASE WHEN transaction_id IS NULL THEN connector_id
            ELSE coalesce(connector_id, max(connector_id) OVER tx) END AS connector_id
    FROM carriers
    -- A StopTransaction may omit its meter values: it then carries none, legally.
    WHERE NOT (source = 'StopTransaction' AND len(meter_values) = 0)
    WINDOW tx AS (PARTITION BY identity, transaction_id)
),
readings AS (
    -- An empty list still yields one row (NULL), so a violation is counted, not lost.
    SELECT
        * EXCLUDE (meter_values),
        unnest(CASE WHEN len(meter_values) = 0 THEN [NULL::JSON] ELSE meter_values END)
            AS meter_value
    FROM filled
),
samples AS (
    SELECT
        * EXCLUDE (meter_value),
        meter_value ->> '$.timestamp' AS sampled_text,
        unnest(
            CASE
                WHEN len(json_extract(meter_value, '$.sampledValue[*]')) = 0 THEN [NULL::JSON]
                ELSE json_extract(meter_value, '$.sampledValue[*]')
            END
        ) AS sv
    FROM readings
)
SELECT
    identity,
    ocpp_version,
    ts AS recorded_at,
    TRY_CAST(sampled_text AS TIMESTAMPTZ) AS sampled_at,
    source,
    transaction_id,
    evse_id,
    connector_id,
    coalesce(sv ->> '$.measurand', 'Energy.Active.Import.Register') AS measurand,
    sv ->> '$.phase' AS phase,
    coalesce(sv ->> '$.location', 'Outlet') AS location,
    coalesce(sv ->> '$.unit', sv ->> '$.unitOfMeasure.unit', 'Wh') AS unit,
    coalesce(TRY_CAST(sv ->> '$.unitOfMeasure.multiplier' AS INTEGER), 0) AS multiplier,
    coalesce(sv ->> '$.context', 'Sample.Periodic') AS context,
    TRY_CAST(sv ->> '$.value' AS DOUBLE) AS value,
    list_filter(
        [
            CASE WHEN sv IS NULL THEN 'no sampled value' END,
            CASE WHEN sv IS NOT NULL AND sv ->> '$.value' IS NULL THEN 'value missing' END,
            -- 1.6 signed values are not numbers, legally.
            CASE WHEN sv ->> '$.value' IS NOT NULL
                AND TRY_CAST(sv ->> '$.value' AS DOUBLE) IS NULL
                AND coalesce(sv ->> '$.format', 'Raw') <> 'SignedData'
                THEN 'value is not a number' END,
            CASE WHEN ocpp_version <> '1.6' AND json_type(sv, '$.value') = 'VARCHAR'
                THEN 'value is a string, not a number' END,
            CASE WHEN sampled_text IS NOT NULL AND TRY_CAST(sampled_text AS TIMESTAMPTZ) IS NULL
                THEN 'timestamp is not a date-time' END,
            CASE WHEN sv IS NOT NULL AND sampled_text IS NULL THEN 'timestamp missing' END
        ],
        lambda x: x IS NOT NULL
    ) AS issues
FROM samples
ORDER BY identity, coalesce(sampled_at, recorded_at), recorded_at, seq
