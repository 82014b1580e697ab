"""Probers: one module per probe kind; each returns a ProbeResult and never raises."""
