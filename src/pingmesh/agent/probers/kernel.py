"""What the kernel tells a prober: ``TCP_INFO``, receive timestamps, ICMP errors, errnos.

Linux-only constants that :mod:`socket` does not export are spelled out here, with where they
come from, so that every prober reads the kernel the same way.

**Receive timestamps** (``SO_TIMESTAMPNS``, Documentation/networking/timestamping.rst): the
kernel stamps each packet when it arrives (``CLOCK_REALTIME``), and ``recvmsg`` hands the stamp
over as ``SCM_TIMESTAMPNS``. An RTT measured from our send time (taken right before the
``send`` call) to that stamp does not include the time the packet then waited for our event
loop; the difference between the stamp and the moment we read the packet *is* that wait
(``recv_lag_us``). Both ends use ``CLOCK_REALTIME``; an NTP step in between shows up as an
absurd value, which the probers detect (negative, or beyond the probe's timeout) and replace
by the monotonic clock's measurement.

**ICMP errors** (``IP_RECVERR``, ip(7)): on a UDP, ping or TCP socket with ``IP_RECVERR`` set,
an ICMP error about a packet we sent is queued on the socket's error queue (``MSG_ERRQUEUE``)
as a ``struct sock_extended_err`` followed by the address of the node that sent the ICMP
error (``SO_EE_OFFENDER``). That is how an unprivileged agent learns "port unreachable",
"host unreachable" or — for traceroute — "time exceeded, from router X".
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from dataclasses import dataclass

from pingmesh.core.probe import Outcome

# asm-generic/socket.h (x86-64, arm64: 64-bit time_t, so the _OLD values).
SO_TIMESTAMPNS = 35
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
# linux/in.h
IP_RECVERR = 11
IP_MTU_DISCOVER = 10
IP_PMTUDISC_DO = 2
# linux/errqueue.h: ee_origin values
SO_EE_ORIGIN_LOCAL = 1
SO_EE_ORIGIN_ICMP = 2
# struct sock_extended_err {u32 ee_errno; u8 ee_origin, ee_type, ee_code, ee_pad;
#                           u32 ee_info; u32 ee_data;} then the offender's sockaddr.
_SOCK_EXTENDED_ERR = struct.Struct("=IBBBBII")
_SOCKADDR_IN = struct.Struct("=HH4s8x")  # family (host order), port (network), address
_TIMESPEC = struct.Struct("=qq")
ANCILLARY_BYTES = 512  # room for a timestamp or an extended error with its offender

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
LINGER_RST = struct.pack("ii", 1, 0)  # l_onoff = 1, l_linger = 0: close() sends RST

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

_FAMILY_CACHE_SIZE = 16384
_family_cache: dict[str, int] = {}


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpInfo:
    """The part of ``struct tcp_info`` that the probers use."""

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


def read_tcp_info(sock: socket.socket) -> TcpInfo | None:
    """``TCP_INFO`` of ``sock``, or ``None`` if the kernel will not say."""
    try:
        return parse_tcp_info(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_BYTES))
    except (OSError, ValueError):
        return None


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
    """The outcome of a socket operation that failed with ``code``."""
    if code is None:
        return Outcome.ERROR
    return _OUTCOME_BY_ERRNO.get(code, Outcome.ERROR)


def errno_name(code: int | None) -> str:
    """``ECONNREFUSED`` for 111; a readable fallback for anything unknown."""
    if code is None:
        return "no errno"
    return errno.errorcode.get(code, f"errno {code}")


def describe_os_error(exc: OSError) -> str:
    """``ECONNREFUSED: Connection refused``: for a probe's detail."""
    return f"{errno_name(exc.errno)}: {exc.strerror or exc}"


