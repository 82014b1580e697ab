-- Incidents: detected problems, opened, updated and closed by the analysis jobs.
CREATE TABLE incidents (
    incident_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    scope TEXT NOT NULL,
    entity TEXT NOT NULL,
    severity TEXT NOT NULL,
    summary TEXT NOT NULL,
    started_at_s DOUBLE PRECISION NOT NULL,
    updated_at_s DOUBLE PRECISION NOT NULL,
    ended_at_s DOUBLE PRECISION,
    evidence TEXT NOT NULL
);
CREATE INDEX incidents_open ON incidents (kind, scope, entity, ended_at_s);
CREATE INDEX incidents_time ON incidents (started_at_s);
