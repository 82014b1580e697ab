"""What the datagram probers (UDP echo, ICMP echo) share: their books, their timing, their reads.

Both send one datagram per probe and match the answer by a sequence number, on callbacks
(:class:`~pingmesh.agent.probers.StartingProber`): no task or future per probe.

- :class:`DatagramProber` keeps the books: the probes waiting for an answer by sequence number,
  with one timer for all their timeouts
  (:class:`~pingmesh.agent.probers.deadlines.Deadlines`), the counters every datagram prober
  has, and ``close``; a prober supplies how a probe is made, sent, forgotten and timed out,
  and which sockets it closes.
- :class:`DatagramProbe` is one probe in flight; :meth:`DatagramProbe.answered` times its
  answer as ``ping`` does: from the send time, read right before ``sendto``, to the kernel's
  receive stamp (``SO_TIMESTAMPNS``), so the agent's own delay in reading it is
  ``recv_lag_us``, not RTT (:mod:`~pingmesh.agent.probers.kernel`). A missing or absurd stamp
  (the wall clock stepped) falls back to the monotonic clock.
- :func:`read_error_queue` and :func:`read_datagrams` read what a socket holds, a bounded
  number of times per wake-up, so a flood cannot starve the rest of the agent.
- :class:`SourceAddresses`: the address the kernel routes each peer from, looked up once.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from pingmesh.agent.probers import OnDone, Peer, StartingProber
from pingmesh.agent.probers.deadlines import Deadlines
from pingmesh.agent.probers.kernel import (
    ANCILLARY_BYTES,
    WILDCARDS,
    address_family,
    describe_os_error,
    outcome_for_errno,
    rx_timestamp_ns,
    source_for,
)
from pingmesh.clock import Clock
from pingmesh.core.probe import Outcome, ProbeResult

MAX_READS_PER_WAKEUP = 256
_MAX_SOURCES = 65536

Ancillary = list[tuple[int, int, bytes]]
PR = TypeVar("PR", bound="DatagramProber[Any]")
P = TypeVar("P", bound="DatagramProbe[Any]")


class DatagramProbe(Generic[PR]):
    """One datagram probe in flight; a prober's subclass says what its result looks like."""

    __slots__ = (
        "_on_done",
        "_prober",
        "_send_lag_us",
        "peer",
        "send_mono_ns",
        "send_real_ns",
        "seq",
        "size",
        "time_ns",
        "timeout_s",
    )

    def __init__(
        self, prober: PR, peer: Peer, timeout_s: float, on_done: OnDone, send_lag_us: float | None
    ) -> None:
        self._prober = prober
        self.peer = peer
        self.timeout_s = timeout_s
        self._on_done: OnDone | None = on_done
        self._send_lag_us = send_lag_us
        self.seq = 0
        self.size = 0
        self.time_ns = 0
        self.send_real_ns = 0
        self.send_mono_ns = 0

    def begin(self) -> None:
        """Send the probe (see :meth:`DatagramProber._send`)."""
        prober = self._prober
        self.time_ns = round(prober._clock.now_s() * 1e9)
        prober._send(self)

    def cancel(self) -> None:
        """Abandon the probe: off the books, and its callback will not run."""
        self._prober._forget(self)
        self._on_done = None

    def abandon(self, detail: str) -> None:
        """End the probe as ``error`` (it could not be sent)."""
        self._prober._forget(self)
        self.finish(Outcome.ERROR, detail=detail)

    def finish(self, outcome: Outcome, **fields: Any) -> None:
        """Hand the result to the callback, once (later calls do nothing)."""
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            on_done(self._result(outcome, fields))

    def fail(self, exc: OSError) -> None:
        """The probe could not be sent."""
        self.finish(outcome_for_errno(exc.errno), detail=describe_os_error(exc))

    def answered(
        self,
        ancillary: Ancillary,
        now_real_ns: int,
        now_mono_ns: int,
        *,
        dwell_us: float | None = None,
        detail: str = "",
    ) -> None:
        """The answer arrived (read at ``now_*``): finish ``ok`` with its RTT, less the
        responder's ``dwell_us`` if it reported one (see the module docstring)."""
        clock_us = (now_mono_ns - self.send_mono_ns) / 1000
        stamp_ns = rx_timestamp_ns(ancillary)
        wire_us = None if stamp_ns is None else (stamp_ns - self.send_real_ns) / 1000
        recv_lag_us = None
        if wire_us is None or not 0 <= wire_us <= clock_us + 1000:
            wire_us = clock_us  # no stamp, or the wall clock stepped: trust the monotonic one
        elif stamp_ns is not None:
            recv_lag_us = max(0.0, (now_real_ns - stamp_ns) / 1000)
        self.finish(
            Outcome.OK,
            rtt_us=wire_us if dwell_us is None else max(0.0, wire_us - dwell_us),
            rtt_clock_us=clock_us,
            dwell_us=dwell_us,
            recv_lag_us=recv_lag_us,
            detail=detail,
        )

    def _result(self, outcome: Outcome, fields: dict[str, Any]) -> ProbeResult:
        raise NotImplementedError


