-- Self-healing (see src/health.rs).
--
-- A hypervisor's health as the health monitor judged it: `up`, `suspected`
-- (no heartbeat within the deadline; nothing moves yet), `fencing` (its
-- volumes are being revoked and, where it has a power driver, it is being
-- powered off), `fenced` (fencing confirmed; its instances are re-created
-- elsewhere and it takes no work until an operator re-admits it). Storage
-- nodes stay `up`: their liveness is the heartbeat alone.
ALTER TABLE hosts ADD COLUMN health TEXT NOT NULL DEFAULT 'up';
ALTER TABLE hosts ADD COLUMN health_since BIGINT;
ALTER TABLE hosts ADD COLUMN health_reason TEXT;
-- When it was first found silent (kept through fencing, cleared when it is
-- up again): what the mass-failure guard counts.
ALTER TABLE hosts ADD COLUMN lost_at BIGINT;
-- The provisioner's machine behind the host, when it has one: fencing
-- powers it off through the provisioner's power driver.
ALTER TABLE hosts ADD COLUMN machine_id TEXT;

-- Crash restarts in place (Diego's policy): how often it crashed since it
-- last stayed up, and when the next restart is due.
ALTER TABLE instances ADD COLUMN crash_count BIGINT NOT NULL DEFAULT 0;
ALTER TABLE instances ADD COLUMN restart_at BIGINT;
-- When it was last seen running after a (re)start: a crash count is reset
-- once it stayed up long enough.
ALTER TABLE instances ADD COLUMN running_since BIGINT;
-- `allow` (default) or `never`: whether rebalancing and drains may move it
-- (a move restarts the VM). A failed host's instances move regardless.
ALTER TABLE instances ADD COLUMN relocation TEXT NOT NULL DEFAULT 'allow';
-- The monitor looks for crashed instances every second: without this, a
-- scan of every instance.
CREATE INDEX instances_crashed ON instances(status) WHERE status = 'crashed';
CREATE INDEX instances_crash_counted ON instances(running_since) WHERE crash_count > 0;

-- What happened to a host or an instance, newest last: every step of
-- detection, fencing, evacuation, restarts and moves.
CREATE TABLE events (
    id TEXT PRIMARY KEY,
    at BIGINT NOT NULL,
    subject_kind TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    -- The project of an instance's events, so tenants read their own.
    project_id TEXT,
    event TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX events_subject ON events(subject_id, at);

-- Cloud-wide switches of the health monitor: one row per name.
CREATE TABLE health_flags (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    since BIGINT NOT NULL,
    reason TEXT
);
