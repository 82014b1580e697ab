"""The lab tests' shared fabric: one lab per session, swept before and removed after.

Every namespace a test creates starts with ``pmtest`` and every address is in 198.18.0.0/15
(the management network of the test labs is 198.19.240.0/20, away from a user's lab at
198.19.0.0/20). At session start, leftovers of an earlier crashed run are swept by prefix;
the session lab is taken down by its fixture's finalizer whether the tests pass or fail.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from pingmesh.errors import LabError
from pingmesh.lab.commands import SubprocessRunner
from pingmesh.lab.fabric import sweep
from pingmesh.lab.lab import Lab, LabOptions
from pingmesh.lab.plan import LabShape

PREFIX = "pmtest"
SCRATCH_PREFIX = "pmtscr"  # labs that a single test builds and removes itself
MGMT_NET = "198.19.240.0/20"
SCRATCH_MGMT_NET = "198.19.224.0/20"
SHAPE = LabShape(dcs=1, podsets=2, tors=2, servers=3, leaves=2, spines=2)
DETECTION_LOG = "lab-detection.txt"


def can_build_labs() -> str | None:
    """Why lab tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


@pytest.fixture(scope="session")
def lab_session_clean() -> None:
    """Sweep whatever a crashed earlier run left behind, once per session."""
    reason = can_build_labs()
    if reason is not None:
        pytest.skip(reason)
    runner = SubprocessRunner()
    for prefix in (PREFIX, SCRATCH_PREFIX):
        sweep(runner, prefix)


@pytest.fixture(scope="session")
def lab(lab_session_clean: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The session's lab, up with a server and an agent per server; always taken down."""
    root = tmp_path_factory.mktemp("lab")
    lines: list[str] = []
    the_lab = Lab(
        LabOptions(
            prefix=PREFIX,
            state_dir=root / "state",
            data_dir=root / "data",
            mgmt_net=MGMT_NET,
        ),
        announce=lines.append,
    )
    try:
        the_lab.up(SHAPE, wait_s=60)
        yield the_lab
    except LabError as exc:
        raise AssertionError(f"{exc}\n" + "\n".join(lines) + _logs(root / "data")) from exc
    finally:
        the_lab.down()


def _logs(data_dir: Path) -> str:
    out = []
    for log in sorted((data_dir / "logs").glob("*.log"))[:4]:
        out.append(f"\n== {log.name}\n{log.read_text(errors='replace')[-1500:]}")
    return "".join(out)


@pytest.fixture(scope="session")
def detection_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The file every detection test appends its time-to-detect line to."""
    return tmp_path_factory.getbasetemp() / DETECTION_LOG


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Show the lab's detection figures at the end of the run (the lead collects them)."""
    base = terminalreporter.config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    path = Path(base) / DETECTION_LOG
    if path.exists():
        terminalreporter.section("lab: time to detection")
        terminalreporter.write_line(f"(from {path})")
        for line in path.read_text().splitlines():
            terminalreporter.write_line(line)
