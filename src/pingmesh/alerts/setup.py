"""Rules and notifiers from the configuration (the only place that reads ``AlertsConfig``)."""

from __future__ import annotations

from pingmesh.alerts.notifiers import Notifier, SmtpNotifier, WebhookNotifier
from pingmesh.alerts.rules import AlertRule, incident_rule, pingmesh_rule, smartping_rule
from pingmesh.analysis.jobs import window_name
from pingmesh.config import AlertRuleConfig, AlertsConfig, AnalysisConfig
from pingmesh.errors import ConfigError


def rule_from_config(rule: AlertRuleConfig, *, default_window: str) -> AlertRule:
    """An :class:`AlertRule` from its config section; ConfigError names the rule at fault."""
    try:
        return AlertRule(
            rule_id=rule.id,
            name=rule.name,
            scope=rule.scope,
            level=rule.level,
            entity=rule.entity,
            window=rule.window or default_window,
            percentile=rule.percentile,
            latency_us=rule.latency_us,
            loss_ratio=rule.loss_ratio,
            drop_rate=rule.drop_rate,
            min_probes=rule.min_probes,
            n=rule.n,
            m=rule.m,
            incident_kinds=rule.incident_kinds,
            severity=rule.severity,
            origin="config",
        )
    except ValueError as exc:
        raise ConfigError(f"field server.alerts.rules[{rule.id}]: {exc}") from exc


def default_rules(analysis: AnalysisConfig) -> list[AlertRule]:
    """The presets: SmartPing's on server links (fast windows), Pingmesh's on ToR links
    (10-minute windows, PM §4.3), and one rule for every incident the analysis opens."""
    fast = window_name(analysis.fast_window_s)
    ten = window_name(analysis.ten_minute_window_s)
    return [
        smartping_rule(window=fast, every_s=analysis.fast_every_s, level="server"),
        pingmesh_rule(window=ten, level="tor"),
        incident_rule(),
    ]


def rules_from_config(config: AlertsConfig, analysis: AnalysisConfig) -> list[AlertRule]:
    """Every configured rule, after the presets (unless ``default_rules`` is false)."""
    ten = window_name(analysis.ten_minute_window_s)
    rules = default_rules(analysis) if config.default_rules else []
    configured = [rule_from_config(r, default_window=ten) for r in config.rules]
    ids = {r.rule_id for r in configured}
    rules = [r for r in rules if r.rule_id not in ids]  # a config rule replaces a preset
    return rules + configured


def notifiers_from_config(config: AlertsConfig) -> list[Notifier]:
    """One notifier per configured SMTP server and webhook; names must be unique."""
    notifiers: list[Notifier] = [SmtpNotifier(c) for c in config.smtp]
    notifiers += [WebhookNotifier(c) for c in config.webhooks]
    names = [n.name for n in notifiers]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"field server.alerts: two notifiers are named {name!r}")
    return notifiers
