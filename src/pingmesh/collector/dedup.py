"""The collector's memory of stored batch ids: bounded by the horizon, compact, hour by hour.

Theory of operation
-------------------
*What must be remembered, and for how long.*  The collector refuses a batch that has a record
older than ``now - horizon_s`` (see :mod:`pingmesh.collector.service`), so a copy of a stored
batch can only be accepted while the batch's *oldest record* is younger than the horizon: its
id is needed until ``oldest_record + horizon_s`` and never after.  Ids are therefore kept in
buckets by the UTC hour of their batch's oldest record -- the raw store's partition hour, so a
bucket rebuilt at start-up is one partition -- and a whole bucket is dropped once its hour
ended more than ``horizon_s + slack_s`` ago.  Agents' clocks do not matter (the refusal and the
expiry both compare the records' times with the collector's clock); ``slack_s`` covers the
collector's own clock stepping back.

*Compact.*  At 1,000 agents that upload every 5 s, a 6 h horizon holds 4.3 M ids; as Python
strings in a dict they took 105 bytes each, 450 MB (``bench/collector_dedup.py``).  Here an id is
its 128-bit BLAKE2b digest (RFC 7693): 16 bytes inside a sorted ``bytes`` run, plus a fence
(below) for one id in 64: about 17 bytes an id.  A new batch mistaken for a duplicate needs its
digest to equal one of the N remembered ones: probability N / 2**128 per lookup, about 1e-32 at
N = 4 M, far below any disk's error rate.

*Runs.*  New ids go into a small set; at :data:`PACK_AT` ids it is sorted into a run, and the
newest run is merged with the one before it while it is at least as large -- the logarithmic
method (Bentley and Saxe, "Decomposable searching problems I: static-to-dynamic transformation",
J. Algorithms 1, 1980) -- so a bucket has O(log n) runs and every id is merged O(log n) times (a
cascade of merges is done as one).  Merges stop at :data:`MAX_RUN_IDS`, which bounds the longest
pause of the event loop (one merge into 64 Ki ids, 10-20 ms); an hour at 1,000 agents is then
about 15 runs.  A lookup bisects each run's fences, a list of every 64th digest (in C, unlike a
bisection of the blob through a Python ``__getitem__``, ten times slower), then searches the
kilobyte between two fences.

*One bucket per lookup.*  A retry carries the same records as the original, hence the same
oldest record: it is looked for in that hour's bucket only, so a lookup costs the same
whatever the horizon.  After a rebuild the id is in that bucket too (its partition is inside
the horizon whenever a copy can still be accepted).  A batch that reused a stored id with
records of another hour would not be recognised and would be stored: agents' ids are unique
(a random 64-bit prefix per process and a sequence), so only a broken agent does that, and
keeping its data is then the lesser harm.

Pure: no clock, no I/O; time arrives as an argument.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from pingmesh.store.raw import HOUR_S

DIGEST_BYTES = 16
PACK_AT = 4096
"""New ids of a bucket kept in a set before they are sorted into a run."""

MAX_RUN_IDS = 1 << 16
"""No merge makes a run larger than this (1 MiB): the cap on one pause of the event loop."""

FENCE_EVERY = 64
"""One digest in this many is also kept as a ``bytes`` object, to find a run's block fast."""

_SET_ENTRY_BYTES = 49 + 40
"""A 16-byte ``bytes`` object plus its share of a set's table (or a list's), for the estimate."""


def batch_digest(batch_id: str) -> bytes:
    """The 128-bit digest under which a batch id is remembered."""
    return hashlib.blake2b(batch_id.encode(), digest_size=DIGEST_BYTES).digest()


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchIdMemoryStatistics:
    """The size of a :class:`BatchIdMemory` and what it has forgotten."""

    ids: int
    buckets: int
    size_bytes: int  # the digests and the sets of new ones, not the Python objects around them
    expired_ids_total: int
    expired_buckets_total: int


class _Run:
    """Sorted digests in one ``bytes`` object, with every :data:`FENCE_EVERY`-th as a fence.

    A lookup bisects the fences (a list of ``bytes``: the comparisons run in C) and then
    searches the one block of the blob that can hold the digest.
    """

    __slots__ = ("blob", "fences")

    def __init__(self, digests: Iterable[bytes]) -> None:
        self.blob = b"".join(sorted(digests))
        step = FENCE_EVERY * DIGEST_BYTES
        self.fences = [self.blob[i : i + DIGEST_BYTES] for i in range(0, len(self.blob), step)]

    def __len__(self) -> int:
        return len(self.blob) // DIGEST_BYTES

    def __contains__(self, digest: bytes) -> bool:
        block = bisect.bisect_right(self.fences, digest) - 1
        if block < 0:
            return False
        start = block * FENCE_EVERY * DIGEST_BYTES
        end = start + FENCE_EVERY * DIGEST_BYTES
        found = self.blob.find(digest, start, end)
        while found % DIGEST_BYTES:  # a miss too: -1 % 16 is 15
            if found < 0:
                return False
            found = self.blob.find(digest, found + 1, end)
        return True

    def size_bytes(self) -> int:
        return len(self.blob) + len(self.fences) * _SET_ENTRY_BYTES

    def digests(self) -> list[bytes]:
        blob = self.blob
        return [blob[i : i + DIGEST_BYTES] for i in range(0, len(blob), DIGEST_BYTES)]


