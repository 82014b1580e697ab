"""One fresh TCP connection for one probe: connect, (TLS), send, kernel-stamped receive.

The TCP echo and HTTP(S) probers share this: :func:`run_stream_probe` is the whole life of
such a probe, from the socket's set-up to the mapping of every way it can fail to an outcome
(probe failures are data); a prober supplies only its exchange over the connected stream.
:class:`ProbeStream` works on a plain non-blocking socket with the
event loop's readiness callbacks, not on asyncio streams, because streams hide ``recvmsg``
and with it the kernel's receive timestamps (``SO_TIMESTAMPNS``): with them, "first byte"
and "last byte" are when the bytes *arrived*, not when our event loop got round to them.
TLS runs over :class:`ssl.MemoryBIO` pairs for the same reason: the bytes still come from our
``recvmsg``.

Like every prober, it bounds its socket: ``SO_LINGER`` 0 (close sends RST, no TIME_WAIT),
``TCP_SYNCNT`` from the probe timeout, ``TCP_NODELAY`` (a request is one write).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from pingmesh.agent.probers import Peer
from pingmesh.agent.probers.kernel import (
    ANCILLARY_BYTES,
    LINGER_RST,
    WILDCARDS,
    TcpInfo,
    address_family,
    describe_os_error,
    enable_rx_timestamps,
    outcome_for_errno,
    read_tcp_info,
    rx_timestamp_ns,
    source_for,
    syn_retries_for,
    wildcard_for,
)
from pingmesh.clock import Clock
from pingmesh.core.probe import Outcome, ProbeKind, ProbeResult

_READ_BYTES = 65536


class ProbeStream:
    """A non-blocking TCP socket for one probe; use as a context manager (always closed)."""

    def __init__(self, family: int, bind_addr: str, timeout_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        self.family = family
        self.src_addr = wildcard_for(family, bind_addr)
        self.src_port = 0
        self._tls: ssl.SSLObject | None = None
        self._incoming: ssl.MemoryBIO | None = None
        self._outgoing: ssl.MemoryBIO | None = None
        self.first_rx_ns: int | None = None  # kernel stamp (CLOCK_REALTIME) of the first byte
        self.last_rx_ns: int | None = None  # … and of the latest bytes received
        sock = self.sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(0.0)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_SYNCNT, syn_retries_for(timeout_s))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            enable_rx_timestamps(sock)
            if self.src_addr not in WILDCARDS:
                sock.bind((self.src_addr, 0))
        except BaseException:
            sock.close()
            raise

    def __enter__(self) -> ProbeStream:
        return self

    def __exit__(self, *_: object) -> None:
        self.sock.close()

    def tcp_info(self) -> TcpInfo | None:
        """The kernel's view of the connection (RTT, retransmissions)."""
        return read_tcp_info(self.sock)

    def failed_source(self, address: str, port: int) -> str:
        """The source address of a probe whose connect failed (see the TCP prober)."""
        return source_for(self.src_addr, self.family, address, port)

    async def connect(self, address: str, port: int) -> None:
        """Connect; the 5-tuple is known (``src_addr``/``src_port``) even if this fails."""
        sock = self.sock
        with contextlib.suppress(BlockingIOError, InterruptedError):
            sock.connect((address, port))
        self.src_addr, self.src_port = sock.getsockname()[:2]
        await self._wait(writable=True)
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            raise OSError(code, os.strerror(code))

    async def start_tls(self, context: ssl.SSLContext, server_hostname: str | None) -> None:
        """Run the TLS handshake over the connection."""
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(
            self._incoming, self._outgoing, server_side=False, server_hostname=server_hostname
        )
        while True:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush_tls()
                if not await self._feed_tls():
                    raise ConnectionResetError(
                        "connection closed during the TLS handshake"
                    ) from None
                continue
            await self._flush_tls()
            return

    async def send_all(self, data: bytes) -> None:
        """Send every byte (through TLS when it is on)."""
        if self._tls is not None:
            self._tls.write(data)
            await self._flush_tls()
            return
        await self._send_raw(data)

    async def receive(self) -> bytes:
        """The next bytes (``b""`` at end of stream), stamping ``first_rx_ns``/``last_rx_ns``."""
        if self._tls is None:
            return await self._recv_raw()
        while True:
            try:
                return self._tls.read(_READ_BYTES)
            except ssl.SSLWantReadError:
                if not await self._feed_tls():
                    return b""
            except ssl.SSLZeroReturnError:
                return b""

    async def _send_raw(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = self.sock.send(view)
            except (BlockingIOError, InterruptedError):
                await self._wait(writable=True)
                continue
            view = view[sent:]

    async def _recv_raw(self) -> bytes:
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(_READ_BYTES, ANCILLARY_BYTES)
            except (BlockingIOError, InterruptedError):
                await self._wait(writable=False)
                continue
            if data:
                stamp = rx_timestamp_ns(ancillary) or time.time_ns()
                if self.first_rx_ns is None:
                    self.first_rx_ns = stamp
                self.last_rx_ns = stamp
            return data

    async def _flush_tls(self) -> None:
        assert self._outgoing is not None
        pending = self._outgoing.read()
        if pending:
            await self._send_raw(pending)

    async def _feed_tls(self) -> bool:
        assert self._incoming is not None
        data = await self._recv_raw()
        if not data:
            self._incoming.write_eof()
            return False
        self._incoming.write(data)
        return True

    async def _wait(self, *, writable: bool) -> None:
        future: asyncio.Future[None] = self._loop.create_future()
        fd = self.sock.fileno()

        def ready() -> None:
            if not future.done():
                future.set_result(None)

        if writable:
            self._loop.add_writer(fd, ready)
        else:
            self._loop.add_reader(fd, ready)
        try:
            await future
        finally:
            if writable:
                self._loop.remove_writer(fd)
            else:
                self._loop.remove_reader(fd)


class StreamProbe:
    """One stream probe under way: its connection, how far it got, what it measured so far.

    ``stage`` names the step under way (``connect`` first) in a failure's detail; ``fields``
    are measurements that a failed probe still reports (e.g. ``connect_us``).
    """

    __slots__ = ("_clock", "fields", "make", "peer", "stage", "start_ns", "stream")

    def __init__(
        self, stream: ProbeStream, peer: Peer, clock: Clock, make: Callable[..., ProbeResult]
    ) -> None:
        self.stream = stream
        self.peer = peer
        self._clock = clock
        self.make = make  # ProbeResult with the probe's fixed fields filled in
        self.stage = "connect"
        self.fields: dict[str, Any] = {}
        self.start_ns = 0  # monotonic, right before connect

    async def connect(self) -> float:
        """Connect to the peer; the handshake's RTT in µs: the kernel's SYN RTT, else the
        monotonic clock's (which also holds our event loop's delay)."""
        clock = self._clock
        self.start_ns = clock.monotonic_ns()
        await self.stream.connect(self.peer.address, self.peer.port)
        clock_us = (clock.monotonic_ns() - self.start_ns) / 1000
        info = self.stream.tcp_info()
        return float(info.rtt_us) if info and info.rtt_us > 0 else clock_us

    def result(self, **fields: Any) -> ProbeResult:
        """The probe's result over the connection, with the kernel's retransmission count."""
        stream = self.stream
        info = stream.tcp_info()
        return self.make(
            src_addr=stream.src_addr,
            src_port=stream.src_port,
            retransmits=info.total_retrans if info else 0,
            **fields,
        )

    def failed(self, outcome: Outcome, detail: str) -> ProbeResult:
        """The probe failed at ``stage``: a failed connect names the routed source address."""
        stream = self.stream
        info = stream.tcp_info()
        src = stream.src_addr
        if self.stage == "connect":
            src = stream.failed_source(self.peer.address, self.peer.port)
        return self.make(
            src_addr=src,
            src_port=stream.src_port,
            outcome=outcome,
            retransmits=info.total_retrans if info else 0,
            detail=detail,
            **self.fields,
        )


async def run_stream_probe(
    peer: Peer,
    *,
    kind: ProbeKind,
    clock: Clock,
    bind_addr: str,
    timeout_s: float,
    send_lag_us: float | None,
    exchange: Callable[[StreamProbe], Awaitable[ProbeResult]],
    timeout_detail: str,
    size_bytes: int = 0,
) -> ProbeResult:
    """One probe over a fresh connection to ``peer``; never raises (but on cancellation).

    ``exchange`` connects (:meth:`StreamProbe.connect`) and does the probe's work, all within
    ``timeout_s``; a timeout, an ``OSError`` or any other exception becomes an outcome with
    its detail. ``timeout_detail`` is formatted with ``stage`` and ``timeout_s``.
    """
    make = partial(
        ProbeResult,
        time_ns=round(clock.now_s() * 1e9),
        dst=peer.name,
        dst_addr=peer.address,
        dst_port=peer.port,
        kind=kind,
        scope=peer.scope,
        size_bytes=size_bytes,
        send_lag_us=send_lag_us,
    )
    family = address_family(peer.address)
    if family is None:
        return make(
            src_addr=bind_addr,
            src_port=0,
            outcome=Outcome.ERROR,
            detail=f"peer address {peer.address!r} is not an IP address",
        )
    try:
        with ProbeStream(family, bind_addr, timeout_s) as stream:
            probe = StreamProbe(stream, peer, clock, make)
            try:
                async with asyncio.timeout(timeout_s):
                    return await exchange(probe)
            except TimeoutError:
                detail = timeout_detail.format(stage=probe.stage, timeout_s=timeout_s)
                return probe.failed(Outcome.TIMEOUT, detail)
            except OSError as exc:
                detail = f"{probe.stage}: {describe_os_error(exc)}"
                return probe.failed(outcome_for_errno(exc.errno), detail[:200])
    except OSError as exc:  # the socket itself could not be set up (bind, EMFILE…)
        return make(
            src_addr=bind_addr,
            src_port=0,
            outcome=outcome_for_errno(exc.errno),
            detail=f"socket: {describe_os_error(exc)}"[:200],
        )
    except Exception as exc:  # noqa: BLE001 - a probe never raises; keep the why as data
        return make(
            src_addr=bind_addr,
            src_port=0,
            outcome=Outcome.ERROR,
            detail=f"{type(exc).__name__}: {exc}"[:200],
        )
