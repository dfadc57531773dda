-- Planned moves of instances between healthy hosts: drains and rebalancing
-- (see src/moves.rs). While `move_target` is set the instance holds claims
-- on both hosts, its source is told to stop it (the pushed spec says
-- `stopped` whatever `desired` says), and nothing runs it on the target yet.
-- The move commits (host_id = move_target) once the source confirmed the
-- stop, or aborts (move_target cleared, the source runs it again).
ALTER TABLE instances ADD COLUMN move_target TEXT;
-- When the move started (ms): a source that does not confirm the stop
-- within `moves.stop_timeout_secs` aborts it.
ALTER TABLE instances ADD COLUMN move_started_at BIGINT;
-- Why it moves (`drain` or `rebalance`), for its events.
ALTER TABLE instances ADD COLUMN move_reason TEXT;
CREATE INDEX instances_moving ON instances(move_target);
