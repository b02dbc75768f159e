-- title: Charger inventory
-- description: One row per charger identity: vendor, model, serial number and
--   firmware from its latest BootNotification (OCPP 1.6 chargePoint* fields or
--   2.0.1/2.1 chargingStation), the CSMS's answer to it, how many boots, when the
--   charger was first and last seen, its connections and the OCPP versions it used.
-- param identity: only this charger (default: every charger)
-- param legs = charger: whose connections: charger (its own), mirror (ocproxy's legs to a secondary CSMS) or all
WITH conn AS (
    SELECT *
    FROM connections
    WHERE ($identity IS NULL OR identity = $identity)
        AND ($legs = 'all' OR (mirror_of IS NULL) = ($legs = 'charger'))
),
last_frames AS (
    SELECT connection_id, max(ts) AS last_ts
    FROM frames
    GROUP BY connection_id
),
seen AS (
    SELECT
        c.identity,
        min(c.opened_at) AS first_seen,
        max(greatest(c.opened_at, c.closed_at, l.last_ts)) AS last_seen,
        count(*) AS connections,
        list_sort(list_distinct(list(c.ocpp_version))) AS ocpp_versions
    FROM conn AS c
    LEFT JOIN last_frames AS l USING (connection_id)
    GROUP BY c.identity
),
boots AS (
    -- Only BootNotification frames are parsed; 1.6 and 2.x name the fields differently.
    SELECT
        c.identity,
        f.ts,
        coalesce(
            f.payload ->> '$.chargePointVendor', f.payload ->> '$.chargingStation.vendorName'
        ) AS vendor,
        coalesce(
            f.payload ->> '$.chargePointModel', f.payload ->> '$.chargingStation.model'
        ) AS model,
        coalesce(
            f.payload ->> '$.chargePointSerialNumber',
            f.payload ->> '$.chargeBoxSerialNumber',
            f.payload ->> '$.chargingStation.serialNumber'
        ) AS serial,
        coalesce(
            f.payload ->> '$.firmwareVersion', f.payload ->> '$.chargingStation.firmwareVersion'
        ) AS firmware,
        r.payload ->> '$.status' AS boot_status
    FROM frames AS f
    JOIN conn AS c USING (connection_id)
    LEFT JOIN frames AS r
        ON r.connection_id = f.connection_id
        AND r.request_seq = f.seq
        AND r.action = 'BootNotification'
        AND r.message_type = 3
    WHERE f.action = 'BootNotification' AND f.message_type = 2
),
latest AS (
    -- arg_max skips NULLs: each field is the latest value a boot actually carried.
    SELECT
        identity,
        arg_max(vendor, ts) AS vendor,
        arg_max(model, ts) AS model,
        arg_max(serial, ts) AS serial,
        arg_max(firmware, ts) AS firmware,
        arg_max(boot_status, ts) AS boot_status,
        count(*) AS boots,
        max(ts) AS last_boot_at,
        count(*) FILTER (WHERE vendor IS NULL OR model IS NULL) AS incomplete_boots
    FROM boots
    GROUP BY identity
)
SELECT
    s.identity,
    b.vendor,
    b.model,
    b.serial,
    b.firmware,
    b.boot_status,
    coalesce(b.boots, 0) AS boots,
    b.last_boot_at,
    s.first_seen,
    s.last_seen,
    s.connections,
    s.ocpp_versions,
    CASE
        WHEN coalesce(b.incomplete_boots, 0) > 0
            THEN ['BootNotification without vendor or model']
        ELSE []
    END AS issues
FROM seen AS s
LEFT JOIN latest AS b USING (identity)
ORDER BY s.identity
