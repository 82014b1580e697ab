-- Analysis (issue 4): SLA coverage, traceroute tasks and the paths agents report.
-- Histograms of the rollups are not here: they are bulk (cells x buckets per window) and live
-- as Parquet files beside the raw store (pingmesh.store.rollups), dropped a day at a time.
ALTER TABLE sla ADD COLUMN pairs_expected BIGINT;
ALTER TABLE sla ADD COLUMN coverage DOUBLE PRECISION;
CREATE TABLE traceroute_tasks (
    task_id TEXT PRIMARY KEY,
    server TEXT NOT NULL,
    dst TEXT NOT NULL,
    dst_addr TEXT NOT NULL,
    dst_port INTEGER NOT NULL,
    src_port INTEGER,
    max_hops INTEGER NOT NULL,
    reason TEXT NOT NULL,
    created_at_s DOUBLE PRECISION NOT NULL,
    issued_at_s DOUBLE PRECISION,
    expires_at_s DOUBLE PRECISION NOT NULL,
    done_at_s DOUBLE PRECISION
);
CREATE INDEX traceroute_tasks_server ON traceroute_tasks (server, done_at_s);
CREATE INDEX traceroute_tasks_created ON traceroute_tasks (created_at_s);
CREATE TABLE traceroutes (
    task_id TEXT NOT NULL,
    agent TEXT NOT NULL,
    time_s DOUBLE PRECISION NOT NULL,
    src_addr TEXT NOT NULL,
    src_port INTEGER NOT NULL,
    dst TEXT NOT NULL,
    dst_addr TEXT NOT NULL,
    dst_port INTEGER NOT NULL,
    reached INTEGER NOT NULL,
    hops TEXT NOT NULL,
    detail TEXT NOT NULL,
    received_at_s DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (task_id, agent)
);
CREATE INDEX traceroutes_time ON traceroutes (time_s);