class _Bucket:
    __slots__ = ("fresh", "runs")

    def __init__(self) -> None:
        self.fresh: set[bytes] = set()
        self.runs: list[_Run] = []

    def __len__(self) -> int:
        return len(self.fresh) + sum(len(run) for run in self.runs)

    def __contains__(self, digest: bytes) -> bool:
        return digest in self.fresh or any(digest in run for run in self.runs)

    def add(self, digest: bytes) -> None:
        self.fresh.add(digest)
        if len(self.fresh) >= PACK_AT:
            self.add_run(_Run(self.fresh))
            self.fresh = set()

    def add_run(self, run: _Run) -> None:
        # The runs that the logarithmic method would merge one after another, merged at once:
        # each digest is copied out once per cascade, not once per step of it.
        runs = self.runs
        merging = [run]
        size = len(run)
        while runs and len(runs[-1]) <= size and size + len(runs[-1]) <= MAX_RUN_IDS:
            merging.append(runs.pop())
            size += len(merging[-1])
        runs.append(run if len(merging) == 1 else _Run(d for r in merging for d in r.digests()))

    def size_bytes(self) -> int:
        return len(self.fresh) * _SET_ENTRY_BYTES + sum(run.size_bytes() for run in self.runs)


class BatchIdMemory:
    """The ids of the batches stored within the horizon; see the module docstring."""

    def __init__(self, *, horizon_s: float, slack_s: float) -> None:
        if not horizon_s > 0:
            raise ValueError(f"horizon_s: {horizon_s} is not > 0")
        if not slack_s >= 0:
            raise ValueError(f"slack_s: {slack_s} is not >= 0")
        self.horizon_s = horizon_s
        self.slack_s = slack_s
        self._buckets: dict[int, _Bucket] = {}  # hour start (UNIX s) -> ids
        self._expired_ids = 0
        self._expired_buckets = 0

    def contains(self, batch_id: str, oldest_record_s: float) -> bool:
        """Whether the batch with this id and oldest record time was stored."""
        bucket = self._buckets.get(_hour_start_s(oldest_record_s))
        return bucket is not None and batch_digest(batch_id) in bucket

    def oldest_needed_s(self, now_s: float) -> float:
        """Ids of batches whose oldest record is before this are no longer needed."""
        return now_s - self.horizon_s - self.slack_s

    def add(self, batch_id: str, oldest_record_s: float) -> None:
        """Remember a stored batch by its id and the time of its oldest record."""
        digest = batch_digest(batch_id)
        bucket = self._bucket(_hour_start_s(oldest_record_s))
        if digest not in bucket:
            bucket.add(digest)

    def add_stored(self, hour_start_s: int, batch_ids: Iterable[str]) -> None:
        """Remember batches with records in the raw-store partition of ``hour_start_s``.

        For the rebuild at start-up, file by file.  The ids are not looked up first (that would
        cost a lookup each): one that comes twice costs 16 bytes more.  A batch that spans two
        hours lands in both buckets: it is found in the bucket of its oldest record, and the
        other copy costs 16 bytes until its bucket expires.
        """
        if hour_start_s % HOUR_S:
            raise ValueError(f"hour_start_s: {hour_start_s} is not the start of an hour")
        bucket = self._bucket(hour_start_s)
        for batch_id in batch_ids:
            bucket.add(batch_digest(batch_id))
        if not bucket:
            del self._buckets[hour_start_s]

    def expire(self, now_s: float) -> int:
        """Forget the buckets that ``now_s`` no longer needs; returns how many ids went."""
        oldest_s = self.oldest_needed_s(now_s)
        gone = [start for start in self._buckets if start + HOUR_S <= oldest_s]
        forgotten = 0
        for start in gone:
            forgotten += len(self._buckets.pop(start))
        self._expired_ids += forgotten
        self._expired_buckets += len(gone)
        return forgotten

    def statistics(self) -> BatchIdMemoryStatistics:
        """A snapshot of the size and the expiry counters."""
        buckets = list(self._buckets.values())
        return BatchIdMemoryStatistics(
            ids=sum(len(bucket) for bucket in buckets),
            buckets=len(buckets),
            size_bytes=sum(bucket.size_bytes() for bucket in buckets),
            expired_ids_total=self._expired_ids,
            expired_buckets_total=self._expired_buckets,
        )

    def _bucket(self, hour_start_s: int) -> _Bucket:
        bucket = self._buckets.get(hour_start_s)
        if bucket is None:
            bucket = self._buckets[hour_start_s] = _Bucket()
        return bucket


def _hour_start_s(at_s: float) -> int:
    return int(at_s // HOUR_S) * HOUR_S
