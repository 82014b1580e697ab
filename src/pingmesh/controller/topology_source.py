"""Where the current topology comes from: a file, re-read when it changes.

A bad edit of the file never takes the fleet down: the last good topology stays in force and
the error is kept for ``/metrics`` and the logs.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path

from pingmesh.core.topology import Topology, parse_topology
from pingmesh.errors import TopologyError

log = logging.getLogger(__name__)


def read_topology(path: Path) -> Topology:
    """Read and parse a topology file; errors name the file, line and field."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TopologyError(f"cannot read: {exc.strerror}", file=str(path)) from exc
    except UnicodeDecodeError as exc:
        raise TopologyError("not UTF-8 text", file=str(path)) from exc
    return parse_topology(text, filename=str(path))


class TopologySource:
    """The current topology and a digest of it (its version)."""

    def __init__(self, topology: Topology, *, path: Path | None = None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._topology = topology
        self._digest = self._digest_of(topology)
        self._stamp = self._stamp_of(path)
        self.reload_errors = 0
        self.last_error: str | None = None

    @classmethod
    def from_file(cls, path: Path) -> TopologySource:
        """Load ``path`` now (raising :class:`TopologyError`) and watch it later."""
        return cls(read_topology(path), path=path)

    @property
    def topology(self) -> Topology:
        """The topology in force."""
        return self._topology

    @property
    def digest(self) -> str:
        """A short digest of the topology in force; changes when the topology does."""
        return self._digest

    def reload_if_changed(self) -> bool:
        """Re-read the file if it changed on disk; True if a new topology is in force."""
        if self._path is None:
            return False
        stamp = self._stamp_of(self._path)
        with self._lock:
            if stamp == self._stamp:
                return False
            self._stamp = stamp
            try:
                topology = read_topology(self._path)
            except TopologyError as exc:
                self.reload_errors += 1
                self.last_error = str(exc)
                log.warning("keeping the last good topology: %s", exc)
                return False
            self.last_error = None
            digest = self._digest_of(topology)
            changed = digest != self._digest
            self._topology, self._digest = topology, digest
            return changed

    @staticmethod
    def _stamp_of(path: Path | None) -> tuple[int, int] | None:
        if path is None:
            return None
        try:
            st = path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    @staticmethod
    def _digest_of(topology: Topology) -> str:
        h = hashlib.sha256()
        for s in topology.servers:
            h.update(f"{s.name}|{s.address}|{s.dc}|{s.podset}|{s.tor}\n".encode())
        for name, members in sorted(topology.services.items()):
            h.update(f"{name}:{','.join(members)}\n".encode())
        return h.hexdigest()[:16]
