"""``python -m pingmesh.lab.starve``: starve one agent of CPU with SIGSTOP/SIGCONT cycles.

The lab's CPU-starvation fault (see :mod:`pingmesh.lab.faults`): the agent is stopped for
``stop_ms`` of every ``period_ms``. The process runs in the starved server's namespace, so the
lab's sweep finds it; on SIGTERM or SIGINT, and when it ends for any reason, it continues the
agent first, so clearing the fault (or killing this helper) never leaves the agent frozen. It
checks the agent's start time as well as its pid (:mod:`pingmesh.lab.processes`), so it stops
when the agent exits instead of signalling a process that inherited the number.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType

from pingmesh.lab.processes import ProcessRecord, is_alive


class _StopSignalError(Exception):
    """Raised by the signal handler to leave the cycle."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise _StopSignalError(signum)


def cycle(target: ProcessRecord, *, stop_s: float, period_s: float) -> None:
    """Stop and continue ``target`` until signalled or until it exits."""
    try:
        while is_alive(target):
            os.kill(target.pid, signal.SIGSTOP)
            time.sleep(stop_s)
            os.kill(target.pid, signal.SIGCONT)
            time.sleep(period_s - stop_s)
    except (_StopSignalError, ProcessLookupError):
        pass
    finally:
        if is_alive(target):
            with contextlib.suppress(ProcessLookupError):
                os.kill(target.pid, signal.SIGCONT)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments and cycle; exit 0 when stopped."""
    parser = argparse.ArgumentParser(
        prog="python -m pingmesh.lab.starve",
        description="Stop a process for STOP ms of every PERIOD ms until terminated.",
    )
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--start-ticks", type=int, required=True, help="from /proc/PID/stat")
    parser.add_argument("--stop-ms", type=int, required=True)
    parser.add_argument("--period-ms", type=int, required=True)
    args = parser.parse_args(argv)
    if not 0 < args.stop_ms < args.period_ms:
        parser.error("need 0 < --stop-ms < --period-ms")
    target = ProcessRecord(
        pid=args.pid, start_ticks=args.start_ticks, namespace="", argv=(), log=""
    )
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _on_signal)
    cycle(target, stop_s=args.stop_ms / 1000, period_s=args.period_ms / 1000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
