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
    // 4: readings of any source (nodes, Modbus devices) in named series, decimal or float.
    // Needs `temp.node_channels` (see `node_channels`): node channel ids → (name, exponent), so
    // node series get exactly the names and exponents batches gave them until now.
    "
    CREATE TABLE series (
        id      INTEGER PRIMARY KEY,
        source  TEXT NOT NULL,              -- a node's uid, or a device's name
        channel TEXT NOT NULL,              -- the channel or point name, as batches carry it
        exp     INTEGER                     -- decimals: value = raw × 10^exp; NULL: floats
    );
    -- A series holds one kind of value; another kind (exponent, decimal/float) is another series.
    CREATE UNIQUE INDEX series_identity ON series (source, channel, ifnull(exp, 'float'));

    INSERT INTO series (source, channel, exp)
        SELECT n.uid, c.name, c.exp
        FROM (SELECT DISTINCT node_id, channel FROM readings) r
        JOIN nodes n ON n.id = r.node_id
        JOIN temp.node_channels c ON c.id = r.channel
        ORDER BY r.node_id, r.channel;

    -- One row per value, ids kept: the rowid is monotonic, the batcher reads forward from it.
    CREATE TABLE readings_v4 (
        id        INTEGER PRIMARY KEY,
        series_id INTEGER NOT NULL,         -- series(id); no FOREIGN KEY: a lookup per insert
        ts_ms     INTEGER NOT NULL,
        value,                              -- no type: INTEGER (decimal raw) or REAL (float) as
                                            -- bound; NULL: a float NaN
        -- A node reading's origin, NULL for devices: the node, its boot (which the store's
        -- per-boot invariants are stated over; nothing else records it), its channel id.
        node_id   INTEGER,
        boot_id   INTEGER,
        channel   INTEGER
    );
    INSERT INTO readings_v4 (id, series_id, ts_ms, value, node_id, boot_id, channel)
        SELECT r.id, s.id, r.ts_ms, r.value, r.node_id, r.boot_id, r.channel
        FROM readings r
        JOIN nodes n ON n.id = r.node_id
        JOIN temp.node_channels c ON c.id = r.channel
        JOIN series s ON s.source = n.uid AND s.channel = c.name AND s.exp IS c.exp
        ORDER BY r.id;
    DROP TABLE readings;
    ALTER TABLE readings_v4 RENAME TO readings;

    -- Device readings stored, for the status page (nodes count theirs in nodes.readings_received).
    INSERT INTO meta (key, value) VALUES ('readings.devices', '0');
    ",
    // 5: anomalies per node (frames no node can have sent), and no rows for uids never enrolled.
    // Until now a HELLO wrote its row before the key check; a row without a key is a uid the
    // gateway never accepted (the ENROLL was refused or never came), with nothing referring to it.
    "
    ALTER TABLE nodes ADD COLUMN ages_clamped INTEGER NOT NULL DEFAULT 0; -- age claims clamped
    ALTER TABLE nodes ADD COLUMN gaps_refused INTEGER NOT NULL DEFAULT 0; -- gap claims refused
    DELETE FROM nodes
        WHERE public_key IS NULL AND readings_received = 0
          AND id NOT IN (SELECT node_id FROM node_sessions)
          AND id NOT IN (SELECT node_id FROM health);
    ",
    // 6: readings stamped while the wall clock was not trusted (`outpost_core::clock`).
    // `readings.clock` is NULL where `ts_ms` is trusted wall time; otherwise it is the reading's
    // CLOCK_BOOTTIME ms, and `ts_ms` the untrusted clock's time for it. Such a reading with
    // `id > clock.final_upto` is held out of batches until the clock is trusted (then `ts_ms` is
    // rewritten from `clock` and `clock` cleared); one with `id <= clock.final_upto` is final (its
    // kernel boot ended, or it waited `clock.max_hold`) and is sealed marked unsynchronised.
    "
    ALTER TABLE readings ADD COLUMN clock INTEGER;
    ALTER TABLE batches ADD COLUMN unsynchronised INTEGER NOT NULL DEFAULT 0;
    INSERT INTO meta (key, value) VALUES ('clock.boot_id', ''),          -- kernel boot of the last run
                                         ('clock.boot_trusted', '0'),    -- it had the clock trusted
                                         ('clock.high_water_ms', '0'),   -- latest wall time trusted
                                         ('clock.final_upto', '0');      -- held readings made final
    ",
    // 7: readings the cloud has (their batch acknowledged) or will never get (their batch dropped
    // from a full outbox) are released for deletion: `readings.released_upto` is the newest such
    // reading id. Before this version nothing was deleted: every sealed reading not in a batch
    // still in the outbox is released now.
    "
    INSERT INTO meta (key, value) VALUES ('readings.released_upto',
        coalesce((SELECT min(first_reading_id) - 1 FROM batches),
                 (SELECT value FROM meta WHERE key = 'batches.last_reading_id'), '0'));
    ",
    // 8: authenticated node sessions (protocol version 2): per node, frames whose seal did not
    // verify or whose PROOF failed (someone spoke as the node without its key), and replays.
    "
    ALTER TABLE nodes ADD COLUMN auth_failed INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE nodes ADD COLUMN replayed INTEGER NOT NULL DEFAULT 0;
    ",
    // 9: the enrollment policy. `nodes.revoked_ms`: when the node was revoked (`outpost nodes
    // revoke`); it stays out for good. `enrollment_waiting`: nodes that proved a key but the
    // policy holds back (no window open, not in the manifest), bounded (`store::MAX_WAITING`).
    // `enrollment.window_until_ms`: the open window's end, Unix ms (0: none).
    "
    ALTER TABLE nodes ADD COLUMN revoked_ms INTEGER;
    CREATE TABLE enrollment_waiting (
        uid           TEXT PRIMARY KEY,
        port          TEXT NOT NULL,
        hw_rev        INTEGER NOT NULL,
        fw_version    TEXT NOT NULL,
        lot           TEXT NOT NULL,
        public_key    BLOB NOT NULL,
        reason        TEXT NOT NULL,
        first_seen_ms INTEGER NOT NULL,
        last_seen_ms  INTEGER NOT NULL,
        attempts      INTEGER NOT NULL DEFAULT 1
    );
    INSERT INTO meta (key, value) VALUES ('enrollment.window_until_ms', '0');
    ",
    // 10: the audit log of remote commands (`outpost_core::command`, `store::audit`). Every
    // command that reached the gateway, obeyed or not. `nonce` is set only for a command whose
    // signature verified, and is unique: a second one with the same nonce is a replay.
    "
    CREATE TABLE command_audit (
        id          INTEGER PRIMARY KEY,
        received_ms INTEGER NOT NULL,
        verb        TEXT NOT NULL,
        request     TEXT,
        key_id      TEXT,
        nonce       TEXT UNIQUE,
        expires_s   INTEGER,
        outcome     TEXT NOT NULL,
        detail      TEXT NOT NULL,
        finished_ms INTEGER
    );
    ",
    // 11: node firmware rollouts (`outpost_core::rollout`, `store::ota`). `rollouts` and
    // `rollout_nodes` are the rollout core's rows, written at every stage and phase change (never
    // per chunk), from which a restarted gateway carries on. `ota_events`: what was published on
    // `outpost/{id}/ota`, newest 10,000 kept. `node_firmware`: every firmware transition of every
    // node, kept for the node's life (RMA traceability).
    "
    CREATE TABLE rollouts (
        id                   INTEGER PRIMARY KEY,
        artifact_sha256      TEXT NOT NULL,
        artifact_version     TEXT NOT NULL,
        mode                 TEXT NOT NULL,              -- staged | targeted
        canary               INTEGER NOT NULL,
        waves                TEXT NOT NULL,              -- 25%,100% (empty when targeted)
        soak_ms              INTEGER NOT NULL,
        confirm_within_ms    INTEGER NOT NULL,
        offline_threshold_ms INTEGER NOT NULL,
        max_per_port         INTEGER NOT NULL,
        started_by           TEXT NOT NULL,
        state                TEXT NOT NULL,
        stage                TEXT,
        halt_reason          TEXT,
        rollback             INTEGER NOT NULL,
        started_ms           INTEGER NOT NULL,
        updated_ms           INTEGER NOT NULL
    );
    CREATE TABLE rollout_nodes (
        rollout           INTEGER NOT NULL REFERENCES rollouts(id),
        uid               TEXT NOT NULL,
        position          INTEGER NOT NULL,
        port              TEXT NOT NULL,
        stage             TEXT,
        phase             TEXT NOT NULL,
        from_version      TEXT NOT NULL,
        to_version        TEXT NOT NULL,
        rollback_sha256   TEXT,
        rollback_version  TEXT,
        attempts          INTEGER NOT NULL,
        transfer_failures INTEGER NOT NULL,
        boot_id           INTEGER,
        last_reset        INTEGER,                       -- HEALTH reset_reason code
        revert_cause      TEXT,
        detail            TEXT,
        updated_ms        INTEGER NOT NULL,
        PRIMARY KEY (rollout, uid)
    );
    CREATE TABLE ota_events (
        id      INTEGER PRIMARY KEY,
        rollout INTEGER NOT NULL,
        at_ms   INTEGER NOT NULL,
        json    TEXT NOT NULL
    );
    CREATE TABLE node_firmware (
        id           INTEGER PRIMARY KEY,
        uid          TEXT NOT NULL,
        at_ms        INTEGER NOT NULL,
        from_version TEXT NOT NULL,
        to_version   TEXT NOT NULL,
        outcome      TEXT NOT NULL,                      -- confirmed | reverted (cause) | finalized
        rollout      INTEGER
    );
    CREATE INDEX node_firmware_uid ON node_firmware (uid, id);
    ",
    // 12: every boot of every node, with why it reset and what it ran (RMA traceability, and
    // the fleet-health rules' input: resets per firmware cohort, per lot, per hour).
    "
    CREATE TABLE node_resets (
        id         INTEGER PRIMARY KEY,
        uid        TEXT NOT NULL,
        boot_id    INTEGER NOT NULL,
        at_ms      INTEGER NOT NULL,                 -- when the gateway heard of it (first HEALTH)
        reason     TEXT NOT NULL,                    -- ResetReason::as_str: watchdog, hard_fault, …
        expected   INTEGER NOT NULL,                 -- 1: asked for (power_on, software, ota_apply…)
        fw_version TEXT NOT NULL,                    -- the firmware that booted
        lot        TEXT NOT NULL,
        UNIQUE (uid, boot_id)
    );
    CREATE INDEX node_resets_at ON node_resets (at_ms);
    ",
];

/// Fills `temp.node_channels`, which migration 4 reads: every node channel id with the name and
/// exponent its readings have in batches ([`super::series`]).
pub(super) fn node_channels(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS node_channels (
             id   INTEGER PRIMARY KEY,
             name TEXT NOT NULL,
             exp  INTEGER NOT NULL
         );
         DELETE FROM temp.node_channels;",
    )?;
    let mut insert =
        conn.prepare("INSERT INTO temp.node_channels (id, name, exp) VALUES (?1, ?2, ?3)")?;
    for id in 0..=u8::MAX {
        insert.execute(rusqlite::params![
            id,
            super::series::node_channel_name(id),
            super::series::node_channel_exp(id)
        ])?;
    }
    Ok(())
}
