-- Several stack-manager replicas on one PostgreSQL (see src/lease.rs).
--
-- Each running replica: a row per process start (a restarted replica is a
-- new one), its heartbeat renewed with its leases. What `strato system
-- replicas` lists.
CREATE TABLE replicas (
    id TEXT PRIMARY KEY,
    -- hostname:pid, for operators.
    name TEXT NOT NULL,
    public_url TEXT NOT NULL,
    internal_url TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    -- Set when it stopped cleanly (its leases released).
    stopped_at BIGINT
);

-- Background work that must run on one replica at a time (the health
-- monitor, the mover, planner statistics). `token` grows by one at every
-- change of holder: a write of the task checks, in its own transaction,
-- that the row still names its holder and token, so a replica that was
-- paused past `expires_at` and lost the lease cannot act on stale authority
-- when it wakes. Times are milliseconds of the database's clock on
-- PostgreSQL (replicas' clocks may disagree), of the one replica's on
-- SQLite.
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    token BIGINT NOT NULL,
    acquired_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
