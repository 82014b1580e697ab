"""Synthetic probes into a raw store: the I/O side of :mod:`pingmesh.core.analysis.synthetic`.

Used by the tests and the benchmarks. Rows are conformed to the raw store's schema as it is
now: host-noise columns the store does not have (yet) are left out, columns it has that the
generator does not make are null.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from pingmesh.core.analysis.synthetic import columns
from pingmesh.store.raw import RAW_SCHEMA, RawStore

NOISE_FIELDS = (
    pa.field("send_lag_us", pa.float64()),
    pa.field("recv_lag_us", pa.float64()),
    pa.field("dwell_us", pa.float64()),
)


def raw_table(rows: Iterable[Mapping[str, Any]], *, with_noise: bool = True) -> pa.Table:
    """The rows as a table of the raw schema (plus the noise columns the store lacks, if
    ``with_noise``: a store written by an older collector reads them as absent)."""
    schema = RAW_SCHEMA
    if with_noise:
        for field in NOISE_FIELDS:
            if field.name not in schema.names:
                schema = schema.append(field)
    data = columns(rows, schema.names)
    return pa.table({f.name: pa.array(data[f.name], type=f.type) for f in schema}, schema=schema)


def write_rows(raw: RawStore, rows: Iterable[Mapping[str, Any]]) -> list[Path]:
    """Store synthetic rows through :meth:`RawStore.write` (the schema the store accepts)."""
    table = raw_table(rows, with_noise=False)
    return raw.write(table)


def write_rows_with_noise(root: Path, rows: Iterable[Mapping[str, Any]]) -> list[Path]:
    """Store synthetic rows with the host-noise columns, in the raw store's layout, whether
    or not the store's schema has them yet (as files from a newer collector would be)."""
    import pyarrow.compute as pc  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    table = raw_table(rows, with_noise=True)
    if table.num_rows == 0:
        return []
    hours = pc.floor_temporal(table.column("time"), unit="hour")
    written = []
    for i, hour in enumerate(pc.unique(hours).to_pylist()):
        part = table.filter(pc.equal(hours, pa.scalar(hour, type=hours.type))).sort_by("time")
        directory = root / f"dt={hour:%Y-%m-%d}" / f"hour={hour:%H}"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"part-noise{i:04d}-{len(list(directory.iterdir())):06d}.parquet"
        pq.write_table(part, path, compression="zstd")
        written.append(path)
    return written
