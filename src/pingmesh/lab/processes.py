"""Detached processes inside the lab's namespaces: start, check, signal, stop.

A process is started with ``ip netns exec NS …`` through :func:`os.posix_spawnp` in a session
of its own, so it outlives ``pingmesh lab up`` and is not killed when the CLI exits. ``ip netns
exec`` execs the command, so the pid is the command's own. A pid alone can be reused after the
process dies; a :class:`ProcessRecord` also keeps the process's start time (field 22 of
``/proc/PID/stat``, in clock ticks since boot), and every check compares both, so the lab never
signals a stranger that inherited the number.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pingmesh.errors import LabError

STOP_GRACE_S = 5.0
_POLL_S = 0.05


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessRecord:
    """A process that the lab started: enough to find it again, and to start it again."""

    pid: int
    start_ticks: int
    namespace: str
    argv: tuple[str, ...]
    log: str


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in ticks) of ``pid``, or None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    rest = text[text.rfind(")") + 2 :].split()
    try:
        return rest[0], int(rest[19])
    except (IndexError, ValueError):  # pragma: no cover - the kernel's format is stable
        return None


def is_alive(record: ProcessRecord) -> bool:
    """True while the recorded process runs (a zombie or a reused pid is not it)."""
    stat = proc_stat(record.pid)
    return stat is not None and stat[0] not in ("Z", "X") and stat[1] == record.start_ticks


def is_stopped(record: ProcessRecord) -> bool:
    """True if the recorded process is stopped (SIGSTOP)."""
    stat = proc_stat(record.pid)
    return stat is not None and stat[0] == "T" and stat[1] == record.start_ticks


def spawn_in_namespace(
    namespace: str, argv: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None
) -> ProcessRecord:
    """Start ``argv`` in ``namespace``, detached, stdout and stderr appended to ``log``."""
    full = ("ip", "netns", "exec", namespace, *argv)
    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        pid = os.posix_spawnp(
            "ip",
            full,
            dict(env if env is not None else os.environ),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, fd, 1),
                (os.POSIX_SPAWN_DUP2, fd, 2),
            ],
            setsid=True,
        )
    except OSError as exc:
        raise LabError(f"cannot start {argv[0]} in {namespace}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    stat = proc_stat(pid)
    if stat is None:  # it already exited and was reaped by someone: nothing to record
        raise LabError(f"{argv[0]} in {namespace} exited at once; see {log}")
    return ProcessRecord(pid=pid, start_ticks=stat[1], namespace=namespace, argv=full, log=str(log))


def reap(pid: int) -> None:
    """Collect ``pid``'s exit status if it is our child, so it does not stay a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def send(record: ProcessRecord, signum: int) -> bool:
    """Signal the recorded process if it is still the one we started; True if sent."""
    if not is_alive(record):
        return False
    try:
        os.kill(record.pid, signum)
    except ProcessLookupError:
        return False
    return True


def stop_all(records: Iterable[ProcessRecord], *, grace_s: float = STOP_GRACE_S) -> int:
    """SIGTERM (after SIGCONT, in case one is stopped), then SIGKILL after ``grace_s``.

    Returns how many processes were still running and had to be stopped.
    """
    live = [r for r in records if is_alive(r)]
    for record in live:
        send(record, signal.SIGCONT)
        send(record, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while True:
        for record in live:
            reap(record.pid)
        running = [r for r in live if is_alive(r)]
        if not running or time.monotonic() >= deadline:
            break
        time.sleep(_POLL_S)
    for record in running:
        send(record, signal.SIGKILL)
    for record in running:
        for _ in range(100):
            reap(record.pid)
            if not is_alive(record):
                break
            time.sleep(_POLL_S)
    return len(live)


def record_of(pid: int, namespace: str) -> ProcessRecord | None:
    """A record for a running process found in a namespace (by the sweep)."""
    stat = proc_stat(pid)
    if stat is None:
        return None
    return ProcessRecord(pid=pid, start_ticks=stat[1], namespace=namespace, argv=(), log="")
