"""FastAPI's TestClient, imported without Starlette's httpx deprecation warning.

Starlette 1.x warns on import that its test client prefers the ``httpx2`` package; pingmesh
depends on ``httpx``, and pytest turns warnings into errors. The filter is this narrow on
purpose: any other warning still fails the tests.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette\.testclient`")
    from fastapi.testclient import TestClient

__all__ = ["TestClient"]
