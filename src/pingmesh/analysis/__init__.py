"""Windowed analysis jobs over the raw store; results go to the results database."""
