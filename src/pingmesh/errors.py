"""The one exception tree of pingmesh.

::

    PingmeshError
    ├── InputError              bad input from a user or a peer: exit 2 / HTTP 4xx
    │   ├── TopologyError       a topology file names the file, line and field at fault
    │   ├── ConfigError         a config file or option
    │   ├── PinglistError       a pinglist file or document
    │   └── BatchError          a result batch that cannot be accepted
    ├── UnknownServerError      a server that the topology does not name
    ├── ControllerError         the controller could not be reached or answered badly
    │   └── TransportError      the agent's QUIC connection could not carry a request
    │       └── AuthenticationError   the server refused the agent's token
    ├── StoreError              the raw store or the results database failed
    ├── NotifyError             a notifier (SMTP, webhook) could not deliver an alert
    └── LabError                the fault lab could not be built, changed or removed

Foreign exceptions are translated where they cross into pingmesh and re-raised ``from`` the
original, so the cause is never lost.  Probe failures are not exceptions: they are data
(see :class:`pingmesh.core.probe.Outcome`).
"""

from __future__ import annotations


class PingmeshError(Exception):
    """Root of every error that pingmesh raises on purpose."""


class InputError(PingmeshError):
    """Input that pingmesh refuses; the message names what is wrong."""


class TopologyError(InputError):
    """A topology file that cannot be used.

    The message reads ``FILE:LINE: field FIELD: problem`` so that a person can jump to it.
    """

    def __init__(
        self, problem: str, *, file: str, line: int | None = None, field: str | None = None
    ) -> None:
        self.problem = problem
        self.file = file
        self.line = line
        self.field = field
        where = file if line is None else f"{file}:{line}"
        what = f"field {field!r}: " if field else ""
        super().__init__(f"{where}: {what}{problem}")


class ConfigError(InputError):
    """A configuration file or command-line option that cannot be used."""


class PinglistError(InputError):
    """A pinglist document that cannot be used."""


class BatchError(InputError):
    """A result batch that the collector refuses."""


class UnknownServerError(PingmeshError):
    """The topology does not name this server (or its pinglist was removed)."""

    def __init__(self, server: str) -> None:
        self.server = server
        super().__init__(f"unknown server {server!r}: not in the topology")


class ControllerError(PingmeshError):
    """The controller could not be reached, or answered with something unusable."""


class TransportError(ControllerError):
    """The QUIC connection could not carry a request (the caller may fall back or retry).

    A :class:`ControllerError`, so every caller of the agent's HTTP client already treats it
    as "the server is not reachable now, retry later".
    """


class AuthenticationError(TransportError):
    """The server refused the agent's identity (wrong token, or not this agent's)."""


class StoreError(PingmeshError):
    """The raw store or the results database failed."""


class NotifyError(PingmeshError):
    """A notifier could not deliver a message (the dispatcher retries)."""


class LabError(PingmeshError):
    """The lab could not be built, changed or removed (not root, a command failed, …)."""
