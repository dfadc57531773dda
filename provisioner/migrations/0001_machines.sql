CREATE TABLE machines (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    mac TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    rack TEXT,
    state TEXT NOT NULL,
    state_reason TEXT,
    deadline_ms INTEGER,
    address TEXT,
    switch_port TEXT,
    arch TEXT,
    power TEXT NOT NULL,
    inventory TEXT,
    image TEXT,
    rescue_from TEXT,
    bootenv_secret TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);

CREATE TABLE machine_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    machine_id TEXT NOT NULL REFERENCES machines(id) ON DELETE CASCADE,
    at_ms INTEGER NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    message TEXT NOT NULL
);

CREATE INDEX machine_events_by_machine ON machine_events (machine_id, id);
