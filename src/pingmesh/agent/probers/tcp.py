"""TCP connect probe: the SYN / SYN-ACK round trip over a fresh connection (PM §3.4.1).

Theory of operation
-------------------
Every probe opens a new non-blocking socket bound to the agent's address with port 0, so the
kernel picks a fresh source port and successive probes explore different ECMP paths (PM §3.4.1).
The port is read right after ``bind``, so a *failed* probe has its 5-tuple too, which is
exactly what black-hole detection needs (PM §5.1); bound to the wildcard address, a failed
probe names the source address the kernel routes from.

The RTT comes from two clocks. The kernel's smoothed RTT (``tcpi_rtt`` of ``TCP_INFO``) after
the handshake is the SYN / SYN-ACK sample itself, free of event-loop delay; the monotonic clock
around ``connect`` is kept as ``rtt_clock_us`` so the two can be compared. Lost SYNs are read
from ``tcpi_total_retrans`` instead of being guessed from the connect time (PM §4.2 infers
them from 3 s / 9 s marks on Windows; on Linux the marks are 1 s / 3 s / 7 s, or 1 s apart with
``net.ipv4.tcp_syn_linear_timeouts``, so counting is the robust way). When a SYN was
retransmitted and the kernel has no RTT sample (Karn's rule, no timestamps), ``rtt_us`` falls
back to the clock, which then includes the retransmission timeout, as in Pingmesh.

A probe cannot hang: ``asyncio.timeout`` bounds it (3.5 s by default: room for the Linux SYN
retransmissions at 1 s and 3 s), and ``TCP_SYNCNT`` caps the kernel's own SYN retries so a socket
never outlives the probe by two minutes (``tcp_syn_retries`` = 6 is ~127 s). The socket is
closed with ``SO_LINGER`` 0: the kernel answers with RST instead of going through FIN and
TIME_WAIT, so thousands of probes a second leave no TIME_WAIT pile-up on either side.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import struct
from dataclasses import dataclass
from functools import partial

from pingmesh.clock import Clock
from pingmesh.core.probe import Outcome, ProbeKind, ProbeResult
from pingmesh.wire.pinglist import PeerModel

# ``struct tcp_info`` (include/uapi/linux/tcp.h): eight __u8 fields (state, ca_state,
# retransmits, probes, backoff, options, the wscale nibbles, the app_limited/fastopen bits),
# then __u32 fields from offset 8: rto 8, ato 12, snd_mss 16, rcv_mss 20, unacked 24,
# sacked 28, lost 32, retrans 36, fackets 40, last_data_sent 44, last_ack_sent 48,
# last_data_recv 52, last_ack_recv 56, pmtu 60, rcv_ssthresh 64, **rtt 68** (µs), rttvar 72,
# snd_ssthresh 76, snd_cwnd 80, advmss 84, reordering 88, rcv_rtt 92, rcv_space 96,
# **total_retrans 100**. A uapi struct only ever grows at the end, so these offsets hold on
# every kernel that has the fields; we ask for the first 104 bytes. (Checked against
# /usr/include/linux/tcp.h and, in the tests, against the running kernel.)
TCPI_STATE_OFFSET = 0
TCPI_RTT_OFFSET = 68
TCPI_TOTAL_RETRANS_OFFSET = 100
TCP_INFO_BYTES = 104

MAX_TCP_SYNCNT = 127  # the kernel refuses larger values (include/net/tcp.h)
_LINGER_RST = struct.pack("ii", 1, 0)  # l_onoff = 1, l_linger = 0: close() sends RST

_OUTCOME_BY_ERRNO = {
    errno.ECONNREFUSED: Outcome.REFUSED,
    errno.ETIMEDOUT: Outcome.TIMEOUT,
    errno.EHOSTUNREACH: Outcome.UNREACHABLE,
    errno.ENETUNREACH: Outcome.UNREACHABLE,
    errno.EHOSTDOWN: Outcome.UNREACHABLE,
    errno.ENETDOWN: Outcome.UNREACHABLE,
    errno.ECONNRESET: Outcome.RESET,
    errno.ECONNABORTED: Outcome.RESET,
    errno.EPIPE: Outcome.RESET,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpInfo:
    """The part of ``struct tcp_info`` that a connect probe uses."""

    state: int
    rtt_us: int  # smoothed RTT; 0 when the kernel has no sample yet
    total_retrans: int  # every retransmitted segment, SYNs included


def parse_tcp_info(raw: bytes) -> TcpInfo:
    """Decode the ``TCP_INFO`` fields we use (native byte order, see the layout above)."""
    if len(raw) < TCP_INFO_BYTES:
        raise ValueError(f"TCP_INFO: {len(raw)} bytes, need at least {TCP_INFO_BYTES}")
    (rtt_us,) = struct.unpack_from("=I", raw, TCPI_RTT_OFFSET)
    (total_retrans,) = struct.unpack_from("=I", raw, TCPI_TOTAL_RETRANS_OFFSET)
    return TcpInfo(state=raw[TCPI_STATE_OFFSET], rtt_us=rtt_us, total_retrans=total_retrans)


def syn_retries_for(timeout_s: float) -> int:
    """``TCP_SYNCNT`` for a probe timeout: the kernel gives up no sooner than the probe.

    The kernel bounds a SYN_SENT socket by time, ``(2^(n+1) - 1) × TCP_TIMEOUT_INIT`` for ``n``
    retries (``tcp_model_timeout``, net/ipv4/tcp_timer.c, 1 s initial RTO), whatever the
    linear/exponential spacing of the retries. The probe's own timeout is the normal exit; the
    cap is the backstop.
    """
    if not timeout_s > 0:
        raise ValueError(f"timeout_s: {timeout_s} is not > 0")
    retries = 1
    while (2 ** (retries + 1) - 1) < timeout_s and retries < MAX_TCP_SYNCNT:
        retries += 1
    return retries


def outcome_for_errno(code: int | None) -> Outcome:
    """The outcome of a connect that failed with ``code``."""
    if code is None:
        return Outcome.ERROR
    return _OUTCOME_BY_ERRNO.get(code, Outcome.ERROR)


def errno_name(code: int | None) -> str:
    """``ECONNREFUSED`` for 111; a readable fallback for anything unknown."""
    if code is None:
        return "no errno"
    return errno.errorcode.get(code, f"errno {code}")


def _route_source(family: int, address: str, port: int) -> str | None:
    """The source address the kernel routes ``address`` from (a UDP connect sends nothing)."""
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            udp.connect((address, port))
            return str(udp.getsockname()[0])
    except OSError:
        return None


def _read_tcp_info(sock: socket.socket) -> TcpInfo | None:
    try:
        return parse_tcp_info(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_BYTES))
    except (OSError, ValueError):
        return None


class TcpConnectProber:
    """Measures the TCP handshake RTT to a peer; see the module docstring."""

    def __init__(self, *, bind_addr: str = "0.0.0.0", clock: Clock) -> None:
        self._bind_addr = bind_addr
        self._clock = clock

    @property
    def kind(self) -> ProbeKind:
        return ProbeKind.TCP

    async def probe(self, peer: PeerModel, *, timeout_s: float) -> ProbeResult:
        """Connect to ``peer`` once; every failure is an outcome, never an exception."""
        time_ns = round(self._clock.now_s() * 1e9)
        result = partial(
            ProbeResult,
            time_ns=time_ns,
            dst=peer.name,
            dst_addr=peer.address,
            dst_port=peer.port,
            kind=ProbeKind.TCP,
            scope=peer.scope,
        )
        try:
            family = (
                socket.AF_INET6
                if ipaddress.ip_address(peer.address).version == 6
                else socket.AF_INET
            )
        except ValueError:
            # Never resolve names here: a probe must not depend on (or load) DNS.
            return result(
                src_addr=self._bind_addr,
                src_port=0,
                outcome=Outcome.ERROR,
                detail=f"peer address {peer.address!r} is not an IP address",
            )
        bind_addr = self._bind_addr
        if family == socket.AF_INET6 and bind_addr == "0.0.0.0":
            bind_addr = "::"
        src_addr, src_port = bind_addr, 0
        sock: socket.socket | None = None
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(0.0)  # non-blocking
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_SYNCNT, syn_retries_for(timeout_s))
            sock.bind((bind_addr, 0))
            src_addr, src_port = sock.getsockname()[:2]
            loop = asyncio.get_running_loop()
            start_ns = self._clock.monotonic_ns()
            try:
                async with asyncio.timeout(timeout_s):
                    await loop.sock_connect(sock, (peer.address, peer.port))
            except TimeoutError as exc:
                src_addr = self._failed_source(family, src_addr, peer)
                info = _read_tcp_info(sock)
                retrans = info.total_retrans if info else 0
                if exc.errno == errno.ETIMEDOUT:
                    detail = f"ETIMEDOUT: the kernel gave up after {retrans} SYN retransmissions"
                else:
                    detail = f"no answer within {timeout_s:g} s ({retrans} SYN retransmissions)"
                return result(
                    src_addr=src_addr,
                    src_port=src_port,
                    outcome=Outcome.TIMEOUT,
                    retransmits=retrans,
                    detail=detail,
                )
            clock_us = (self._clock.monotonic_ns() - start_ns) / 1000
            info = _read_tcp_info(sock)
            local = sock.getsockname()
            src_addr = local[0]
            kernel_rtt_us = info.rtt_us if info is not None and info.rtt_us > 0 else None
            return result(
                src_addr=src_addr,
                src_port=src_port,
                outcome=Outcome.OK,
                rtt_us=float(kernel_rtt_us) if kernel_rtt_us is not None else clock_us,
                rtt_clock_us=clock_us,
                retransmits=info.total_retrans if info is not None else 0,
                detail="" if kernel_rtt_us is not None else "no kernel RTT sample; clock RTT",
            )
        except OSError as exc:
            if src_port:  # bound: the connect itself failed, so name the real source
                src_addr = self._failed_source(family, src_addr, peer)
            info = _read_tcp_info(sock) if sock is not None else None
            return result(
                src_addr=src_addr,
                src_port=src_port,
                outcome=outcome_for_errno(exc.errno),
                retransmits=info.total_retrans if info is not None else 0,
                detail=f"{errno_name(exc.errno)}: {exc.strerror or exc}",
            )
        except Exception as exc:  # noqa: BLE001 - a probe never raises; keep the why as data
            return result(
                src_addr=src_addr,
                src_port=src_port,
                outcome=Outcome.ERROR,
                detail=f"{type(exc).__name__}: {exc}",
            )
        finally:
            if sock is not None:
                sock.close()

    @staticmethod
    def _failed_source(family: int, src_addr: str, peer: PeerModel) -> str:
        # Bound to the wildcard, a failed connect leaves no source address on the socket; the
        # 5-tuple of a failed probe is the evidence of a black hole (PM §5.1), so look it up.
        if src_addr not in ("0.0.0.0", "::"):
            return src_addr
        return _route_source(family, peer.address, peer.port) or src_addr
