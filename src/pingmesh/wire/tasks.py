"""Work the server asks of an agent beyond its pinglist, and what comes back.

A *task* is a one-off measurement that the analysis requests centrally (rate-limited there):
today a TCP traceroute that keeps the 5-tuple of a failing probe, so that the path it shows is
the path the failing probe took through the ECMP fabric (PM §5.2, 007, R-Pingmesh; reference
§6.1 item 13e). Agents poll ``GET /api/v1/tasks/{server}`` and post results to
``POST /api/v1/traceroutes``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from pingmesh.wire import SCHEMA_VERSION

MAX_HOPS = 32


class TracerouteTask(BaseModel):
    """Trace the path towards ``dst_addr:dst_port`` from source port ``src_port``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["tcp_traceroute"] = "tcp_traceroute"
    task_id: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,80}$")
    dst: str = Field(min_length=1, max_length=128)
    dst_addr: str
    dst_port: int = Field(ge=1, le=65535)
    src_port: int | None = Field(
        default=None, ge=1, le=65535, description="keep this source port (None: any)"
    )
    max_hops: int = Field(default=16, ge=1, le=MAX_HOPS)
    reason: str = Field(default="", max_length=200)


class TaskList(BaseModel):
    """The tasks waiting for one agent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = SCHEMA_VERSION
    server: str
    tasks: tuple[TracerouteTask, ...] = ()


class Hop(BaseModel):
    """One TTL step: who answered (None: nobody within the timeout) and how fast."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ttl: int = Field(ge=1, le=MAX_HOPS)
    address: str | None = None
    rtt_us: float | None = Field(default=None, ge=0)


class TracerouteResult(BaseModel):
    """The path a 5-tuple took, hop by hop."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task_id: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,80}$")
    agent: str = Field(min_length=1, max_length=128)
    time: AwareDatetime
    src_addr: str
    src_port: int = Field(ge=0, le=65535)
    dst: str = Field(min_length=1, max_length=128)
    dst_addr: str
    dst_port: int = Field(ge=1, le=65535)
    hops: tuple[Hop, ...] = Field(default=(), max_length=MAX_HOPS)
    reached: bool = False
    detail: str = Field(default="", max_length=200)


class TracerouteBatch(BaseModel):
    """What an agent posts to ``/api/v1/traceroutes``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = SCHEMA_VERSION
    agent: str = Field(min_length=1, max_length=128)
    results: tuple[TracerouteResult, ...] = Field(max_length=100)
