"""Per-interface bandwidth from the kernel's own counters (the Network Monitor of seed 001).

Theory of operation
-------------------
The kernel already counts every frame each interface sends and receives
(``struct rtnl_link_stats64``, shown in ``/proc/net/dev`` and ``/sys/class/net/IF/statistics``).
Reading those counters costs one small file read per sample, needs no root and no packet
capture, and counts exactly this host's traffic, per interface and per direction. The original
captured packets in promiscuous mode instead, which needs root, costs a copy per packet, and
counts other hosts' frames as this host's upload (reference §5).

*Samples and reports.* Every ``sample_interval_s`` (500 ms) the sampler reads the counters;
the difference from the previous read is one *sample* (bytes and packets each way, and the
monotonic time between the two reads). Every ``report_interval_s`` (1 s) the samples since the
last report are summed into a *report*: the byte and packet counts are exact sums, the rate is
``bytes / seconds covered``, the average packet size ``bytes / packets`` over the whole report,
and the peak is the highest per-sample rate (what sampling faster than reporting buys).
Nothing is averaged over a sliding history, so a report is neither delayed nor smeared by its
neighbours, and summing the reports of an interval gives its exact byte count.

*Counter wrap and resets.* A counter that goes backwards either wrapped or was reset (driver
reload, interface re-created under the same name). A 64-bit counter cannot wrap in practice
(2^64 bytes is 46 years at 100 Gbit/s), so with 64-bit counters (every 64-bit kernel) a
decrease is a reset: the sample is discarded and the new value is the baseline. With 32-bit
counters (``counter_bits=32``: 32-bit kernels and old drivers) a decrease from a value below
2^32 is a wrap and the delta is ``new + 2^32 - old``. An interface whose ``ifindex`` changed
between two reads was deleted and re-created: its counters start again from a new baseline.

*Outlier rule.* A sample is an outlier, discarded and counted (``outliers_total``), when it is
physically impossible:

1. a rate above ``max_rate_bytes_per_s`` in either direction (default 50 GB/s, 400 Gbit/s):
   what a mis-read wrap or a counter glitch produces, never real traffic; or
2. bytes without packets, or packets without bytes, in one direction.

Real bursts are never outliers: they are traffic, and dropping them (as a trimmed mean does)
would make the byte counts wrong. A discarded sample's time is not counted as covered, so the
report's rate stays the rate of what was measured, and ``interval_s`` says how much that was.

*Interfaces appearing and disappearing.* A new interface's first read is only a baseline; a
vanished one leaves the state at once (its samples so far are still reported), and counts as
new if it comes back.

:class:`BandwidthMeter` is the pure core (counters and ``now_ns`` in, reports out);
:class:`BandwidthSampler` is the asyncio shell that reads a :class:`CounterSource` on a
schedule and hands each report to a sink.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pingmesh.clock import Clock

logger = logging.getLogger(__name__)

DEFAULT_MAX_RATE_BYTES_PER_S = 50e9
"""Above this a sample is an outlier: 400 Gbit/s, beyond any NIC a pingmesh agent runs on."""

NATIVE_COUNTER_BITS = 64 if sys.maxsize > 2**32 else 32
"""``unsigned long`` counters of a 32-bit kernel wrap at 2^32; a 64-bit kernel's never do."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InterfaceCounters:
    """The kernel's cumulative counters of one interface at one instant."""

    rx_bytes: int
    rx_packets: int
    tx_bytes: int
    tx_packets: int
    ifindex: int | None = None  # None when the source cannot tell

    def __post_init__(self) -> None:
        for name in ("rx_bytes", "rx_packets", "tx_bytes", "tx_packets"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: {getattr(self, name)} is negative")


@dataclass(frozen=True, slots=True, kw_only=True)
class InterfaceRate:
    """What one interface did during one report: exact counts over ``interval_s`` seconds.

    ``rx`` is download (received), ``tx`` is upload (sent).
    """

    interface: str
    interval_s: float
    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int
    rx_peak_bytes_per_s: float
    tx_peak_bytes_per_s: float

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise ValueError(f"interval_s: {self.interval_s} is not > 0")

    @property
    def rx_bytes_per_s(self) -> float:
        """Download rate, bytes per second."""
        return self.rx_bytes / self.interval_s

    @property
    def tx_bytes_per_s(self) -> float:
        """Upload rate, bytes per second."""
        return self.tx_bytes / self.interval_s

    @property
    def rx_packets_per_s(self) -> float:
        """Received packets per second."""
        return self.rx_packets / self.interval_s

    @property
    def tx_packets_per_s(self) -> float:
        """Sent packets per second."""
        return self.tx_packets / self.interval_s

    @property
    def rx_avg_packet_bytes(self) -> float | None:
        """Average received packet size; None without packets."""
        return self.rx_bytes / self.rx_packets if self.rx_packets else None

    @property
    def tx_avg_packet_bytes(self) -> float | None:
        """Average sent packet size; None without packets."""
        return self.tx_bytes / self.tx_packets if self.tx_packets else None


@dataclass(frozen=True, slots=True, kw_only=True)
class BandwidthReport:
    """One report: every interface that was measured since the previous one.

    ``seq`` counts reports of this sampler from 0; ``start_s``/``end_s`` are wall-clock UTC.
    """

    seq: int
    start_s: float
    end_s: float
    interfaces: tuple[InterfaceRate, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class MeterStatistics:
    """Counters of the meter (``_total``) and the interfaces it follows."""

    interfaces: int
    samples_total: int
    outliers_total: int
    wraps_total: int
    resets_total: int
    interfaces_appeared_total: int
    interfaces_disappeared_total: int
    interfaces_recreated_total: int


@dataclass(slots=True)
class _Accumulated:
    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    tx_packets: int = 0
    covered_ns: int = 0
    rx_peak: float = 0.0
    tx_peak: float = 0.0


@dataclass(slots=True)
class _Interface:
    last: InterfaceCounters
    last_ns: int
    acc: _Accumulated = field(default_factory=_Accumulated)


class BandwidthMeter:
    """The pure core: cumulative counters and instants in, per-report rates out."""

    def __init__(
        self,
        *,
        counter_bits: int = NATIVE_COUNTER_BITS,
        max_rate_bytes_per_s: float = DEFAULT_MAX_RATE_BYTES_PER_S,
        interfaces: Iterable[str] = (),
    ) -> None:
        if counter_bits not in (32, 64):
            raise ValueError(f"counter_bits: {counter_bits} is not 32 or 64")
        if not max_rate_bytes_per_s > 0:
            raise ValueError(f"max_rate_bytes_per_s: {max_rate_bytes_per_s} is not > 0")
        self._bits = counter_bits
        self._max_rate = max_rate_bytes_per_s
        self._only = frozenset(interfaces)
        self._state: dict[str, _Interface] = {}
        self._gone: dict[str, _Accumulated] = {}  # vanished since the last report
        self._samples = 0
        self._outliers = 0
        self._wraps = 0
        self._resets = 0
        self._appeared = 0
        self._disappeared = 0
        self._recreated = 0

    def observe(self, counters: Mapping[str, InterfaceCounters], now_ns: int) -> None:
        """Take one read of every interface's counters, made at monotonic ``now_ns``."""
        for name, current in counters.items():
            if self._only and name not in self._only:
                continue
            state = self._state.get(name)
            if state is None:
                self._state[name] = _Interface(last=current, last_ns=now_ns)
                self._appeared += 1
                continue
            self._sample(name, state, current, now_ns)
        for name in [n for n in self._state if n not in counters]:
            state = self._state.pop(name)
            self._disappeared += 1
            if state.acc.covered_ns:
                self._gone[name] = state.acc

    def take_report(self) -> tuple[InterfaceRate, ...]:
        """The rates of every interface measured since the last call, by name; then reset."""
        rates: list[InterfaceRate] = []
        measured = dict(self._gone)
        self._gone = {}
        for name, state in self._state.items():
            if state.acc.covered_ns:
                measured[name] = state.acc
                state.acc = _Accumulated()
        for name in sorted(measured):
            acc = measured[name]
            rates.append(
                InterfaceRate(
                    interface=name,
                    interval_s=acc.covered_ns / 1e9,
                    rx_bytes=acc.rx_bytes,
                    tx_bytes=acc.tx_bytes,
                    rx_packets=acc.rx_packets,
                    tx_packets=acc.tx_packets,
                    rx_peak_bytes_per_s=acc.rx_peak,
                    tx_peak_bytes_per_s=acc.tx_peak,
                )
            )
        return tuple(rates)

    def statistics(self) -> MeterStatistics:
        """A snapshot of the counters."""
        return MeterStatistics(
            interfaces=len(self._state),
            samples_total=self._samples,
            outliers_total=self._outliers,
            wraps_total=self._wraps,
            resets_total=self._resets,
            interfaces_appeared_total=self._appeared,
            interfaces_disappeared_total=self._disappeared,
            interfaces_recreated_total=self._recreated,
        )

    def _sample(
        self, name: str, state: _Interface, current: InterfaceCounters, now_ns: int
    ) -> None:
        previous, elapsed_ns = state.last, now_ns - state.last_ns
        if elapsed_ns <= 0:
            return  # two reads at one instant: nothing to measure; keep the older baseline
        state.last, state.last_ns = current, now_ns
        if (
            previous.ifindex is not None
            and current.ifindex is not None
            and previous.ifindex != current.ifindex
        ):
            self._recreated += 1
            return
        deltas = [
            self._delta(getattr(previous, f), getattr(current, f))
            for f in ("rx_bytes", "rx_packets", "tx_bytes", "tx_packets")
        ]
        if any(d is None for d in deltas):
            self._resets += 1
            return
        rx_bytes, rx_packets, tx_bytes, tx_packets = (d or 0 for d in deltas)
        elapsed_s = elapsed_ns / 1e9
        rx_rate, tx_rate = rx_bytes / elapsed_s, tx_bytes / elapsed_s
        if (
            rx_rate > self._max_rate
            or tx_rate > self._max_rate
            or (rx_bytes == 0) != (rx_packets == 0)
            or (tx_bytes == 0) != (tx_packets == 0)
        ):
            self._outliers += 1
            logger.debug(
                "%s: outlier sample discarded (rx %g B/s, tx %g B/s)", name, rx_rate, tx_rate
            )
            return
        self._samples += 1
        acc = state.acc
        acc.rx_bytes += rx_bytes
        acc.tx_bytes += tx_bytes
        acc.rx_packets += rx_packets
        acc.tx_packets += tx_packets
        acc.covered_ns += elapsed_ns
        acc.rx_peak = max(acc.rx_peak, rx_rate)
        acc.tx_peak = max(acc.tx_peak, tx_rate)

    def _delta(self, old: int, new: int) -> int | None:
        if new >= old:
            return new - old
        if self._bits == 32 and old < 2**32 and new < 2**32:
            self._wraps += 1
            return new + 2**32 - old
        return None  # a reset: 64-bit counters do not wrap


# -- reading the counters ---------------------------------------------------------------------


class CounterSource(Protocol):
    """Where the counters come from (the kernel; a fake in tests)."""

    def read(self) -> dict[str, InterfaceCounters]:
        """Every interface's counters now; raises OSError if they cannot be read."""
        ...


def parse_proc_net_dev(text: str) -> tuple[dict[str, InterfaceCounters], int]:
    """``/proc/net/dev`` → (counters by interface, number of malformed lines skipped).

    The format (``net/core/net-procfs.c``): two header lines, then ``name: `` followed by 8
    receive fields (bytes, packets, errs, drop, fifo, frame, compressed, multicast) and 8
    transmit fields (bytes, packets, errs, drop, fifo, colls, carrier, compressed).
    """
    counters: dict[str, InterfaceCounters] = {}
    malformed = 0
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        fields = rest.split()
        if not sep or len(fields) < 16 or not name.strip():
            malformed += 1
            continue
        try:
            counters[name.strip()] = InterfaceCounters(
                rx_bytes=int(fields[0]),
                rx_packets=int(fields[1]),
                tx_bytes=int(fields[8]),
                tx_packets=int(fields[9]),
            )
        except ValueError:
            malformed += 1
    return counters, malformed


class ProcNetDevSource:
    """The kernel's counters from ``/proc/net/dev`` (one read for every interface).

    ``path`` may be ``/proc/PID/net/dev`` to read another network namespace (the lab tests do).
    With ``sysfs`` (``/sys/class/net`` of the same namespace) each interface's ``ifindex`` is
    read too, which tells a re-created interface from a live one.
    """

    def __init__(
        self, path: Path = Path("/proc/net/dev"), *, sysfs: Path | None = Path("/sys/class/net")
    ) -> None:
        self.path = path
        self.sysfs = sysfs
        self.malformed_lines_total = 0

    def read(self) -> dict[str, InterfaceCounters]:
        counters, malformed = parse_proc_net_dev(self.path.read_text(encoding="ascii"))
        self.malformed_lines_total += malformed
        if self.sysfs is None:
            return counters
        indexed = {}
        for name, value in counters.items():
            try:
                ifindex: int | None = int((self.sysfs / name / "ifindex").read_bytes())
            except (OSError, ValueError):
                ifindex = None  # gone since /proc/net/dev was read, or another namespace
            indexed[name] = InterfaceCounters(
                rx_bytes=value.rx_bytes,
                rx_packets=value.rx_packets,
                tx_bytes=value.tx_bytes,
                tx_packets=value.tx_packets,
                ifindex=ifindex,
            )
        return indexed


# -- the asyncio shell ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class BandwidthStatistics:
    """A snapshot of the sampler (``/metrics``)."""

    meter: MeterStatistics
    reads_total: int
    read_errors_total: int
    reports_total: int
    sink_errors_total: int


class BandwidthSampler:
    """Reads the counters every ``sample_interval_s``, reports every ``report_interval_s``.

    The schedule is absolute (tick *k* is due at start + k × interval), so a late wake-up does
    not push every later sample back; if the loop falls more than a tick behind it skips to the
    next due tick instead of reading in a burst. Each report goes to ``sink``, which must not
    block (the transport queues it).
    """

    def __init__(
        self,
        *,
        source: CounterSource,
        sink: Callable[[BandwidthReport], None],
        clock: Clock,
        meter: BandwidthMeter | None = None,
        sample_interval_s: float = 0.5,
        report_interval_s: float = 1.0,
    ) -> None:
        if not sample_interval_s > 0:
            raise ValueError(f"sample_interval_s: {sample_interval_s} is not > 0")
        if not report_interval_s >= sample_interval_s:
            raise ValueError(
                f"report_interval_s: {report_interval_s} is less than sample_interval_s "
                f"{sample_interval_s}"
            )
        self._source = source
        self._sink = sink
        self._clock = clock
        self.meter = meter or BandwidthMeter()
        self._sample_ns = round(sample_interval_s * 1e9)
        self._samples_per_report = max(1, round(report_interval_s / sample_interval_s))
        self._seq = 0
        self._reads = 0
        self._read_errors = 0
        self._sink_errors = 0
        self._report_event = asyncio.Event()

    async def run(self) -> None:
        """Sample and report until cancelled."""
        start_ns = self._clock.monotonic_ns()
        self._read(start_ns)
        report_start_s = self._clock.now_s()
        tick = 0
        while True:
            tick += 1
            due_ns = start_ns + tick * self._sample_ns
            now_ns = self._clock.monotonic_ns()
            if now_ns > due_ns + self._sample_ns:  # fell behind: skip to the next due tick
                tick = (now_ns - start_ns) // self._sample_ns + 1
                due_ns = start_ns + tick * self._sample_ns
            await asyncio.sleep(max(0.0, (due_ns - now_ns) / 1e9))
            self._read(self._clock.monotonic_ns())
            if tick % self._samples_per_report == 0:
                end_s = self._clock.now_s()
                self._report(report_start_s, end_s)
                report_start_s = end_s

    async def wait_reports(self, count: int) -> None:
        """Return once at least ``count`` reports have been made."""
        while self._seq < count:
            self._report_event.clear()
            await self._report_event.wait()

    def statistics(self) -> BandwidthStatistics:
        """A snapshot of the counters."""
        return BandwidthStatistics(
            meter=self.meter.statistics(),
            reads_total=self._reads,
            read_errors_total=self._read_errors,
            reports_total=self._seq,
            sink_errors_total=self._sink_errors,
        )

    def _read(self, now_ns: int) -> None:
        try:
            counters = self._source.read()
        except OSError as exc:
            self._read_errors += 1
            logger.warning("cannot read interface counters: %s", exc)
            return
        self._reads += 1
        self.meter.observe(counters, now_ns)

    def _report(self, start_s: float, end_s: float) -> None:
        interfaces = self.meter.take_report()
        report = BandwidthReport(
            seq=self._seq, start_s=start_s, end_s=max(end_s, start_s), interfaces=interfaces
        )
        self._seq += 1
        self._report_event.set()
        if not interfaces:
            return
        try:
            self._sink(report)
        except Exception:  # a sink bug must not stop the measurements
            self._sink_errors += 1
            logger.exception("bandwidth report sink failed")