class DatagramProber(StartingProber, Generic[P]):
    """The books of a datagram prober; see the module docstring."""

    def __init__(self, *, bind_addr: str, clock: Clock) -> None:
        self.bind_addr = bind_addr
        self._clock = clock
        # key (sequence number) -> probe; before expiring, read what waits in the sockets
        # (a busy loop's backlog is not a lost answer).
        self._outstanding: Deadlines[int, P] = Deadlines(
            clock=clock, on_expire=self._on_expired, drain=self._drain
        )
        self._sources = SourceAddresses(bind_addr)
        self._sent = 0
        self._answered = 0
        self._lost = 0
        self._stray = 0

    def close(self) -> None:
        """Close the sockets; probes still waiting end as if cancelled."""
        for probe in self._outstanding.values():
            probe.cancel()
        self._outstanding.clear()
        self._close_sockets()

    def _sent_waiting(self, key: int, probe: P) -> None:
        """``probe`` is sent: wait for its answer under ``key``."""
        self._sent += 1
        self._outstanding.add(key, probe, probe.timeout_s)

    # -- what a prober supplies ---------------------------------------------------------------

    def _send(self, probe: P) -> None:
        """Send ``probe`` (then :meth:`_sent_waiting`), or finish it with why it was not sent."""
        raise NotImplementedError

    def _forget(self, probe: P) -> None:
        """Take ``probe`` off the books (if it is on them)."""
        raise NotImplementedError

    def _on_expired(self, key: int, probe: P) -> None:
        """``probe`` timed out; :class:`Deadlines` has already taken it out of the table."""
        raise NotImplementedError

    def _drain(self) -> None:
        """Read the answers already in the sockets (before timeouts are declared)."""
        raise NotImplementedError

    def _close_sockets(self) -> None:
        raise NotImplementedError


class SourceAddresses:
    """The source address of our datagrams to each peer: the bound one, or the one the kernel
    routes from (looked up once per peer address, at most 65,536 remembered)."""

    __slots__ = ("_bind_addr", "_found", "_wildcard")

    def __init__(self, bind_addr: str) -> None:
        self._bind_addr = bind_addr
        self._wildcard = bind_addr in WILDCARDS
        self._found: dict[str, str] = {}

    def lookup(self, address: str, port: int) -> str:
        """The source address towards ``(address, port)``."""
        if not self._wildcard:
            return self._bind_addr
        found = self._found.get(address)
        if found is None:
            family = address_family(address) or socket.AF_INET
            found = source_for(self._bind_addr, family, address, port)
            if len(self._found) >= _MAX_SOURCES:
                self._found.clear()
            self._found[address] = found
        return found


def read_error_queue(
    sock: socket.socket, recv_bytes: int, on_error: Callable[[bytes, Ancillary], None]
) -> None:
    """Hand the entries of ``sock``'s error queue (``IP_RECVERR``) to ``on_error``."""
    for _ in range(MAX_READS_PER_WAKEUP):
        try:
            data, ancillary, _, _ = sock.recvmsg(recv_bytes, ANCILLARY_BYTES, socket.MSG_ERRQUEUE)
        except OSError:  # EAGAIN: the queue is empty
            return
        on_error(data, ancillary)


def read_datagrams(
    sock: socket.socket, recv_bytes: int, on_datagram: Callable[[bytes, Ancillary, Any], None]
) -> None:
    """Hand the datagrams waiting in ``sock`` to ``on_datagram(data, ancillary, source)``."""
    for _ in range(MAX_READS_PER_WAKEUP):
        try:
            data, ancillary, _, source = sock.recvmsg(recv_bytes, ANCILLARY_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            continue  # a pending ICMP error (sk_err), read from the error queue instead
        on_datagram(data, ancillary, source)
