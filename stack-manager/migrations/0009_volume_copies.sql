-- Replicated volumes (see storage-agent/src/replication.rs). A volume's
-- primary copy stays `volumes.host_id`, the node initiators use; its other
-- copies are rows here. `replication_epoch` grows at every change of
-- primary or of a copy's state: storage agents refuse a primary of an
-- older epoch, which is how a deposed one is fenced.
ALTER TABLE volumes ADD COLUMN replicas BIGINT NOT NULL DEFAULT 1;
ALTER TABLE volumes ADD COLUMN replication_epoch BIGINT NOT NULL DEFAULT 0;
ALTER TABLE volumes ADD COLUMN replication_key TEXT;
-- Storage nodes: `address:port` of the replication listener.
ALTER TABLE hosts ADD COLUMN replication_address TEXT;

CREATE TABLE volume_copies (
    volume_id TEXT NOT NULL REFERENCES volumes(id),
    host_id TEXT NOT NULL REFERENCES hosts(id),
    -- `in_sync` (no write is acknowledged without it) or `out_of_sync`
    -- (writes go on without it; the primary resyncs it when it is back).
    state TEXT NOT NULL,
    -- The volume generation this copy's node last applied.
    applied_generation BIGINT NOT NULL DEFAULT 0,
    -- Bytes of regions the primary still has to resend it (its last report).
    behind_bytes BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (volume_id, host_id)
);
CREATE INDEX volume_copies_host ON volume_copies(host_id);
