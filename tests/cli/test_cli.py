"""The command line: exit codes and one-line errors that name what is wrong."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pingmesh import __version__
from pingmesh.cli.main import main

TOPOLOGY = """\
servers:
  - {name: h11, address: 127.31.1.1, dc: dc1, podset: ps1, tor: t1}
  - {name: h12, address: 127.31.1.2, dc: dc1, podset: ps1, tor: t1}
  - {name: h21, address: 127.31.2.1, dc: dc1, podset: ps1, tor: t2}
"""


@pytest.fixture
def topology_file(tmp_path: Path) -> Path:
    path = tmp_path / "topology.yaml"
    path.write_text(TOPOLOGY)
    return path


def test_version_is_printed_by_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--version"], ["server", "--version"], ["agent", "--version"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
        assert capsys.readouterr().out.strip() == f"pingmesh {__version__}"


def test_help_exits_zero() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pingmesh", "pinglist", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    assert "--topology" in result.stdout


def test_pinglist_prints_the_servers_pinglist(
    topology_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["pinglist", "--topology", str(topology_file), "--server", "h11"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["server"] == "h11"
    assert {p["name"] for p in doc["peers"]} == {"h12", "h21"}
    assert doc["version"]


def test_pinglist_unknown_server_exits_2(
    topology_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["pinglist", "--topology", str(topology_file), "--server", "nope"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err
    assert len(err.strip().splitlines()) == 1


def test_malformed_topology_names_file_line_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        TOPOLOGY + "  - {name: h22, address: 300.1.1.1, dc: dc1, podset: ps1, tor: t2}\n"
    )
    assert main(["pinglist", "--topology", str(bad), "--server", "h11"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{bad}:5" in err
    assert "address" in err
    assert len(err.splitlines()) == 1


def test_missing_topology_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.yaml"
    assert main(["server", "--topology", str(missing), "--data", str(tmp_path / "d")]) == 2
    assert str(missing) in capsys.readouterr().err


def test_server_without_topology_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["server", "--data", str(tmp_path / "d")]) == 2
    assert "topology" in capsys.readouterr().err


def test_server_on_a_busy_port_exits_2(
    topology_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        argv = ["server", "--topology", str(topology_file), "--data", str(tmp_path / "d")]
        assert main([*argv, "--listen", f"127.0.0.1:{port}"]) == 2
    assert f"127.0.0.1:{port}" in capsys.readouterr().err


def test_bad_listen_value_exits_2(
    topology_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["server", "--topology", str(topology_file), "--data", str(tmp_path / "d")]
    assert main([*argv, "--listen", "nonsense"]) == 2
    assert "listen" in capsys.readouterr().err


def test_bad_config_field_is_named(
    topology_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("server:\n  pinglist: {interval_s: 0.1}\n")
    argv = ["server", "--config", str(config), "--topology", str(topology_file)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "server.pinglist.interval_s" in err
    assert str(config) in err


def test_agent_needs_a_controller_or_a_pinglist(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agent", "--name", "h11"]) == 2
    assert "--controller" in capsys.readouterr().err


def test_unknown_command_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"])
    assert exit_info.value.code == 2
    assert "frobnicate" in capsys.readouterr().err
