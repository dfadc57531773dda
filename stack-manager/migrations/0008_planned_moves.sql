-- The moves of queued rebalancing plans (see src/moves.rs), in the
-- database rather than in the memory of the replica that accepted the
-- plan: the mover runs on whichever replica holds its lease, and a restart
-- keeps what had not started yet.
CREATE TABLE planned_moves (
    plan_id TEXT NOT NULL,
    -- Its index in the plan: what `depends_on` refers to.
    seq BIGINT NOT NULL,
    instance_id TEXT NOT NULL,
    from_host TEXT NOT NULL,
    to_host TEXT NOT NULL,
    -- A JSON array of the seqs that must be done before it starts.
    depends_on TEXT NOT NULL,
    -- `queued`, `running`, `done` or `failed`.
    step TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (plan_id, seq)
);
CREATE INDEX planned_moves_open ON planned_moves(step, instance_id);
