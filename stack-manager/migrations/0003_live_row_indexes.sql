-- The per-host and per-group queries (reconcilers, desired state, the
-- anti-affinity footprint) all ask for live rows: `host_id = $1 AND
-- deleted_at IS NULL`. Without statistics (a new database, or a table that
-- grew faster than autovacuum analyzes it) PostgreSQL answered that by
-- ANDing `instances_host` with a full scan of the partial index
-- `instances_live_name`, i.e. it read every live instance for every host it
-- reconciled. An index over exactly those rows makes the cheap plan the
-- obvious one, with or without statistics.
CREATE INDEX instances_host_live ON instances(host_id) WHERE deleted_at IS NULL;
CREATE INDEX instances_group_live ON instances(group_id) WHERE deleted_at IS NULL;
CREATE INDEX volumes_host_live ON volumes(host_id) WHERE deleted_at IS NULL;
