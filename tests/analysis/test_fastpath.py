"""The fast path: slices merged into a window give exactly what one pass over raw gives, and the
detectors' facts agree with the definitions (the pure reference)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pingmesh.analysis import queries
from pingmesh.analysis.engine import Expected
from pingmesh.analysis.expected import expected_pairs
from pingmesh.analysis.fastpath import FastPath
from pingmesh.analysis.fileindex import RawFileIndex
from pingmesh.analysis.jobs import JobOptions, compute_window
from pingmesh.config import PinglistConfig
from pingmesh.core.analysis.synthetic import BlackHole, HostNoise, RandomDrop
from pingmesh.store.raw import RawStore
from tests.analysis.synthetic_store import T0, TOPOLOGY, synthetic_rows, write_in_flushes
from tests.core.analysis.reference import window_facts

FAULTS = (
    BlackHole(device="tor:dc1-ps1-t1", share=0.3),
    RandomDrop(device="spine:dc2:1", rate=0.05),
    HostNoise(server="dc2-ps1-t2-h3", start_s=T0 + 200),
)
EXPECTED = expected_pairs(TOPOLOGY, PinglistConfig(inter_dc_per_podset=1))


@pytest.fixture(scope="module")
def rows() -> list[dict[str, object]]:
    return synthetic_rows(T0, T0 + 600, FAULTS)


@pytest.fixture(scope="module")
def raw(rows: list[dict[str, object]], tmp_path_factory: pytest.TempPathFactory) -> RawStore:
    return write_in_flushes(tmp_path_factory.mktemp("raw"), rows)  # type: ignore[arg-type]


def fast_path(raw: RawStore, **kwargs: object) -> FastPath:
    path = FastPath(RawFileIndex(raw), every_s=10, window_s=30, horizon_s=600, **kwargs)  # type: ignore[arg-type]
    for start in range(T0, T0 + 600, 10):
        path.add_slice(start, start + 10)
    return path


@pytest.fixture(scope="module")
def sliced(raw: RawStore) -> Iterator[FastPath]:
    path = fast_path(raw)
    yield path
    path.close()


def test_merged_slices_equal_one_pass_over_raw(raw: RawStore, sliced: FastPath) -> None:
    fast, _ = sliced.run_window("30s", T0 + 570, T0 + 600, now_s=T0 + 610, expected=EXPECTED)
    once = compute_window(raw, "30s", T0 + 570, T0 + 600, now_s=T0 + 610, expected=EXPECTED)
    assert fast.window == once.window
    assert fast.window.records > 0
    assert sorted(fast.sla, key=lambda r: (r.scope, r.entity)) == list(once.sla)
    assert sorted(fast.matrix, key=lambda r: (r.level, r.src, r.dst)) == list(once.matrix)
    assert {r.scope for r in fast.sla} == {"server", "tor", "podset", "dc", "dc_pair", "service"}
    assert {r.level for r in fast.matrix} == {"server", "tor", "podset", "dc"}


def test_facts_agree_with_the_definitions(sliced: FastPath, rows: list[dict[str, object]]) -> None:
    _, facts = sliced.run_window("30s", T0 + 570, T0 + 600, now_s=T0 + 610, expected=EXPECTED)
    for got, start in ((facts.window, T0 + 570), (facts.horizon, T0)):
        want = window_facts(TOPOLOGY, rows, start, T0 + 600)  # type: ignore[arg-type]
        assert (got.start_s, got.end_s) == (want.start_s, want.end_s)
        assert sorted(got.cells, key=lambda c: (c.src_tor, c.dst_tor)) == list(want.cells)
        assert {p.key for p in got.pairs} == {p.key for p in want.pairs}
        wanted = {p.key: p.counts for p in want.pairs}
        for pair in got.pairs:
            truth = wanted[pair.key]
            # Every event is counted; probes from before a pair's first anomaly are not.
            assert (pair.counts.timeouts, pair.counts.drop_events) == (
                truth.timeouts,
                truth.drop_events,
            )
            assert pair.counts.probes <= truth.probes
            if start == T0 + 570:
                assert pair.counts == truth
        assert {k: (s.sent, s.received) for k, s in got.servers.items()} == {
            k: (s.sent, s.received) for k, s in want.servers.items()
        }
        # The horizon's servers are summed per slice, their placement joined after grouping.
        assert {k: (s.tor, s.podset, s.dc) for k, s in got.servers.items()} == {
            k: (s.tor, s.podset, s.dc) for k, s in want.servers.items()
        }
        for pair in got.pairs:
            assert pair.samples  # every anomalous pair carries 5-tuples to trace
    want = window_facts(TOPOLOGY, rows, T0 + 570, T0 + 600)  # type: ignore[arg-type]
    assert {
        k: (s.peers_out, s.dead_out, s.peers_in, s.dead_in, s.noisy_out, s.noisy_in)
        for k, s in facts.window.servers.items()
    } == {
        k: (s.peers_out, s.dead_out, s.peers_in, s.dead_in, s.noisy_out, s.noisy_in)
        for k, s in want.servers.items()
    }
    got_sla = {(e.scope, e.entity): e for e in facts.window.sla}
    want_sla = {(e.scope, e.entity): e for e in want.sla}
    assert got_sla.keys() == want_sla.keys()
    for key, entity in want_sla.items():
        assert got_sla[key].counts == entity.counts
        if entity.p99_us is not None:
            assert got_sla[key].p99_us == pytest.approx(entity.p99_us, rel=queries.ALPHA)
    assert (facts.window_slices, facts.horizon_slices) == (3, 60)


def test_a_slice_reads_only_the_files_it_needs(raw: RawStore) -> None:
    index = RawFileIndex(raw)
    path = FastPath(index, every_s=10, window_s=30, horizon_s=60)
    try:
        info = path.add_slice(T0 + 300, T0 + 310)
        stats = index.statistics()
        listed = len(raw.files_between(T0 + 300, T0 + 310))
        assert info.files <= 3  # files are 5 s flushes: the slice overlaps two or three
        assert stats.files_skipped_total == listed - info.files
        assert stats.footers_read_total == listed
        path.add_slice(T0 + 310, T0 + 320)
        assert index.statistics().footers_read_total == listed  # read once, remembered
        assert info.records > 0
    finally:
        path.close()


def test_old_slices_are_dropped_and_missing_ones_are_just_missing(raw: RawStore) -> None:
    path = FastPath(RawFileIndex(raw), every_s=10, window_s=30, horizon_s=60)
    try:
        for start in range(T0, T0 + 200, 10):
            path.add_slice(start, start + 10)
        assert path.statistics().slices_held == 6  # the horizon
        # A window whose slices were never read is empty, not an error.
        result, facts = path.run_window("30s", T0 + 400, T0 + 430, now_s=T0 + 440)
        assert (result.window.records, result.sla, facts.window.pairs) == (0, (), ())
        assert not path.has_slice(T0)
        assert path.has_slice(T0 + 190)
    finally:
        path.close()


def test_too_many_pairs_for_histograms(raw: RawStore) -> None:
    path = FastPath(
        RawFileIndex(raw),
        every_s=10,
        window_s=30,
        horizon_s=30,
        options=JobOptions(pair_cells_max=10),
    )
    for start in range(T0 + 570, T0 + 600, 10):
        path.add_slice(start, start + 10)
    try:
        result, _ = path.run_window("30s", T0 + 570, T0 + 600, now_s=T0 + 610)
    finally:
        path.close()
    servers = [r for r in result.matrix if r.level == "server"]
    assert servers  # the pairs in trouble
    assert all(r.p50_us is None and (r.failures or r.retransmitted) for r in servers)
    assert {r.level for r in result.matrix} == {"server", "tor", "podset", "dc"}


def test_empty_store(tmp_path: Path) -> None:
    path = FastPath(RawFileIndex(RawStore(tmp_path)), every_s=10, window_s=30, horizon_s=30)
    try:
        assert path.add_slice(T0, T0 + 10).records == 0
        result, facts = path.run_window(
            "30s", T0 - 20, T0 + 10, now_s=T0 + 20, expected=Expected.empty()
        )
        assert result.window.records == 0
        assert facts.ports == {}
        assert path.statistics().slices_empty_total == 1
    finally:
        path.close()
