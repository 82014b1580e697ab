-- Bandwidth (the Network Monitor of seed 001): the agents that report it, and one row per
-- interface per report. bandwidth_stats is partitioned by UTC day (days since 1970-01-01) so
-- that retention drops whole partitions; store/bandwidth.py creates each day's partition when
-- the first report of that day arrives and records it in bandwidth_partitions.
CREATE TABLE bandwidth_clients (
    agent TEXT PRIMARY KEY,
    alias TEXT NOT NULL,
    first_seen_s DOUBLE PRECISION NOT NULL,
    last_seen_s DOUBLE PRECISION NOT NULL
);
CREATE TABLE bandwidth_partitions (
    day INTEGER PRIMARY KEY,
    table_name TEXT NOT NULL,
    created_at_s DOUBLE PRECISION NOT NULL
);
CREATE TABLE bandwidth_stats (
    day INTEGER NOT NULL,
    agent TEXT NOT NULL,
    report_id TEXT NOT NULL,
    interface TEXT NOT NULL,
    start_s DOUBLE PRECISION NOT NULL,
    end_s DOUBLE PRECISION NOT NULL,
    interval_s DOUBLE PRECISION NOT NULL,
    rx_bytes BIGINT NOT NULL,
    tx_bytes BIGINT NOT NULL,
    rx_packets BIGINT NOT NULL,
    tx_packets BIGINT NOT NULL,
    rx_peak_bytes_per_s DOUBLE PRECISION NOT NULL,
    tx_peak_bytes_per_s DOUBLE PRECISION NOT NULL,
    received_at_s DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (day, agent, report_id, interface)
) PARTITION BY RANGE (day);
CREATE INDEX bandwidth_stats_series ON bandwidth_stats (agent, interface, end_s);
