//! Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
//! Never edit a released migration: append a new one.

pub(super) const MIGRATIONS: &[&str] = &[
    // 1: node registry, per-boot sessions, readings, health history.
    "
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE nodes (
        id                  INTEGER PRIMARY KEY,
        uid                 TEXT NOT NULL UNIQUE,       -- 16 hex digits, the RP2040 flash id
        hw_rev              INTEGER NOT NULL,
        fw_version          TEXT NOT NULL,
        lot                 TEXT NOT NULL,
        channels            TEXT NOT NULL,              -- comma-separated channel ids
        public_key          BLOB,                       -- Ed25519, pinned at first enrolment
        port                TEXT,
        boot_id             INTEGER,
        first_seen_ms       INTEGER NOT NULL,
        last_seen_ms        INTEGER NOT NULL,
        uptime_s            INTEGER,
        reset_reason        TEXT,
        readings_received   INTEGER NOT NULL DEFAULT 0,
        samples_lost        INTEGER NOT NULL DEFAULT 0, -- gaps the node reported (its ring overflowed)
        gateway_rx_errors   INTEGER NOT NULL DEFAULT 0, -- frames from this node the gateway dropped
        node_rx_errors      INTEGER NOT NULL DEFAULT 0  -- frames to this node the node dropped
    );

    -- The last committed sample of each boot of each node: the deduplication point.
    CREATE TABLE node_sessions (
        node_id  INTEGER NOT NULL REFERENCES nodes(id),
        boot_id  INTEGER NOT NULL,
        last_seq INTEGER NOT NULL,
        PRIMARY KEY (node_id, boot_id)
    ) WITHOUT ROWID;

    -- One row per channel value. The rowid is monotonic: the batcher reads forward from it.
    CREATE TABLE readings (
        id      INTEGER PRIMARY KEY,
        node_id INTEGER NOT NULL,
        boot_id INTEGER NOT NULL,
        seq     INTEGER NOT NULL,
        channel INTEGER NOT NULL,
        ts_ms   INTEGER NOT NULL,
        value   INTEGER NOT NULL
    );

    CREATE TABLE health (
        id              INTEGER PRIMARY KEY,
        node_id         INTEGER NOT NULL REFERENCES nodes(id),
        ts_ms           INTEGER NOT NULL,
        uptime_s        INTEGER NOT NULL,
        reset_reason    TEXT NOT NULL,
        fw_version      TEXT NOT NULL,
        stack_free_min  INTEGER NOT NULL,
        rx_frames       INTEGER NOT NULL,
        rx_errors       INTEGER NOT NULL,
        tx_frames       INTEGER NOT NULL,
        retransmits     INTEGER NOT NULL,
        dropped_samples INTEGER NOT NULL,
        chip_temp_centi INTEGER NOT NULL
    );
    CREATE INDEX health_by_node ON health (node_id, ts_ms);
    ",
    // 2: the outbox of sealed batches waiting for the cloud's acknowledgement.
    "
    CREATE TABLE batches (
        seq               INTEGER PRIMARY KEY AUTOINCREMENT, -- never reused, even after deletion
        first_reading_id  INTEGER NOT NULL,
        last_reading_id   INTEGER NOT NULL,
        first_ts_ms       INTEGER NOT NULL,
        last_ts_ms        INTEGER NOT NULL,
        reading_count     INTEGER NOT NULL,
        dictionary_id     INTEGER NOT NULL,
        sealed_ms         INTEGER NOT NULL,
        size_bytes        INTEGER NOT NULL,
        bytes             BLOB NOT NULL                      -- exactly what is sent, every time
    );
    INSERT INTO meta (key, value) VALUES ('batches.last_reading_id', '0'),
                                         ('batches.acked_upto', '0'),
                                         ('batches.dropped', '0'),
                                         ('batches.dropped_readings', '0');
    ",
    // 3: uplink traffic per UTC day, for the data budget.
    "
    CREATE TABLE uplink_usage (
        day       TEXT PRIMARY KEY,        -- YYYY-MM-DD, UTC
        sent      INTEGER NOT NULL,        -- bytes on the uplink socket, TLS and MQTT included
        received  INTEGER NOT NULL,
        readings  INTEGER NOT NULL         -- readings the cloud acknowledged
    ) WITHOUT ROWID;
    ",
];
