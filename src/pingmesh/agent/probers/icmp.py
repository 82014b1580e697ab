"""ICMP echo probe: what ``ping`` measures, for the peers and networks that only answer ICMP.

Theory of operation
-------------------
**Which socket.** As root (or with ``CAP_NET_RAW``) the prober opens a *raw* ICMP socket and
builds echo requests itself. Without that privilege Linux offers *ping sockets*
(``SOCK_DGRAM``/``IPPROTO_ICMP``, since 3.0) to the groups listed in the sysctl
``net.ipv4.ping_group_range``; the kernel then chooses the echo identifier and hands back only
our own replies. If neither is allowed, every ICMP probe ends as an ``error`` whose detail
says which capability or sysctl is missing (and TCP and UDP probes need neither: reference
§6.1, the Azure case where ICMP is blocked).

**One socket, many probes.** All ICMP probes share the socket. A probe is identified by the
16-bit echo sequence number (at most 65,536 in flight, far above the concurrency cap) and,
inside the payload, by a per-prober random token and a 64-bit sequence number, so replies to
other programs' pings (a raw socket sees them all) and stale replies after a wrap are
ignored. On a raw socket, a classic BPF filter (``SO_ATTACH_FILTER``) keeps the kernel from
waking us for echo replies with another identifier, and ``ICMP_FILTER`` for anything but echo
replies and the two errors we use: destination unreachable and time exceeded.

**Timing**, as ``ping`` does it: the send time is read right before ``sendto``, the reply is
stamped by the kernel on arrival (``SO_TIMESTAMPNS``); the agent's own delay in reading it is
``recv_lag_us``, not part of the RTT. The kernel answers echo requests itself, so there is no
responder dwell.

**Errors.** A raw socket receives ICMP unreachable / time-exceeded messages, which quote our
request's header (so its sequence number); a ping socket gets them on its error queue
(``IP_RECVERR``). Either way the probe ends ``unreachable`` naming the ICMP type, code and
the router that sent it. IPv4 only (ICMPv6 differs in socket options and filters).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import logging
import os
import random
import socket
import struct
from dataclasses import dataclass
from typing import Any

from pingmesh.agent.probers import OnDone, Peer
from pingmesh.agent.probers.datagram import (
    DatagramProbe,
    DatagramProber,
    read_datagrams,
    read_error_queue,
)
from pingmesh.agent.probers.kernel import (
    IP_RECVERR,
    WILDCARDS,
    address_family,
    enable_rx_timestamps,
    errno_name,
    parse_extended_error,
)
from pingmesh.clock import Clock
from pingmesh.core.probe import Outcome, ProbeKind, ProbeResult

logger = logging.getLogger(__name__)

ICMP_ECHO_REPLY = 0
ICMP_UNREACHABLE = 3
ICMP_ECHO_REQUEST = 8
ICMP_TIME_EXCEEDED = 11
DEFAULT_PAYLOAD_BYTES = 56  # what ping sends
_PAYLOAD = struct.Struct("!IQQ")  # token, seq64, send_ns
MIN_PAYLOAD_BYTES = _PAYLOAD.size
MAX_ICMP_PAYLOAD_BYTES = 65_507 - 8
_HEADER = struct.Struct("!BBHHH")  # type, code, checksum, identifier, sequence
SOL_RAW = 255
ICMP_FILTER = 1  # linux/icmp.h: a bit mask of the ICMP types to *drop*
SO_ATTACH_FILTER = 26
PING_GROUP_RANGE = "/proc/sys/net/ipv4/ping_group_range"


@dataclass(frozen=True, slots=True, kw_only=True)
class IcmpProberStatistics:
    """A snapshot of the ICMP prober's counters."""

    socket_kind: str  # "raw", "ping" or "none"
    unavailable: str  # why ICMP cannot be used ("" when it can)
    sent: int
    answered: int
    lost: int
    errors_received: int  # ICMP unreachable / time exceeded matched to a probe
    stray: int


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``, as a native-order 16-bit value.

    Summing native-order 16-bit words and storing the result in native order is correct
    whatever the byte order (RFC 1071 §2(B)).
    """
    if len(data) % 2:
        data += b"\0"
    total = sum(array.array("H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(identifier: int, seq16: int, payload: bytes) -> bytes:
    """An ICMP echo request with its checksum."""
    header = _HEADER.pack(ICMP_ECHO_REQUEST, 0, 0, identifier, seq16)
    packet = bytearray(header + payload)
    struct.pack_into("=H", packet, 2, checksum(bytes(packet)))
    return bytes(packet)


def ping_group_range() -> tuple[int, int] | None:
    """The sysctl ``net.ipv4.ping_group_range`` of this network namespace."""
    try:
        with open(PING_GROUP_RANGE, encoding="ascii") as stream:
            low, high = stream.read().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return None


def unavailable_reason(raw_error: OSError | None, ping_error: OSError) -> str:
    """Why neither ICMP socket could be opened, naming the capability and the sysctl."""
    groups = ping_group_range()
    now = f"{groups[0]} {groups[1]}" if groups is not None else "unreadable"
    raw = f"raw socket: {errno_name(raw_error.errno)}" if raw_error is not None else "raw not tried"
    return (
        f"icmp unavailable: needs CAP_NET_RAW ({raw}) or gid {os.getgid()} in "
        f"net.ipv4.ping_group_range (now {now}; ping socket: {errno_name(ping_error.errno)}); "
        "e.g. sysctl -w net.ipv4.ping_group_range='0 2147483647'"
    )


def _bpf_identifier_filter(identifier: int) -> bytes:
    """A classic BPF program: echo replies only with ``identifier``; errors always."""
    ldx_msh, ld_b_ind, ld_h_ind = 0xB1, 0x50, 0x48
    jeq, ret = 0x15, 0x06
    program = [
        (ldx_msh, 0, 0, 0),  # X = IP header length
        (ld_b_ind, 0, 0, 0),  # A = ICMP type
        (jeq, 0, 3, ICMP_ECHO_REPLY),  # echo reply? else go to the error checks
        (ld_h_ind, 0, 0, 4),  # A = identifier
        (jeq, 3, 4, identifier),  # ours: accept; else drop
        (0x05, 0, 0, 0),  # (unreachable: keeps the jump arithmetic simple)
        (jeq, 1, 0, ICMP_UNREACHABLE),
        (jeq, 0, 1, ICMP_TIME_EXCEEDED),
        (ret, 0, 0, 0xFFFF),  # accept
        (ret, 0, 0, 0),  # drop
    ]
    # Re-check the jumps: from index 2, jf=3 → index 6; from index 4, jt=3 → 8, jf=4 → 9;
    # index 6 (unreachable) jt=1 → 8; index 7 jt=0 → 8, jf=1 → 9. Index 5 is never reached.
    return b"".join(struct.pack("=HBBI", code, jt, jf, k) for code, jt, jf, k in program)


def _attach_filter(sock: socket.socket, program: bytes) -> None:
    import ctypes  # noqa: PLC0415 - only agents that open a raw ICMP socket need it

    count = len(program) // 8
    buffer = ctypes.create_string_buffer(program)
    fprog = struct.pack("HxxxxxxQ", count, ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


class _IcmpProbe(DatagramProbe["IcmpEchoProber"]):
    __slots__ = ("seq16", "src_addr")

    def __init__(
        self,
        prober: IcmpEchoProber,
        peer: Peer,
        timeout_s: float,
        on_done: OnDone,
        send_lag_us: float | None,
    ) -> None:
        super().__init__(prober, peer, timeout_s, on_done, send_lag_us)
        self.seq16 = -1  # the echo sequence number; -1 until the request is built
        self.src_addr = prober.bind_addr

    def _result(self, outcome: Outcome, fields: dict[str, Any]) -> ProbeResult:
        peer = self.peer
        return ProbeResult(
            time_ns=self.time_ns,
            src_addr=self.src_addr,
            src_port=self._prober.identifier,
            dst=peer.name,
            dst_addr=peer.address,
            dst_port=0,
            kind=ProbeKind.ICMP,
            scope=peer.scope,
            outcome=outcome,
            size_bytes=self.size,
            seq=self.seq if self.seq16 >= 0 else None,
            send_lag_us=self._send_lag_us,
            **fields,
        )


class IcmpEchoProber(DatagramProber[_IcmpProbe]):
    """Probes peers with ICMP echo; see the module docstring.

    ``socket_kind`` forces ``"raw"`` or ``"ping"``; ``"auto"`` tries raw, then ping. The
    socket is opened at the first probe; ``src_port`` of a result is the echo identifier.
    """

    def __init__(
        self,
        *,
        bind_addr: str = "0.0.0.0",
        clock: Clock,
        rng: random.Random,
        socket_kind: str = "auto",
    ) -> None:
        if socket_kind not in ("auto", "raw", "ping"):
            raise ValueError(f"socket_kind: {socket_kind!r} is not auto, raw or ping")
        super().__init__(bind_addr=bind_addr, clock=clock)
        self._rng = rng
        self._wanted = socket_kind
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._raw = False
        self.identifier = 0
        self._token = rng.getrandbits(32)
        self._seq = rng.getrandbits(32)
        self._unavailable = ""
        self._errors = 0

    @property
    def kind(self) -> ProbeKind:
        return ProbeKind.ICMP

    @property
    def socket_kind(self) -> str:
        """``raw``, ``ping``, or ``none`` (not opened yet, or unavailable)."""
        if self._sock is None:
            return "none"
        return "raw" if self._raw else "ping"

    def open(self) -> str:
        """Open the socket if not yet; returns ``""`` or why ICMP is unavailable."""
        if self._sock is not None or self._unavailable:
            return self._unavailable
        self._loop = asyncio.get_running_loop()
        raw_error: OSError | None = None
        if self._wanted in ("auto", "raw"):
            try:
                self._sock = self._open_raw()
                self._raw = True
            except OSError as exc:
                raw_error = exc
        if self._sock is None and self._wanted in ("auto", "ping"):
            try:
                self._sock = self._open_ping()
                self._raw = False
            except OSError as exc:
                self._unavailable = unavailable_reason(raw_error, exc)
        elif self._sock is None and raw_error is not None:
            self._unavailable = (
                f"icmp unavailable: raw socket: {errno_name(raw_error.errno)} (needs CAP_NET_RAW)"
            )
        if self._sock is not None:
            self._loop.add_reader(self._sock.fileno(), self._drain)
            logger.info("ICMP probes over a %s socket", self.socket_kind)
        else:
            logger.warning("%s", self._unavailable)  # once: later probes reuse the verdict
        return self._unavailable

    def _open_raw(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        try:
            sock.settimeout(0.0)
            enable_rx_timestamps(sock)
            wanted = (1 << ICMP_ECHO_REPLY) | (1 << ICMP_UNREACHABLE) | (1 << ICMP_TIME_EXCEEDED)
            sock.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("=I", ~wanted & 0xFFFF_FFFF))
            if self.bind_addr not in WILDCARDS:
                sock.bind((self.bind_addr, 0))
            self.identifier = self._rng.getrandbits(16)
            # The replies are filtered here anyway; the kernel filter only saves wake-ups.
            with contextlib.suppress(OSError):
                _attach_filter(sock, _bpf_identifier_filter(self.identifier))
        except BaseException:
            sock.close()
            raise
        return sock

    def _open_ping(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
        try:
            sock.settimeout(0.0)
            enable_rx_timestamps(sock)
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
            bind_addr = self.bind_addr if self.bind_addr != "::" else "0.0.0.0"
            sock.bind((bind_addr, 0))
            self.identifier = sock.getsockname()[1]  # the kernel's echo identifier for us
        except BaseException:
            sock.close()
            raise
        return sock

    def _new_probe(
        self, peer: Peer, timeout_s: float, on_done: OnDone, send_lag_us: float | None
    ) -> _IcmpProbe:
        return _IcmpProbe(self, peer, timeout_s, on_done, send_lag_us)

    def _close_sockets(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(sock.fileno())
            sock.close()

    def statistics(self) -> IcmpProberStatistics:
        """A snapshot of the counters."""
        return IcmpProberStatistics(
            socket_kind=self.socket_kind,
            unavailable=self._unavailable,
            sent=self._sent,
            answered=self._answered,
            lost=self._lost,
            errors_received=self._errors,
            stray=self._stray,
        )

    # -- sending ----------------------------------------------------------------------------

    def _send(self, probe: _IcmpProbe) -> None:
        peer = probe.peer
        if address_family(peer.address) != socket.AF_INET:
            probe.finish(
                Outcome.ERROR,
                detail=f"peer address {peer.address!r} is not an IPv4 address (icmp is IPv4 only)",
            )
            return
        unavailable = self.open()
        if unavailable:
            probe.finish(Outcome.ERROR, detail=unavailable[:200])
            return
        sock = self._sock
        assert sock is not None
        seq16 = self._free_seq16()
        if seq16 is None:
            probe.finish(Outcome.ERROR, detail="65536 ICMP probes in flight")
            return
        self._seq = (self._seq + 1) & 0xFFFF_FFFF_FFFF_FFFF
        probe.seq, probe.seq16 = self._seq, seq16
        size = peer.size_bytes or DEFAULT_PAYLOAD_BYTES
        probe.size = size = min(max(size, MIN_PAYLOAD_BYTES), MAX_ICMP_PAYLOAD_BYTES)
        probe.src_addr = self._sources.lookup(peer.address, 9)
        # The packet first (its checksum takes a few µs in Python), the send time last: right
        # before the system call, as ping takes it. The payload's time is informational.
        payload = _PAYLOAD.pack(self._token, probe.seq, round(self._clock.now_s() * 1e9))
        payload += bytes(size - len(payload))
        packet = echo_request(self.identifier, seq16, payload)
        probe.send_mono_ns = self._clock.monotonic_ns()
        probe.send_real_ns = round(self._clock.now_s() * 1e9)
        try:
            sock.sendto(packet, (peer.address, 0))
        except OSError as exc:
            probe.fail(exc)
            return
        self._sent_waiting(seq16, probe)

    def _free_seq16(self) -> int | None:
        if len(self._outstanding) >= 65536:
            return None
        candidate = (self._seq + 1) & 0xFFFF
        while candidate in self._outstanding:
            self._seq += 1
            candidate = (self._seq + 1) & 0xFFFF
        return candidate

    # -- receiving --------------------------------------------------------------------------

    def _drain(self) -> None:
        sock = self._sock
        if sock is None:
            return
        if self._raw:
            read_datagrams(sock, 65535, self._on_raw_packet)
        else:
            read_error_queue(sock, 65535, self._on_queued_error)
            read_datagrams(sock, 65535, self._on_ping_reply)

    def _on_ping_reply(
        self, data: bytes, ancillary: list[tuple[int, int, bytes]], source: tuple[str, int]
    ) -> None:
        self._on_icmp_message(data, ancillary, source[0])

    def _on_raw_packet(
        self, data: bytes, ancillary: list[tuple[int, int, bytes]], _source: object
    ) -> None:
        if len(data) < 20:
            self._stray += 1
            return
        ihl = (data[0] & 0x0F) * 4
        source = socket.inet_ntoa(data[12:16])
        icmp = data[ihl:]
        if len(icmp) < 8:
            self._stray += 1
            return
        icmp_type = icmp[0]
        if icmp_type == ICMP_ECHO_REPLY:
            _, _, _, identifier, _ = _HEADER.unpack_from(icmp)
            if identifier != self.identifier:
                self._stray += 1
                return
            self._on_icmp_message(icmp, ancillary, source)
        elif icmp_type in (ICMP_UNREACHABLE, ICMP_TIME_EXCEEDED):
            inner = icmp[8:]
            if len(inner) < 20:
                return
            inner_ihl = (inner[0] & 0x0F) * 4
            quoted = inner[inner_ihl:]
            if len(quoted) < 8 or quoted[0] != ICMP_ECHO_REQUEST:
                return
            _, _, _, identifier, seq16 = _HEADER.unpack_from(quoted)
            if identifier != self.identifier:
                return
            probe = self._outstanding.get(seq16)
            if probe is None:
                return
            self._forget(probe)
            self._errors += 1
            what = "unreachable" if icmp_type == ICMP_UNREACHABLE else "time exceeded"
            probe.finish(
                Outcome.UNREACHABLE,
                detail=f"ICMP {icmp_type}/{icmp[1]} ({what}) from {source}",
            )

    def _on_icmp_message(
        self, icmp: bytes, ancillary: list[tuple[int, int, bytes]], source: str
    ) -> None:
        now_real_ns = round(self._clock.now_s() * 1e9)
        now_mono_ns = self._clock.monotonic_ns()
        if len(icmp) < 8 + _PAYLOAD.size or icmp[0] != ICMP_ECHO_REPLY:
            self._stray += 1
            return
        _, _, _, _, seq16 = _HEADER.unpack_from(icmp)
        token, seq, _ = _PAYLOAD.unpack_from(icmp, 8)
        probe = self._outstanding.get(seq16)
        if (
            token != self._token
            or probe is None
            or probe.seq != seq
            or source != probe.peer.address
        ):
            self._stray += 1
            return
        self._forget(probe)
        self._answered += 1
        probe.answered(ancillary, now_real_ns, now_mono_ns)

    def _on_queued_error(self, data: bytes, ancillary: list[tuple[int, int, bytes]]) -> None:
        error = parse_extended_error(ancillary)
        if error is None or len(data) < 8 or data[0] != ICMP_ECHO_REQUEST:
            return
        _, _, _, _, seq16 = _HEADER.unpack_from(data)
        probe = self._outstanding.get(seq16)
        if probe is None:
            return
        self._forget(probe)
        self._errors += 1
        probe.finish(error.outcome, detail=error.describe())

    def _on_expired(self, seq16: int, probe: _IcmpProbe) -> None:
        self._lost += 1
        probe.finish(Outcome.TIMEOUT, detail=f"no echo reply within {probe.timeout_s:g} s")

    def _forget(self, probe: _IcmpProbe) -> None:
        if self._outstanding.get(probe.seq16) is probe:
            self._outstanding.pop(probe.seq16)
