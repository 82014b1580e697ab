"""A UDP traceroute without raw sockets, for the lab tests (run inside a namespace).

``python udptrace.py SRC DST --sport 40001 --count 16 --max-ttl 8`` sends, for each source port
``sport + 2k`` and each TTL, one UDP datagram and reads the ICMP answer from the socket's error
queue (``IP_RECVERR``): the offender address and whether it is time-exceeded (a router on the
path) or unreachable (the destination). One JSON line per source port: ``{"sport": …,
"hops": [addr, …], "reached": bool}``; a hop that did not answer is ``null``.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import struct
import sys

IP_RECVERR = 11  # linux/in.h
SO_EE_ORIGIN_ICMP = 2
ICMP_TIME_EXCEEDED = 11
ICMP_DEST_UNREACH = 3
DST_PORT = 33434


def hop(src: str, sport: int, dst: str, ttl: int, timeout_s: float) -> tuple[str | None, bool]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((src, sport))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        sock.sendto(b"pingmesh-lab", (dst, DST_PORT))
        poller = select.poll()
        poller.register(sock, select.POLLERR)
        if not poller.poll(timeout_s * 1000):
            return None, False
        _, ancdata, _, _ = sock.recvmsg(512, 512, socket.MSG_ERRQUEUE)
        for level, kind, data in ancdata:
            if level == socket.IPPROTO_IP and kind == IP_RECVERR:
                _errno, origin, icmp_type, _code = struct.unpack_from("=IBBB", data)
                if origin != SO_EE_ORIGIN_ICMP:
                    continue
                offender = socket.inet_ntoa(data[20:24])  # sockaddr_in after the 16-byte header
                return offender, icmp_type == ICMP_DEST_UNREACH
        return None, False


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--sport", type=int, default=40001)
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--max-ttl", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=1.0)
    args = parser.parse_args()
    for k in range(args.count):
        sport = args.sport + 2 * k
        hops: list[str | None] = []
        reached = False
        for ttl in range(1, args.max_ttl + 1):
            address, reached = hop(args.src, sport, args.dst, ttl, args.timeout)
            hops.append(address)
            if reached:
                break
        sys.stdout.write(json.dumps({"sport": sport, "hops": hops, "reached": reached}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
