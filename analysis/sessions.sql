-- title: Sessions
-- description: One row per WebSocket connection, refused handshakes included: the
--   charger identity, OCPP version, when it opened and closed, how long it lasted
--   (NULL when the recording has no close), frames each way, malformed and injected
--   frames, bytes, the handshake status, the close code and reason, who closed it,
--   and, for a replayed session, the connection it replays; source says where the
--   connection comes from ('proxy', 'mirror' for a leg to a secondary CSMS, 'import', ...).
-- param identity: only this charger (default: every charger)
-- param legs = charger: whose connections: charger (its own), mirror (ocproxy's legs to a secondary CSMS) or all
WITH counts AS (
    -- One pass over frames, derived columns only: no payload is parsed here.
    SELECT
        connection_id,
        count(*) AS frames,
        count(*) FILTER (WHERE direction = 'to_csms') AS frames_to_csms,
        count(*) FILTER (WHERE direction = 'to_charger') AS frames_to_charger,
        count(*) FILTER (WHERE parse_status <> 'ok') AS malformed_frames,
        count(*) FILTER (WHERE injected) AS injected_frames,
        sum(size)::BIGINT AS bytes,
        max(ts) AS last_frame_at
    FROM frames
    GROUP BY connection_id
)
SELECT
    c.identity,
    c.ocpp_version,
    c.opened_at,
    c.closed_at,
    round(epoch(c.closed_at - c.opened_at), 3) AS duration_s,
    coalesce(n.frames, 0) AS frames,
    coalesce(n.frames_to_csms, 0) AS frames_to_csms,
    coalesce(n.frames_to_charger, 0) AS frames_to_charger,
    coalesce(n.malformed_frames, 0) AS malformed_frames,
    coalesce(n.injected_frames, 0) AS injected_frames,
    coalesce(n.bytes, 0) AS bytes,
    n.last_frame_at,
    c.handshake_status,
    c.close_code,
    c.close_reason,
    c.closed_by,
    c.remote_addr,
    c.replay_of,
    c.connection_id,
    c.source,
    c.mirror_of
FROM connections AS c
LEFT JOIN counts AS n USING (connection_id)
WHERE ($identity IS NULL OR c.identity = $identity)
    AND ($legs = 'all' OR (c.mirror_of IS NULL) = ($legs = 'charger'))
ORDER BY c.opened_at, c.connection_id
