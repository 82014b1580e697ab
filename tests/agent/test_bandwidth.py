"""The bandwidth sampler: the pure meter (wrap, resets, outliers, interfaces) and its shell."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pingmesh.agent.bandwidth import (
    BandwidthMeter,
    BandwidthReport,
    BandwidthSampler,
    InterfaceCounters,
    ProcNetDevSource,
    parse_proc_net_dev,
)
from pingmesh.clock import SystemClock

MS = 1_000_000  # ns


def _c(rx: int, tx: int, *, rxp: int | None = None, txp: int | None = None, idx: int | None = 2):
    return InterfaceCounters(
        rx_bytes=rx,
        tx_bytes=tx,
        rx_packets=rx // 100 if rxp is None else rxp,
        tx_packets=tx // 100 if txp is None else txp,
        ifindex=idx,
    )


def test_a_report_sums_samples_exactly_and_keeps_the_peak() -> None:
    meter = BandwidthMeter()
    meter.observe({"eth0": _c(1000, 0)}, 0)
    meter.observe({"eth0": _c(1000 + 50_000, 10_000)}, 500 * MS)  # 100 kB/s rx
    meter.observe({"eth0": _c(1000 + 60_000, 30_000)}, 1000 * MS)  # 20 kB/s rx
    (rate,) = meter.take_report()
    assert (rate.interface, rate.interval_s) == ("eth0", 1.0)
    assert (rate.rx_bytes, rate.tx_bytes) == (60_000, 30_000)
    assert rate.rx_bytes_per_s == 60_000.0
    assert rate.rx_peak_bytes_per_s == 100_000.0
    assert (rate.rx_packets, rate.tx_packets) == (600, 300)
    assert rate.rx_avg_packet_bytes == 100.0
    assert meter.take_report() == ()  # nothing measured since


def test_the_first_read_of_an_interface_is_only_a_baseline() -> None:
    meter = BandwidthMeter()
    meter.observe({"eth0": _c(10**12, 10**12)}, 0)
    assert meter.take_report() == ()
    assert meter.statistics().interfaces_appeared_total == 1


def test_a_32_bit_counter_wraps() -> None:
    meter = BandwidthMeter(counter_bits=32)
    meter.observe({"eth0": _c(2**32 - 1000, 0, rxp=2**32 - 10, txp=0)}, 0)
    meter.observe({"eth0": _c(500, 0, rxp=5, txp=0)}, 1000 * MS)
    (rate,) = meter.take_report()
    assert (rate.rx_bytes, rate.rx_packets) == (1500, 15)
    assert meter.statistics().wraps_total == 2  # bytes and packets


def test_a_64_bit_counter_that_goes_back_was_reset() -> None:
    meter = BandwidthMeter(counter_bits=64)
    meter.observe({"eth0": _c(5_000_000, 0)}, 0)
    meter.observe({"eth0": _c(1000, 0)}, 500 * MS)  # reset: discarded, new baseline
    meter.observe({"eth0": _c(3000, 0)}, 1000 * MS)
    (rate,) = meter.take_report()
    assert (rate.rx_bytes, rate.interval_s) == (2000, 0.5)
    assert meter.statistics().resets_total == 1


def test_a_recreated_interface_starts_from_a_new_baseline() -> None:
    meter = BandwidthMeter()
    meter.observe({"veth0": _c(1000, 1000, idx=7)}, 0)
    meter.observe({"veth0": _c(90_000, 90_000, idx=9)}, 500 * MS)  # same name, new device
    assert meter.take_report() == ()
    meter.observe({"veth0": _c(91_000, 90_000, idx=9)}, 1000 * MS)
    (rate,) = meter.take_report()
    assert rate.rx_bytes == 1000
    assert meter.statistics().interfaces_recreated_total == 1


def test_outliers_are_impossible_samples_and_are_discarded() -> None:
    meter = BandwidthMeter(max_rate_bytes_per_s=1e6)
    meter.observe({"eth0": _c(0, 0)}, 0)
    meter.observe({"eth0": _c(900_000, 0)}, 1000 * MS)  # 0.9 MB/s: a real burst, kept
    meter.observe({"eth0": _c(900_000 + 2_000_000, 0)}, 2000 * MS)  # 2 MB/s > cap
    meter.observe({"eth0": _c(2_900_500, 0, rxp=29_000, txp=0)}, 3000 * MS)  # bytes, 0 packets
    meter.observe({"eth0": _c(2_901_000, 0, rxp=29_010, txp=0)}, 4000 * MS)
    (rate,) = meter.take_report()
    assert rate.rx_bytes == 900_000 + 500  # the burst and the last sample
    assert rate.interval_s == 2.0  # the discarded seconds are not counted as covered
    stats = meter.statistics()
    assert (stats.outliers_total, stats.samples_total) == (2, 2)


def test_vanished_interfaces_are_reported_then_forgotten() -> None:
    meter = BandwidthMeter()
    meter.observe({"eth0": _c(0, 0), "eth1": _c(0, 0)}, 0)
    meter.observe({"eth0": _c(100, 0), "eth1": _c(200, 0)}, 500 * MS)
    meter.observe({"eth0": _c(300, 0)}, 1000 * MS)  # eth1 gone
    assert [r.interface for r in meter.take_report()] == ["eth0", "eth1"]
    meter.observe({"eth0": _c(300, 0), "eth1": _c(5000, 0)}, 1500 * MS)  # back: a baseline
    meter.observe({"eth0": _c(300, 0), "eth1": _c(5100, 0)}, 2000 * MS)
    report = {r.interface: r for r in meter.take_report()}
    assert report["eth1"].rx_bytes == 100
    stats = meter.statistics()
    assert (stats.interfaces_disappeared_total, stats.interfaces_appeared_total) == (1, 3)


def test_only_the_configured_interfaces_are_measured() -> None:
    meter = BandwidthMeter(interfaces=["eth0"])
    meter.observe({"eth0": _c(0, 0), "lo": _c(0, 0)}, 0)
    meter.observe({"eth0": _c(100, 0), "lo": _c(100, 0)}, 1000 * MS)
    assert [r.interface for r in meter.take_report()] == ["eth0"]


def test_a_meter_refuses_nonsense_settings() -> None:
    with pytest.raises(ValueError, match="counter_bits"):
        BandwidthMeter(counter_bits=16)
    with pytest.raises(ValueError, match="max_rate"):
        BandwidthMeter(max_rate_bytes_per_s=0)
    with pytest.raises(ValueError, match="negative"):
        InterfaceCounters(rx_bytes=-1, rx_packets=0, tx_bytes=0, tx_packets=0)


@given(
    st.lists(
        st.tuples(
            st.integers(0, 10**7), st.integers(0, 10**7), st.integers(1, 2000), st.booleans()
        ),
        min_size=1,
        max_size=40,
    )
)
def test_reports_add_up_to_the_counters_whatever_the_cut(
    steps: list[tuple[int, int, int, bool]],
) -> None:
    """Summed over reports, bytes and seconds equal the counters' and the clock's deltas."""
    meter = BandwidthMeter(counter_bits=32)
    rx = tx = 2**32 - 5_000_000  # starts near the wrap
    now = 0
    meter.observe({"e": _c(rx, tx, rxp=0, txp=0)}, now)
    rxp = txp = 0
    total_rx = total_tx = 0
    rates = []
    for drx, dtx, dt_ms, cut in steps:
        rx, tx, now = (rx + drx) % 2**32, (tx + dtx) % 2**32, now + dt_ms * MS
        rxp, txp = rxp + (1 if drx else 0), txp + (1 if dtx else 0)
        total_rx, total_tx = total_rx + drx, total_tx + dtx
        meter.observe({"e": _c(rx, tx, rxp=rxp, txp=txp)}, now)
        if cut:
            rates.extend(meter.take_report())
    rates.extend(meter.take_report())
    assert sum(r.rx_bytes for r in rates) == total_rx
    assert sum(r.tx_bytes for r in rates) == total_tx
    assert sum(r.interval_s for r in rates) == pytest.approx(now / 1e9)


PROC_NET_DEV = (
    "Inter-|   Receive                                                |  Transmit\n"
    " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs "
    "drop fifo colls carrier compressed\n"
    "    lo: 243795742  351247    0    0    0     0          0         0 243795742  351247    0"
    "    0    0     0       0          0\n"
    """\
  eth0: 18446744073709551615 12 0 0 0 0 0 0 77 3 0 0 0 0 0 0
