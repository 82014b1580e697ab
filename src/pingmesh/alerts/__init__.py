"""Alerting: rules over the analysis' windows and incidents, alerts, notifiers."""
