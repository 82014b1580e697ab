"""``pingmesh token``: the token it prints is the one a real server accepts, for that agent only."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pingmesh.agent.http_client import H11Client
from pingmesh.agent.transport.quic import QuicClient
from pingmesh.agent.transport.spool import BANDWIDTH_PATH, report_model
from pingmesh.cli.main import main
from pingmesh.errors import AuthenticationError
from pingmesh.wire.bandwidth import BandwidthBatchModel
from tests.transport.servers import HOST, ServerProcess, bandwidth_report


def _token(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["token", *argv]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1  # the token alone, so that `> FILE` is the token file
    return out.strip()


def _batch(agent: str) -> bytes:
    model = report_model(bandwidth_report(0), report_id=f"token-test-{agent}-0000000001")
    return BandwidthBatchModel(agent=agent, reports=(model,)).model_dump_json().encode()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    process = ServerProcess(tmp_path / "data")
    try:
        await process.start()
        yield process
    finally:
        process.stop()


async def _post_over_http(server: ServerProcess, agent: str, token: str) -> int:
    client = H11Client()
    try:
        answer = await client.request(
            "POST",
            f"{server.url}{BANDWIDTH_PATH}",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
            body=_batch(agent),
            timeout_s=10,
        )
    finally:
        await client.aclose()
    return answer.status


def _quic(server: ServerProcess, agent: str, token: str) -> QuicClient:
    return QuicClient(
        host=HOST,
        port=server.quic_port,
        agent=agent,
        alias=agent,
        token=token,
        ca_file=server.data / "tls" / "ca.pem",
        connect_timeout_s=5,
        request_timeout_s=5,
    )


@pytest.mark.slow
async def test_a_minted_token_is_accepted_by_the_server_for_its_agent_only(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = _token(["--agent", "h1", "--data", str(server.data)], capsys)
    other = _token(["--agent", "h2", "--data", str(server.data)], capsys)
    assert token != other
    # The same secret reached three ways gives the same token.
    secret = server.data / "tls" / "agent-secret"
    assert _token(["--agent", "h1", "--secret-file", str(secret)], capsys) == token
    config = tmp_path / "server.yaml"
    config.write_text(f"server:\n  data_dir: {server.data}\n")
    assert _token(["--agent", "h1", "--config", str(config)], capsys) == token

    # QUIC: the hello with the minted token opens the connection, and a report is stored.
    quic = _quic(server, "h1", token)
    try:
        status, _answer = await quic.request(BANDWIDTH_PATH, _batch("h1"))
    finally:
        await quic.aclose()
    assert status == 200
    # h2's token does not prove h1.
    forged = _quic(server, "h1", other)
    try:
        with pytest.raises(AuthenticationError, match="refused agent 'h1'"):
            await forged.request(BANDWIDTH_PATH, _batch("h1"))
    finally:
        await forged.aclose()

    # HTTP fallback: the same tokens, the same verdicts.
    assert await _post_over_http(server, "h1", token) == 200
    assert await _post_over_http(server, "h1", other) == 403


def test_token_names_what_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--agent", "h1"]) == 2
    err = capsys.readouterr().err
    assert "--secret-file" in err
    assert "--data" in err
    assert len(err.strip().splitlines()) == 1

    # A data directory whose server never ran with --quic-listen: no secret, and none is made.
    assert main(["token", "--agent", "h1", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'tls' / 'agent-secret'}: no agent secret" in err
    assert not (tmp_path / "tls").exists()

    bad = tmp_path / "bad-secret"
    bad.write_text("not hex\n")
    assert main(["token", "--agent", "h1", "--secret-file", str(bad)]) == 2
    assert "not hex" in capsys.readouterr().err

    secret = tmp_path / "secret"
    secret.write_text("ab" * 32 + "\n")
    assert main(["token", "--agent", "", "--secret-file", str(secret)]) == 2
    assert "--agent ''" in capsys.readouterr().err
    assert main(["token", "--agent", "x" * 129, "--secret-file", str(secret)]) == 2
    assert "at most 128" in capsys.readouterr().err
    assert main(["token", "--agent", "h1", "--secret-file", str(secret), "--data", "d"]) == 2
    assert "--data" in capsys.readouterr().err


def test_token_without_agent_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pingmesh", "token", "--data", "."],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--agent" in result.stderr
