"""What the agent reads and writes: the pinglist two ways, probe records, echo packets."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pingmesh.agent.echo_wire import (
    UDP_REPLY,
    parse_tcp_header,
    parse_udp,
    tcp_request,
    udp_reply_into,
    udp_request,
)
from pingmesh.config import PinglistConfig, ProbeSpecConfig
from pingmesh.controller.service import to_wire
from pingmesh.core.pinglist import Peer, Pinglist, pinglist_version
from pingmesh.core.probe import Outcome, ProbeKind, ProbeResult, Scope
from pingmesh.wire.pinglist import PinglistModel, parse_plan
from pingmesh.wire.results import ProbeRecordModel, ResultBatchModel, encode_batch, encode_record

peers = st.fixed_dictionaries(
    {
        "name": st.text(min_size=0, max_size=130),
        "address": st.sampled_from(["127.0.0.2", "198.18.0.1", "::1"]),
        "scope": st.sampled_from(["intra_tor", "inter_tor", "inter_dc", "nowhere"]),
    },
    optional={
        "port": st.integers(min_value=-2, max_value=70_000),
        "kind": st.sampled_from([k.value for k in ProbeKind] + ["smtp"]),
        "interval_s": st.floats(min_value=0, max_value=100, allow_nan=False),
        "size_bytes": st.integers(min_value=-1, max_value=70_000),
        "extra": st.just(1),
    },
)


def document(peer_list: list[dict[str, Any]], **top: Any) -> str:
    return json.dumps(
        {"version": "v1", "server": "a", "address": "127.0.0.1", **top, "peers": peer_list}
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(peers, max_size=3), st.floats(min_value=-1, max_value=100, allow_nan=False))
def test_the_agents_reading_accepts_and_refuses_exactly_what_the_model_does(
    peer_list: list[dict[str, Any]], timeout_s: float
) -> None:
    raw = document(peer_list, timeout_s=timeout_s)
    model_error: ValidationError | None = None
    try:
        model = PinglistModel.model_validate_json(raw)
    except ValidationError as exc:
        model_error = exc
    if model_error is None:
        assert parse_plan(raw) == model.to_plan()
        return
    with pytest.raises(ValidationError) as plan_error:
        parse_plan(raw)
    # the first error is at the same place
    assert model_error.errors()[0]["loc"] == plan_error.value.errors()[0]["loc"]


def test_a_peer_without_a_port_gets_its_kinds() -> None:
    raw = document(
        [
            {"name": "h", "address": "127.0.0.2", "scope": "intra_tor", "kind": "http"},
            {"name": "i", "address": "127.0.0.2", "scope": "intra_tor", "kind": "icmp"},
            {"name": "t", "address": "127.0.0.2", "scope": "intra_tor"},
        ]
    )
    assert [t.port for t in parse_plan(raw).targets] == [9782, 0, 9781]
    with pytest.raises(ValidationError, match="icmp has no port"):
        parse_plan(
            document(
                [{"name": "i", "address": "x", "scope": "inter_dc", "kind": "icmp", "port": 7}]
            )
        )


results = st.builds(
    ProbeResult,
    time_ns=st.integers(min_value=0, max_value=4_000_000_000 * 10**9),
    src_addr=st.sampled_from(["127.0.0.1", "::1", '1"\\2']),
    src_port=st.integers(min_value=0, max_value=65535),
    dst=st.text(min_size=1, max_size=20),
    dst_addr=st.sampled_from(["127.0.0.2", "198.18.0.1"]),
    dst_port=st.integers(min_value=1, max_value=65535),
    kind=st.sampled_from([k for k in ProbeKind if k is not ProbeKind.ICMP]),
    scope=st.sampled_from(list(Scope)),
    outcome=st.just(Outcome.OK),
    rtt_us=st.floats(min_value=0, max_value=1e9, allow_nan=False),
    rtt_clock_us=st.none() | st.floats(min_value=0, max_value=1e9, allow_nan=False),
    retransmits=st.integers(min_value=0, max_value=20),
    size_bytes=st.integers(min_value=0, max_value=65536),
    detail=st.text(max_size=250),
    send_lag_us=st.none() | st.floats(min_value=0, max_value=1e7, allow_nan=False),
    recv_lag_us=st.none() | st.floats(min_value=0, max_value=1e7, allow_nan=False),
    dwell_us=st.none() | st.floats(min_value=0, max_value=1e7, allow_nan=False),
    connect_us=st.none() | st.floats(min_value=0, max_value=1e7, allow_nan=False),
    tls_us=st.none() | st.floats(min_value=0, max_value=1e7, allow_nan=False),
    ttfb_us=st.none() | st.floats(min_value=0, max_value=1e7, allow_nan=False),
    seq=st.none() | st.integers(min_value=0, max_value=2**64 - 1),
)


@settings(max_examples=300, deadline=None)
@given(results)
def test_the_fast_record_encoding_is_the_models_json(result: ProbeResult) -> None:
    assert ProbeRecordModel.model_validate_json(encode_record(result)) == (
        ProbeRecordModel.from_result(result)
    )


def test_a_batch_of_encoded_records_is_a_valid_batch() -> None:
    record = ProbeResult(
        time_ns=1_800_000_000 * 10**9,
        src_addr="127.0.0.1",
        src_port=1,
        dst="b",
        dst_addr="127.0.0.2",
        dst_port=0,
        kind=ProbeKind.ICMP,
        scope=Scope.INTER_DC,
        outcome=Outcome.TIMEOUT,
        detail="no echo reply",
        seq=7,
    )
    body = encode_batch(
        batch_id="abcdefgh-1",
        agent="a",
        pinglist_version=None,
        sent_at=datetime(2027, 1, 1, tzinfo=UTC),
        records=[encode_record(record)] * 2,
    )
    batch = ResultBatchModel.model_validate_json(body)
    assert batch.records[1].seq == 7
    assert batch.records[0].dst_port == 0


@given(st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=32, max_value=2000))
def test_udp_echo_packets_round_trip(seq: int, size: int) -> None:
    request = udp_request(seq, 12345, size)
    assert len(request) == size
    reply = bytearray(request)
    udp_reply_into(reply, 777)
    echo = parse_udp(bytes(reply))
    assert echo is not None
    assert (echo.flag, echo.seq, echo.send_ns, echo.dwell_ns, echo.intact) == (
        UDP_REPLY, seq, 12345, 777, True,
    )  # fmt: skip
    if size > 32:
        reply[-1] ^= 1
        corrupted = parse_udp(bytes(reply))
        assert corrupted is not None
        assert not corrupted.intact


@given(st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=16, max_value=65536))
def test_tcp_echo_requests_round_trip(nonce: int, size: int) -> None:
    request = tcp_request(nonce, size)
    assert len(request) == size
    assert parse_tcp_header(request) == (size, nonce)


def test_bad_echo_headers_are_refused() -> None:
    assert parse_udp(b"PMU1" + bytes(10)) is None
    assert parse_udp(b"XXXX" + bytes(40)) is None
    assert parse_tcp_header(b"PMT1" + (65537).to_bytes(4, "big") + bytes(8)) is None
    with pytest.raises(ValueError, match="size"):
        tcp_request(1, 15)


# -- the controller expands peers into probe kinds ---------------------------------------------


def core_pinglist() -> Pinglist:
    return Pinglist(
        server="a",
        address="198.18.0.1",
        timeout_s=3.5,
        peers=(
            Peer(
                name="b",
                address="198.18.0.2",
                port=9781,
                kind=ProbeKind.TCP,
                scope=Scope.INTRA_TOR,
                interval_s=10.0,
                size_bytes=0,
            ),
        ),
    )


def test_the_default_spec_keeps_one_tcp_entry_and_the_version() -> None:
    wire = to_wire(core_pinglist(), PinglistConfig().probes)
    assert wire.version == pinglist_version(core_pinglist())
    assert [(p.kind, p.port, p.size_bytes) for p in wire.peers] == [(ProbeKind.TCP, 9781, 0)]


def test_each_peer_becomes_one_entry_per_spec() -> None:
    specs = (
        ProbeSpecConfig(),
        ProbeSpecConfig(kind=ProbeKind.TCP_ECHO, size_bytes=1400),
        ProbeSpecConfig(kind=ProbeKind.UDP, size_bytes=1000, interval_s=2.0),
        ProbeSpecConfig(kind=ProbeKind.HTTP),
        ProbeSpecConfig(kind=ProbeKind.ICMP),
    )
    wire = to_wire(core_pinglist(), specs)
    assert [(p.kind, p.port, p.size_bytes, p.interval_s) for p in wire.peers] == [
        (ProbeKind.TCP, 9781, 0, 10.0),
        (ProbeKind.TCP_ECHO, 9781, 1400, 10.0),
        (ProbeKind.UDP, 9781, 1000, 2.0),
        (ProbeKind.HTTP, 9782, 0, 10.0),
        (ProbeKind.ICMP, 0, 0, 10.0),
    ]
    # How peers are probed is part of the version (and so of the ETag).
    assert wire.version != pinglist_version(core_pinglist())
    assert to_wire(core_pinglist(), specs[:2]).version != wire.version
    assert parse_plan(wire.model_dump_json()) == wire.to_plan()


def test_bad_specs_are_config_errors() -> None:
    with pytest.raises(ValidationError, match="icmp has no port"):
        ProbeSpecConfig(kind=ProbeKind.ICMP, port=7)
    with pytest.raises(ValidationError, match="more than 65507"):
        ProbeSpecConfig(kind=ProbeKind.UDP, size_bytes=65_536)
    with pytest.raises(ValidationError):
        PinglistConfig(probes=())
