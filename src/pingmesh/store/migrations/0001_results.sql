-- Agents the server has heard from, analysed windows, per-entity SLAs, src x dst matrices.
CREATE TABLE agents (
    name TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    first_seen_s DOUBLE PRECISION NOT NULL,
    last_seen_s DOUBLE PRECISION NOT NULL,
    last_fetch_s DOUBLE PRECISION,
    last_upload_s DOUBLE PRECISION,
    pinglist_version TEXT
);
CREATE TABLE windows (
    "window" TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    window_end BIGINT NOT NULL,
    records BIGINT NOT NULL,
    computed_at_s DOUBLE PRECISION NOT NULL,
    PRIMARY KEY ("window", window_start)
);
CREATE TABLE sla (
    "window" TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    scope TEXT NOT NULL,
    entity TEXT NOT NULL,
    probes BIGINT NOT NULL,
    successes BIGINT NOT NULL,
    failures BIGINT NOT NULL,
    retransmitted BIGINT NOT NULL,
    p50_us DOUBLE PRECISION, p90_us DOUBLE PRECISION,
    p99_us DOUBLE PRECISION, p999_us DOUBLE PRECISION,
    drop_rate DOUBLE PRECISION,
    PRIMARY KEY ("window", window_start, scope, entity)
);
CREATE TABLE matrix (
    "window" TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    level TEXT NOT NULL,
    src TEXT NOT NULL,
    dst TEXT NOT NULL,
    probes BIGINT NOT NULL,
    successes BIGINT NOT NULL,
    failures BIGINT NOT NULL,
    retransmitted BIGINT NOT NULL,
    p50_us DOUBLE PRECISION, p90_us DOUBLE PRECISION,
    p99_us DOUBLE PRECISION, p999_us DOUBLE PRECISION,
    drop_rate DOUBLE PRECISION,
    PRIMARY KEY ("window", window_start, level, src, dst)
);
