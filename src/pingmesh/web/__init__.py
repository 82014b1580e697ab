"""The JSON API and the dashboard."""
