"""The lab's state file: what ``pingmesh lab up`` made, so that later commands find it.

One JSON file per lab prefix (``/run/pingmesh-lab/{prefix}.json`` by default: ``/run`` is
cleared at boot, exactly when the namespaces disappear too). It records the shape, the
processes (pid and start time, see :mod:`pingmesh.lab.processes`) and the faults in force.
Every command that changes the lab holds an exclusive ``flock`` on ``{prefix}.lock`` while it
reads, changes and writes the state, and the file is replaced atomically, so two ``pingmesh lab
fault`` commands at once cannot lose each other's fault. The file is a convenience, never the
only record: ``pingmesh lab down`` also sweeps by prefix.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pingmesh.errors import LabError
from pingmesh.lab.faults import ActiveFault, fault_from_dict, fault_to_dict
from pingmesh.lab.processes import ProcessRecord

STATE_SCHEMA_VERSION = 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProcessModel(_Model):
    """A :class:`~pingmesh.lab.processes.ProcessRecord` in the file."""

    pid: int = Field(gt=0)
    start_ticks: int = Field(ge=0)
    namespace: str
    argv: list[str]
    log: str

    @classmethod
    def of(cls, record: ProcessRecord) -> ProcessModel:
        """From a record."""
        return cls(
            pid=record.pid,
            start_ticks=record.start_ticks,
            namespace=record.namespace,
            argv=list(record.argv),
            log=record.log,
        )

    def record(self) -> ProcessRecord:
        """To a record."""
        return ProcessRecord(
            pid=self.pid,
            start_ticks=self.start_ticks,
            namespace=self.namespace,
            argv=tuple(self.argv),
            log=self.log,
        )


class FaultModel(_Model):
    """An :class:`~pingmesh.lab.faults.ActiveFault` in the file."""

    fault_id: str
    started_at_s: float
    fault: dict[str, Any]

    @classmethod
    def of(cls, active: ActiveFault) -> FaultModel:
        """From an active fault."""
        return cls(
            fault_id=active.fault_id,
            started_at_s=active.started_at_s,
            fault=fault_to_dict(active.fault),
        )

    def active(self) -> ActiveFault:
        """To an active fault."""
        return ActiveFault(
            fault_id=self.fault_id,
            started_at_s=self.started_at_s,
            fault=fault_from_dict(self.fault),
        )


class LabStateModel(_Model):
    """Everything a lab command needs to know about a lab that is up."""

    schema_version: int = STATE_SCHEMA_VERSION
    prefix: str
    mgmt_net: str
    shape: dict[str, int]
    data_dir: str
    port: int
    python: str
    created_at_s: float
    ready: bool = False  # False while `lab up` is still building
    server: ProcessModel | None = None
    agents: dict[str, ProcessModel] = Field(default_factory=dict)
    helpers: dict[str, ProcessModel] = Field(default_factory=dict)  # fault id → helper
    faults: list[FaultModel] = Field(default_factory=list)
    next_fault: int = 1

    def active_faults(self) -> list[ActiveFault]:
        """The faults in force, oldest first."""
        return [f.active() for f in self.faults]

    def processes(self) -> list[ProcessRecord]:
        """Every process the state records."""
        out = [a.record() for a in self.agents.values()]
        out += [h.record() for h in self.helpers.values()]
        if self.server is not None:
            out.append(self.server.record())
        return out


class StateStore:
    """The state file of one lab prefix, with its lock."""

    def __init__(self, state_dir: Path, prefix: str) -> None:
        self.state_dir = state_dir
        self.path = state_dir / f"{prefix}.json"
        self._lock_path = state_dir / f"{prefix}.lock"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the lab's lock (blocking) for a read-change-write."""
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise LabError(
                f"{self._lock_path}: cannot open the lab's lock: {exc.strerror}"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def load(self) -> LabStateModel | None:
        """The state, or None when there is no state file."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise LabError(f"{self.path}: cannot read the lab state: {exc.strerror}") from exc
        try:
            state = LabStateModel.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise LabError(
                f"{self.path}: not a lab state file (field {field}: {first['msg']}); "
                "`pingmesh lab down` still sweeps the lab by its prefix"
            ) from exc
        if state.schema_version != STATE_SCHEMA_VERSION:
            raise LabError(
                f"{self.path}: state schema {state.schema_version}, "
                f"this pingmesh reads {STATE_SCHEMA_VERSION}"
            )
        return state

    def save(self, state: LabStateModel) -> None:
        """Write the state atomically (a temporary file renamed over the old one)."""
        tmp = self.path.with_suffix(".json.tmp")
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            tmp.write_text(state.model_dump_json(indent=2), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            raise LabError(f"{self.path}: cannot write the lab state: {exc.strerror}") from exc

    def remove(self) -> None:
        """Delete the state file (the lock file stays: someone may be waiting on it)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
