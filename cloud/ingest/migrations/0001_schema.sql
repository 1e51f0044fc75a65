-- Outpost ingest schema, version 1. See docs/cloud.md "The schema".

-- One row per gateway: its acknowledgement point (every batch up to it committed), shared by
-- every replica; a replica takes this row's lock to move it.
CREATE TABLE gateways (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,
    acked_upto bigint NOT NULL DEFAULT 0 CHECK (acked_upto >= 0),
    newest_seq bigint NOT NULL DEFAULT 0,
    first_seen timestamptz NOT NULL DEFAULT now(),
    last_batch_at timestamptz,
    newest_reading_at timestamptz
);

-- One row per (gateway, source, channel, kind): readings refer to it by id.
CREATE TABLE series (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    gateway_id integer NOT NULL REFERENCES gateways (id),
    source text NOT NULL,
    channel text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('decimal', 'float')),
    -- A decimal's exponent (value = raw × 10^exp); 0 for floats.
    exp smallint NOT NULL DEFAULT 0,
    UNIQUE (gateway_id, source, channel, kind, exp)
);

-- One row per stored batch, written in the transaction that stores its readings: a batch
-- delivered again finds its row and is not stored twice.
CREATE TABLE batches (
    gateway_id integer NOT NULL REFERENCES gateways (id),
    seq bigint NOT NULL CHECK (seq > 0),
    received_at timestamptz NOT NULL DEFAULT now(),
    first_ts timestamptz NOT NULL,
    last_ts timestamptz NOT NULL,
    readings integer NOT NULL,
    bytes integer NOT NULL,
    unsynchronised boolean NOT NULL,
    dictionary_id bigint,
    replica text NOT NULL,
    PRIMARY KEY (gateway_id, seq)
);

-- The readings, partitioned by UTC day (readings_YYYYMMDD, made as batches need them);
-- readings of days outside the kept window go to readings_default.
CREATE TABLE readings (
    series_id integer NOT NULL,
    ts timestamptz NOT NULL,
    -- The value as a double (a decimal's nearest one).
    value double precision NOT NULL,
    -- A decimal's exact integer; NULL for a float series.
    raw bigint
) PARTITION BY RANGE (ts);
CREATE TABLE readings_default PARTITION OF readings DEFAULT;
CREATE INDEX readings_series_ts ON readings (series_id, ts);

-- Batches that failed their checks: kept byte for byte, never acknowledged.
CREATE TABLE dead_letters (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    digest bytea NOT NULL UNIQUE,
    -- The topic's gateway, and the sequence number the header claims (unverified).
    gateway text NOT NULL,
    seq bigint,
    reason text NOT NULL,
    bytes bytea NOT NULL,
    replica text NOT NULL,
    first_seen timestamptz NOT NULL DEFAULT now(),
    last_seen timestamptz NOT NULL DEFAULT now(),
    times_seen integer NOT NULL DEFAULT 1
);

-- Batches an operator declared lost (`outpost-ingest skip`), so the acknowledgement may pass them.
CREATE TABLE skipped (
    gateway_id integer NOT NULL REFERENCES gateways (id),
    from_seq bigint NOT NULL,
    upto_seq bigint NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    reason text NOT NULL
);

-- The readings with their names, for people and dashboards.
CREATE VIEW readings_named AS
SELECT g.name AS gateway, s.source, s.channel, r.ts, r.value, r.raw, s.kind, s.exp
FROM readings r
JOIN series s ON s.id = r.series_id
JOIN gateways g ON g.id = s.gateway_id;