def address_family(address: str) -> int | None:
    """``AF_INET`` or ``AF_INET6`` for an IP address literal; ``None`` for anything else.

    Cached: a probe must not pay for parsing the same peer address every time. Names are
    never resolved here: a probe must not depend on (or load) DNS.
    """
    family = _family_cache.get(address)
    if family is not None:
        return family
    try:
        version = ipaddress.ip_address(address).version
    except ValueError:
        return None
    family = socket.AF_INET6 if version == 6 else socket.AF_INET
    if len(_family_cache) >= _FAMILY_CACHE_SIZE:
        _family_cache.clear()
    _family_cache[address] = family
    return family


def wildcard_for(family: int, bind_addr: str) -> str:
    """``bind_addr``, or the IPv6 wildcard when an IPv4 wildcard meets an IPv6 peer."""
    if family == socket.AF_INET6 and bind_addr == "0.0.0.0":
        return "::"
    return bind_addr


WILDCARDS = ("0.0.0.0", "::")


def source_for(bound: str, family: int, address: str, port: int) -> str:
    """The source address of our packets to ``address``: ``bound``, or for a wildcard the one
    the kernel routes from (the 5-tuple of a failed probe is evidence, PM §5.1)."""
    if bound not in WILDCARDS:
        return bound
    return route_source(family, address, port) or bound


def route_source(family: int, address: str, port: int) -> str | None:
    """The source address the kernel routes ``address`` from (a UDP connect sends nothing)."""
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            udp.connect((address, port or 9))
            return str(udp.getsockname()[0])
    except OSError:
        return None


def enable_rx_timestamps(sock: socket.socket) -> None:
    """Ask the kernel to stamp every packet this socket receives (``SO_TIMESTAMPNS``)."""
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)


def rx_timestamp_ns(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    """The ``SCM_TIMESTAMPNS`` stamp (``CLOCK_REALTIME`` ns) among ``recvmsg``'s ancillary data."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = _TIMESPEC.unpack_from(data)
            return int(sec) * 1_000_000_000 + int(nsec)
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class ExtendedError:
    """One entry of a socket's error queue (``struct sock_extended_err`` + offender)."""

    errno: int
    origin: int  # SO_EE_ORIGIN_*
    icmp_type: int
    icmp_code: int
    offender: str | None  # who sent the ICMP error (a router, or the peer itself)

    @property
    def outcome(self) -> Outcome:
        """What the error means for a probe."""
        if self.origin == SO_EE_ORIGIN_ICMP and self.icmp_type == 3 and self.icmp_code == 3:
            return Outcome.REFUSED  # port unreachable: the host is up, nothing listens
        return outcome_for_errno(self.errno)

    def describe(self) -> str:
        """``EHOSTUNREACH (ICMP 3/1 from 198.18.0.1)``: for a probe's detail."""
        where = f" from {self.offender}" if self.offender else ""
        if self.origin == SO_EE_ORIGIN_ICMP:
            return f"{errno_name(self.errno)} (ICMP {self.icmp_type}/{self.icmp_code}{where})"
        return f"{errno_name(self.errno)}{where}"


def parse_extended_error(ancillary: list[tuple[int, int, bytes]]) -> ExtendedError | None:
    """The ``IP_RECVERR`` entry among ``recvmsg(MSG_ERRQUEUE)``'s ancillary data (IPv4)."""
    for level, kind, data in ancillary:
        if level != socket.IPPROTO_IP or kind != IP_RECVERR:
            continue
        if len(data) < _SOCK_EXTENDED_ERR.size:
            return None
        ee_errno, origin, icmp_type, icmp_code, _, _, _ = _SOCK_EXTENDED_ERR.unpack_from(data)
        offender = None
        rest = data[_SOCK_EXTENDED_ERR.size :]
        if len(rest) >= _SOCKADDR_IN.size:
            family, _, raw = _SOCKADDR_IN.unpack_from(rest)
            if family == socket.AF_INET:
                offender = socket.inet_ntoa(raw)
        return ExtendedError(
            errno=ee_errno,
            origin=origin,
            icmp_type=icmp_type,
            icmp_code=icmp_code,
            offender=offender,
        )
    return None
