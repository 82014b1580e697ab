-- Alerts: what the alert engine fired and resolved, what it told whom, and what is muted.
CREATE TABLE alerts (
    alert_id TEXT PRIMARY KEY,
    rule_id TEXT NOT NULL,
    rule_name TEXT NOT NULL,
    kind TEXT NOT NULL,
    severity TEXT NOT NULL,
    scope TEXT NOT NULL,
    subject TEXT NOT NULL,
    summary TEXT NOT NULL,
    state TEXT NOT NULL,
    started_at_s DOUBLE PRECISION NOT NULL,
    updated_at_s DOUBLE PRECISION NOT NULL,
    resolved_at_s DOUBLE PRECISION,
    window_start BIGINT,
    "value" DOUBLE PRECISION,
    threshold DOUBLE PRECISION,
    incident_id TEXT,
    acked_at_s DOUBLE PRECISION,
    acked_by TEXT,
    ack_note TEXT,
    evidence TEXT NOT NULL,
    trace_task_id TEXT,
    trace TEXT
);
CREATE INDEX alerts_state ON alerts (state, rule_id, subject);
CREATE INDEX alerts_started ON alerts (started_at_s);
CREATE TABLE alert_notifications (
    alert_id TEXT NOT NULL,
    event TEXT NOT NULL,
    notifier TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    created_at_s DOUBLE PRECISION NOT NULL,
    not_before_s DOUBLE PRECISION NOT NULL,
    next_attempt_s DOUBLE PRECISION NOT NULL,
    sent_at_s DOUBLE PRECISION,
    last_error TEXT,
    PRIMARY KEY (alert_id, event, notifier)
);
CREATE INDEX alert_notifications_due ON alert_notifications (state, next_attempt_s);
CREATE TABLE alert_mutes (
    mute_id TEXT PRIMARY KEY,
    rule_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    until_s DOUBLE PRECISION NOT NULL,
    created_at_s DOUBLE PRECISION NOT NULL,
    created_by TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE alert_rules (
    rule_id TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    created_at_s DOUBLE PRECISION NOT NULL
);
