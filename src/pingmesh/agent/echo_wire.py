"""The bytes of the UDP and TCP echo probes (pure: no sockets, no clock).

Both carry what NetNORAD's UdpPinger and R-Pingmesh carry in their probes: a sequence number
or nonce, the sender's timestamp, and the responder's *dwell* (how long it held the probe,
from the kernel's receive timestamp to its own send), so that the prober can take the
responder's busy-ness out of the RTT and report it as host noise (reference §5, §6.1 item 7).

UDP echo (one datagram each way, same size both ways, so no amplification)::

    0       4     5     8                16               24               32
    | "PMU1" | flag | pad |      seq       |    send_ns     |    dwell_ns    | padding…

``flag`` is 0 in a request and 1 in a reply; the responder copies the request, sets the flag
and fills ``dwell_ns``. ``send_ns`` is the prober's, echoed untouched.

TCP echo (one request on a fresh connection)::

    request:  | "PMT1" | size (u32) | nonce (u64) | body: size - 16 bytes |
    reply:    | "PMT1" | size (u32) | nonce (u64) | the body, echoed | dwell_ns (u64) |

``size`` counts the whole request (16 ≤ size ≤ 64 KiB). The responder streams the body back as
it arrives (it never holds a whole request, so its memory stays bounded by its buffer cap)
and sends the 8-byte trailer once the last request byte is in. A connection whose first four
bytes are not ``PMT1`` gets a plain echo instead.

Integers are big-endian. Padding and bodies repeat the nonce or sequence number's 8 bytes, so
a corrupted echo is detected without keeping a copy of random data.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pingmesh.core.probe import MAX_PAYLOAD_BYTES, MAX_UDP_PAYLOAD_BYTES

UDP_MAGIC = b"PMU1"
UDP_HEADER = struct.Struct("!4sB3xQQQ")
UDP_HEADER_BYTES = UDP_HEADER.size  # 32
UDP_REQUEST = 0
UDP_REPLY = 1
_DWELL_OFFSET = 24

TCP_MAGIC = b"PMT1"
TCP_HEADER = struct.Struct("!4sIQ")
TCP_HEADER_BYTES = TCP_HEADER.size  # 16
TCP_TRAILER = struct.Struct("!Q")
TCP_TRAILER_BYTES = TCP_TRAILER.size  # 8


def fill(pattern: int, size: int) -> bytes:
    """``size`` bytes repeating the 8 bytes of ``pattern``."""
    if size <= 0:
        return b""
    unit = (pattern & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "big")
    return (unit * (size // 8 + 1))[:size]


def udp_size(size_bytes: int) -> int:
    """The datagram size for a peer's ``size_bytes`` (0: just the header)."""
    return min(max(size_bytes, UDP_HEADER_BYTES), MAX_UDP_PAYLOAD_BYTES)


def udp_request(seq: int, send_ns: int, size: int) -> bytes:
    """A request datagram of ``size`` bytes (at least the header)."""
    header = UDP_HEADER.pack(UDP_MAGIC, UDP_REQUEST, seq, send_ns, 0)
    return header + fill(seq, size - UDP_HEADER_BYTES)


@dataclass(frozen=True, slots=True, kw_only=True)
class UdpEcho:
    """A parsed UDP echo datagram."""

    flag: int
    seq: int
    send_ns: int
    dwell_ns: int
    intact: bool  # the padding is what the request carried


def parse_udp(data: bytes) -> UdpEcho | None:
    """The header of a UDP echo datagram, or ``None`` if it is not one."""
    if len(data) < UDP_HEADER_BYTES or data[:4] != UDP_MAGIC:
        return None
    _, flag, seq, send_ns, dwell_ns = UDP_HEADER.unpack_from(data)
    if flag not in (UDP_REQUEST, UDP_REPLY):
        return None
    padding = memoryview(data)[UDP_HEADER_BYTES:]
    intact = padding == fill(seq, len(padding)) if len(padding) else True
    return UdpEcho(flag=flag, seq=seq, send_ns=send_ns, dwell_ns=dwell_ns, intact=intact)


def udp_reply_into(datagram: bytearray, dwell_ns: int) -> None:
    """Turn a request (in place) into its reply: flag 1 and the responder's dwell."""
    datagram[4] = UDP_REPLY
    struct.pack_into("!Q", datagram, _DWELL_OFFSET, max(0, dwell_ns))


def tcp_size(size_bytes: int) -> int:
    """The request size for a peer's ``size_bytes`` (0: just the header)."""
    return min(max(size_bytes, TCP_HEADER_BYTES), MAX_PAYLOAD_BYTES)


def tcp_request(nonce: int, size: int) -> bytes:
    """A framed TCP echo request of ``size`` bytes."""
    if not TCP_HEADER_BYTES <= size <= MAX_PAYLOAD_BYTES:
        raise ValueError(f"size: {size} is outside {TCP_HEADER_BYTES}-{MAX_PAYLOAD_BYTES}")
    return TCP_HEADER.pack(TCP_MAGIC, size, nonce) + fill(nonce, size - TCP_HEADER_BYTES)


def parse_tcp_header(data: bytes) -> tuple[int, int] | None:
    """``(size, nonce)`` of a request header, or ``None`` if it is not a valid one."""
    if len(data) < TCP_HEADER_BYTES:
        return None
    magic, size, nonce = TCP_HEADER.unpack_from(data)
    if magic != TCP_MAGIC or not TCP_HEADER_BYTES <= size <= MAX_PAYLOAD_BYTES:
        return None
    return size, nonce
