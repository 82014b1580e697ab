"""Running ``ip`` and ``nft``: the lab's only way to change the system.

Everything that builds, changes or removes the lab goes through a :class:`CommandRunner`, so
tests can check the plan's commands without root, and a failed command becomes a
:class:`~pingmesh.lab.LabError` that names the command and what it said.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pingmesh.errors import LabError

COMMAND_TIMEOUT_S = 120.0
_PACKAGES = {"ip": "iproute2", "nft": "nftables", "sysctl": "procps"}


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandResult:
    """What a command did."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class CommandRunner(Protocol):
    """Runs one command to completion."""

    def run(
        self, argv: Sequence[str], *, input_text: str | None = None, check: bool = True
    ) -> CommandResult:
        """Run ``argv`` (feeding ``input_text``); with ``check``, a failure raises LabError."""
        ...


class SubprocessRunner:
    """The real runner: :func:`subprocess.run`, bounded in time."""

    def __init__(self, *, timeout_s: float = COMMAND_TIMEOUT_S) -> None:
        self._timeout_s = timeout_s

    def run(
        self, argv: Sequence[str], *, input_text: str | None = None, check: bool = True
    ) -> CommandResult:
        """See :class:`CommandRunner`."""
        args = tuple(argv)
        try:
            done = subprocess.run(  # noqa: S603 - argv is built by the lab, never a shell
                args,
                input=input_text,
                capture_output=True,
                text=True,
                timeout=self._timeout_s,
                check=False,
            )
        except FileNotFoundError as exc:
            package = _PACKAGES.get(args[0], args[0])
            raise LabError(f"{args[0]}: command not found (install the {package} package)") from exc
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"`{shlex.join(args)}` did not finish in {self._timeout_s:g} s") from exc
        result = CommandResult(
            argv=args, returncode=done.returncode, stdout=done.stdout, stderr=done.stderr
        )
        if check and done.returncode != 0:
            raise LabError(command_failure(result, input_text))
        return result


def command_failure(result: CommandResult, input_text: str | None = None) -> str:
    """One message that names the command, its status and what it said."""
    said = (result.stderr or result.stdout).strip().splitlines()
    detail = "; ".join(said[-3:]) if said else "no output"
    where = ""
    if input_text is not None:
        where = f" (input of {len(input_text.splitlines())} lines)"
    return f"`{shlex.join(result.argv)}`{where} failed with status {result.returncode}: {detail}"
