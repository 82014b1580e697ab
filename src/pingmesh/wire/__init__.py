"""Pydantic models of everything that crosses a process boundary (schema version 1)."""

SCHEMA_VERSION = 1
