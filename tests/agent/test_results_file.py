"""Standalone results as JSON lines: to a file, to stdout, and what happens on errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pingmesh.agent.results_file import ResultsFileWriter
from pingmesh.core.probe import Outcome, ProbeKind, ProbeResult, Scope
from pingmesh.errors import ConfigError
from pingmesh.wire.results import ProbeRecordModel

RESULT = ProbeResult(
    time_ns=1_800_000_000_123_456_789,
    src_addr="127.0.0.1",
    src_port=40000,
    dst="b",
    dst_addr="127.0.0.2",
    dst_port=9781,
    kind=ProbeKind.TCP,
    scope=Scope.INTER_TOR,
    outcome=Outcome.TIMEOUT,
    retransmits=2,
    detail="no answer within 3.5 s (2 SYN retransmissions)",
)


def test_appends_one_json_line_per_probe(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text("earlier line\n")
    writer = ResultsFileWriter(str(path))
    writer.open()
    writer.write(RESULT)
    writer.write(RESULT)
    writer.close()
    lines = path.read_text().splitlines()
    assert lines[0] == "earlier line"  # appended, not truncated
    records = [ProbeRecordModel.model_validate_json(line) for line in lines[1:]]
    assert len(records) == 2
    assert records[0] == ProbeRecordModel.from_result(RESULT)
    assert records[0].retransmits == 2
    assert writer.statistics().written == 2


def test_dash_is_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    writer = ResultsFileWriter("-")
    writer.open()
    writer.write(RESULT)
    writer.close()
    out = capsys.readouterr().out
    assert ProbeRecordModel.model_validate_json(out).outcome is Outcome.TIMEOUT


def test_an_unopenable_file_is_a_config_error(tmp_path: Path) -> None:
    writer = ResultsFileWriter(str(tmp_path / "no" / "such" / "dir.jsonl"))
    with pytest.raises(ConfigError, match=r"agent\.results_file"):
        writer.open()


def test_write_errors_are_counted_not_raised(tmp_path: Path) -> None:
    writer = ResultsFileWriter(str(tmp_path / "out.jsonl"))
    writer.write(RESULT)  # never opened
    writer.open()
    writer.write(RESULT)
    writer.close()
    writer.write(RESULT)  # closed
    assert writer.statistics().written == 1
    assert writer.statistics().write_errors == 2


def test_lines_are_written_whole_at_flush_or_when_64_kib_wait(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    writer = ResultsFileWriter(str(path))
    writer.open()
    writer.write(RESULT)
    assert path.read_text() == ""  # not yet: one write per flush, not per probe
    assert writer.statistics().buffered == 1
    writer.flush()
    assert len(path.read_text().splitlines()) == 1
    assert (writer.statistics().written, writer.statistics().buffered) == (1, 0)
    line_bytes = len(path.read_text())
    for _ in range(64 * 1024 // line_bytes + 1):
        writer.write(RESULT)  # the 64 KiB mark flushes on its own
    assert writer.statistics().buffered == 0
    assert path.read_text().endswith("\n")
    writer.close()
