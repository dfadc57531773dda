-- Strato metadata store. One schema for SQLite and PostgreSQL: only portable
-- types (TEXT, BIGINT, DOUBLE PRECISION), ids are UUID strings, times are
-- Unix milliseconds, booleans are 0/1. Every integer is BIGINT so that the
-- same decoding works on both backends.

CREATE TABLE projects (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE users (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    admin BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE memberships (
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    PRIMARY KEY (user_id, project_id)
);

-- Only the SHA-256 of a token's secret is stored.
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    secret_hash TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT
);

-- Limits and the usage counted against them, kept in one row so that a
-- claim is one conditional UPDATE.
CREATE TABLE quotas (
    project_id TEXT PRIMARY KEY REFERENCES projects(id) ON DELETE CASCADE,
    max_instances BIGINT NOT NULL,
    max_vcpus BIGINT NOT NULL,
    max_ram_mib BIGINT NOT NULL,
    max_volumes BIGINT NOT NULL,
    max_volume_gib BIGINT NOT NULL,
    max_addresses BIGINT NOT NULL,
    used_instances BIGINT NOT NULL DEFAULT 0,
    used_vcpus BIGINT NOT NULL DEFAULT 0,
    used_ram_mib BIGINT NOT NULL DEFAULT 0,
    used_volumes BIGINT NOT NULL DEFAULT 0,
    used_volume_gib BIGINT NOT NULL DEFAULT 0,
    used_addresses BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE flavors (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    vcpus BIGINT NOT NULL,
    ram_mib BIGINT NOT NULL,
    disk_gib BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE images (
    id TEXT PRIMARY KEY,
    project_id TEXT REFERENCES projects(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    source TEXT NOT NULL,
    format TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    min_disk_gib BIGINT NOT NULL,
    visibility TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX images_project ON images(project_id);
-- Image names resolve unambiguously: unique among public images and within
-- each project's private images (a private image may shadow a public one).
CREATE UNIQUE INDEX images_public_name ON images(name) WHERE project_id IS NULL;
CREATE UNIQUE INDEX images_private_name ON images(project_id, name) WHERE project_id IS NOT NULL;

CREATE TABLE keypairs (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    public_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (project_id, name)
);

CREATE TABLE networks (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    vlan BIGINT,
    mtu BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (project_id, name)
);

-- pools/reserved/dns are JSON arrays. `generation` is bumped at the start of
-- every allocation so that PostgreSQL serializes allocations per subnet.
CREATE TABLE subnets (
    id TEXT PRIMARY KEY,
    network_id TEXT NOT NULL REFERENCES networks(id) ON DELETE CASCADE,
    project_id TEXT NOT NULL,
    name TEXT NOT NULL,
    cidr TEXT NOT NULL,
    gateway TEXT NOT NULL,
    pools TEXT NOT NULL,
    reserved TEXT NOT NULL,
    dns_servers TEXT NOT NULL,
    generation BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    UNIQUE (network_id, name)
);

CREATE TABLE addresses (
    subnet_id TEXT NOT NULL REFERENCES subnets(id) ON DELETE CASCADE,
    address TEXT NOT NULL,
    instance_id TEXT,
    nic_index BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (subnet_id, address)
);
CREATE INDEX addresses_instance ON addresses(instance_id);

CREATE TABLE anti_affinity_groups (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    generation BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    UNIQUE (project_id, name)
);

CREATE TABLE racks (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    location TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE enrollment_tokens (
    id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    rack_id TEXT REFERENCES racks(id) ON DELETE CASCADE,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    created_at BIGINT NOT NULL
);

-- cap_* are what the agent reports; alloc_* what the scheduler claimed.
CREATE TABLE hosts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    rack_id TEXT REFERENCES racks(id),
    agent_url TEXT NOT NULL,
    credential_hash TEXT NOT NULL,
    credential TEXT NOT NULL,
    initiator_iqn TEXT,
    iscsi_portal TEXT,
    admin_state TEXT NOT NULL,
    cap_vcpus BIGINT NOT NULL,
    cap_ram_mib BIGINT NOT NULL,
    cap_disk_gib BIGINT NOT NULL,
    cap_storage_total BIGINT NOT NULL,
    cap_storage_free BIGINT NOT NULL,
    alloc_vcpus BIGINT NOT NULL DEFAULT 0,
    alloc_ram_mib BIGINT NOT NULL DEFAULT 0,
    alloc_disk_gib BIGINT NOT NULL DEFAULT 0,
    alloc_storage BIGINT NOT NULL DEFAULT 0,
    alloc_instances BIGINT NOT NULL DEFAULT 0,
    alloc_volumes BIGINT NOT NULL DEFAULT 0,
    last_heartbeat_at BIGINT,
    created_at BIGINT NOT NULL
);

CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    flavor_id TEXT NOT NULL,
    -- No foreign key: deleted instances keep the id of the image they came
    -- from after it is gone; images.rs refuses to delete an image live
    -- instances use.
    image_id TEXT NOT NULL,
    keypair_id TEXT REFERENCES keypairs(id) ON DELETE SET NULL,
    group_id TEXT REFERENCES anti_affinity_groups(id),
    host_id TEXT REFERENCES hosts(id),
    vcpus BIGINT NOT NULL,
    ram_mib BIGINT NOT NULL,
    disk_gib BIGINT NOT NULL,
    user_data TEXT,
    desired TEXT NOT NULL,
    status TEXT NOT NULL,
    status_reason TEXT,
    generation BIGINT NOT NULL DEFAULT 1,
    applied_generation BIGINT NOT NULL DEFAULT 0,
    reboot_count BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    deleted_at BIGINT
);
CREATE INDEX instances_project ON instances(project_id);
CREATE INDEX instances_host ON instances(host_id);
CREATE INDEX instances_group ON instances(group_id);

CREATE TABLE volumes (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    size_gib BIGINT NOT NULL,
    source_image_id TEXT,
    source_snapshot_id TEXT,
    host_id TEXT REFERENCES hosts(id),
    status TEXT NOT NULL,
    status_reason TEXT,
    iqn TEXT NOT NULL,
    chap_user TEXT NOT NULL,
    chap_secret TEXT NOT NULL,
    generation BIGINT NOT NULL DEFAULT 1,
    applied_generation BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    deleted_at BIGINT
);
CREATE INDEX volumes_project ON volumes(project_id);
CREATE INDEX volumes_host ON volumes(host_id);

CREATE TABLE attachments (
    volume_id TEXT PRIMARY KEY REFERENCES volumes(id),
    instance_id TEXT NOT NULL REFERENCES instances(id),
    device_index BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (instance_id, device_index)
);

CREATE TABLE snapshots (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects(id),
    volume_id TEXT NOT NULL REFERENCES volumes(id),
    name TEXT NOT NULL,
    size_gib BIGINT NOT NULL,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    deleted_at BIGINT
);
CREATE INDEX snapshots_volume ON snapshots(volume_id);

-- Usage is metered exactly from spans of existence: a row opens when an
-- instance or volume is created and closes when it is deleted (or resized).
CREATE TABLE usage_spans (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    flavor_id TEXT,
    gib BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at BIGINT
);
CREATE INDEX usage_spans_open ON usage_spans(resource_id, ended_at);
CREATE INDEX usage_spans_time ON usage_spans(started_at);

CREATE TABLE audit_log (
    id TEXT PRIMARY KEY,
    at BIGINT NOT NULL,
    user_id TEXT,
    user_name TEXT,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    status BIGINT NOT NULL,
    result TEXT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log(at);

-- Names are unique among live resources of a project (deleted rows stay
-- for metering). Partial indexes work the same on SQLite and PostgreSQL.
CREATE UNIQUE INDEX instances_live_name ON instances(project_id, name) WHERE deleted_at IS NULL;
CREATE UNIQUE INDEX volumes_live_name ON volumes(project_id, name) WHERE deleted_at IS NULL;