broken line without a colon
  short: 1 2 3
"""
)


def test_proc_net_dev_is_parsed_and_malformed_lines_are_counted() -> None:
    counters, malformed = parse_proc_net_dev(PROC_NET_DEV)
    assert counters["lo"].rx_bytes == 243795742
    assert counters["lo"].tx_packets == 351247
    assert (counters["eth0"].rx_bytes, counters["eth0"].tx_bytes) == (2**64 - 1, 77)
    assert malformed == 2


def test_the_proc_source_reads_a_real_file_and_ifindex_from_sysfs(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.write_text(PROC_NET_DEV)
    sysfs = tmp_path / "sys"
    (sysfs / "lo").mkdir(parents=True)
    (sysfs / "lo" / "ifindex").write_text("1\n")
    source = ProcNetDevSource(dev, sysfs=sysfs)
    counters = source.read()
    assert counters["lo"].ifindex == 1
    assert counters["eth0"].ifindex is None
    assert source.malformed_lines_total == 2


def test_the_real_kernel_counters_have_loopback() -> None:
    counters = ProcNetDevSource().read()
    assert counters["lo"].ifindex == 1


class _FakeSource:
    """Counters that grow by a fixed amount on every read; can fail on demand."""

    def __init__(self) -> None:
        self.reads = 0
        self.fail = False

    def read(self) -> dict[str, InterfaceCounters]:
        if self.fail:
            raise OSError("counters unreadable")
        self.reads += 1
        n = self.reads
        return {"eth0": _c(n * 1000, n * 10, rxp=n, txp=n)}


async def test_the_sampler_reports_on_schedule_and_survives_cancellation() -> None:
    source = _FakeSource()
    reports: list[BandwidthReport] = []
    sampler = BandwidthSampler(
        source=source,
        sink=reports.append,
        clock=SystemClock(),
        sample_interval_s=0.01,
        report_interval_s=0.02,
    )
    task = asyncio.create_task(sampler.run())
    async with asyncio.timeout(10):
        await sampler.wait_reports(3)
    source.fail = True
    async with asyncio.timeout(10):
        while sampler.statistics().read_errors_total == 0:
            await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stats = sampler.statistics()
    assert stats.reports_total >= 3
    assert [r.seq for r in reports] == list(range(len(reports)))
    assert all(r.end_s >= r.start_s for r in reports)
    # Every byte counted between the first and the last successful read is in a report,
    # or waits in the meter for the next report.
    pending = sum(r.rx_bytes for r in sampler.meter.take_report())
    assert sum(i.rx_bytes for r in reports for i in r.interfaces) + pending == (
        (source.reads - 1) * 1000
    )


async def test_a_failing_sink_does_not_stop_the_measurements() -> None:
    def sink(_report: BandwidthReport) -> None:
        raise RuntimeError("sink bug")

    sampler = BandwidthSampler(
        source=_FakeSource(),
        sink=sink,
        clock=SystemClock(),
        sample_interval_s=0.01,
        report_interval_s=0.01,
    )
    task = asyncio.create_task(sampler.run())
    async with asyncio.timeout(10):
        await sampler.wait_reports(3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sampler.statistics().sink_errors_total >= 2


def test_the_sampler_refuses_a_report_interval_below_the_sample_interval() -> None:
    with pytest.raises(ValueError, match="report_interval_s"):
        BandwidthSampler(
            source=_FakeSource(),
            sink=lambda _r: None,
            clock=SystemClock(),
            sample_interval_s=1.0,
            report_interval_s=0.5,
        )
