"""The agent: probes its peers, answers their probes, uploads results; runs on every server."""
