-- Bandwidth (the Network Monitor of seed 001): the agents that report it, and one row per
-- interface per report. SQLite has no declarative partitioning, so each UTC day's rows live in
-- a table of their own (bandwidth_stats_pYYYYMMDD, the columns of the PostgreSQL parent
-- table), created by store/bandwidth.py when the day's first report arrives and recorded in
-- bandwidth_partitions; retention drops whole day tables.
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
