"""Naming the device: votes over the traceroute paths of failing 5-tuples.

Theory of operation
-------------------
007 (NSDI 2018; reference §3.3) and R-Pingmesh's Algorithm 1 (reference §3.5, §6.2): every
flow that lost packets traces its path *with its own 5-tuple*, so that ECMP hashes the trace
onto the path the lost packets took; each flow gives ``1/h`` of a vote to each of the ``h``
devices on its path, and the device with the most votes is the suspect. Drops spread over many
flows (007: with ≥ 10 drops, 95 % of the time at least 3 flows saw them, none more than 40 %),
so the votes pile up on the bad device while every other device on those paths collects votes
from only some of them.

- A flow is traced both ways when it can be (R-Pingmesh traces each probe *and its ACK*):
  with ECMP the SYN-ACK takes its own path, and the packet that was lost may have been either.
  Paths with the same ``flow`` key (the 5-tuple without direction, :func:`flow_key`) are one
  flow, whose devices are the union of both directions'.
- A trace that stops early (a black hole, or a hop that does not answer) votes for the devices
  it did see: the last one that answered is next to the fault (007).
- Traces of *healthy* 5-tuples, when there are some, give each device a hit ratio (failing
  flows through it ÷ all traced flows through it); a device that healthy flows also cross a
  lot is not blamed (deTector's hit ratio ≥ 0.6, reference §6.2).
- A device is named only when it is unambiguous: at least ``min_flows`` failing flows crossed
  it and its hit ratio is at least ``MIN_HIT_RATIO``; and either it is the only device that
  (nearly, ``ALL_FLOWS``) every failing flow crossed, or, when no device is on all of them and
  at least ``MARGIN_MIN_FLOWS`` failing flows were traced, it has the most votes by a margin
  (``MARGIN`` × the runner-up: 007's plurality needs many flows — with three or four, a
  device that two of them happened to share wins by chance). Otherwise the ranking is
  evidence but nobody is blamed: when one source's flows all took the faulty spine, they all
  crossed that source's ToR too.
- When the heatmap pattern has already put the fault in a tier *above* the ToRs (a leaf,
  spine or core tier, :mod:`.silent_drop`), the devices below that tier at the ends of the
  traced paths are not suspects (``skip_edges``: 1 for a leaf tier, the ToRs; 2 for the
  spines, the ToRs and leaves; 3 for the core): a few traced flows from one ToR all cross
  it (and often one leaf), whatever drops them, and the pattern has ruled them out. In a Clos
  path the k-th router from either end is of the k-th tier; the far end of a path that
  stopped early is not known, so only its first routers are skipped.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

MARGIN = 1.5
MARGIN_MIN_FLOWS = 10
MIN_HIT_RATIO = 0.6
ALL_FLOWS = 1.0
TIER_DEPTH = {"leaf": 1, "spine": 2, "core": 3}
"""How many routers from each end of a path lie below each tier (ToR; ToR and leaf; …)."""


def flow_key(src_addr: str, src_port: int, dst_addr: str, dst_port: int) -> str:
    """The 5-tuple without its direction: a probe and its reply have the same key."""
    ends = sorted((f"{src_addr}:{src_port}", f"{dst_addr}:{dst_port}"))
    return "<>".join(ends)


@dataclass(frozen=True, slots=True, kw_only=True)
class TracedPath:
    """One traced 5-tuple: the devices that answered, in order (None: no answer at that TTL)."""

    flow: str  # :func:`flow_key` of the 5-tuple (or any id of the flow)
    hops: tuple[str | None, ...]
    failing: bool = True
    reached: bool = True
    src_addr: str = ""
    dst_addr: str = ""

    def devices(self) -> tuple[str, ...]:
        """The distinct devices on the path, endpoints left out, in order."""
        seen: list[str] = []
        for hop in self.hops:
            if hop is not None and hop not in (self.src_addr, self.dst_addr) and hop not in seen:
                seen.append(hop)
        return tuple(seen)

    def edge_devices(self, skip: int) -> set[str]:
        """The first ``skip`` routers from each end (from the source only when the path did
        not reach its destination; module docstring)."""
        if skip <= 0 or any(h is None for h in self.hops):
            return set()  # a silent hop: positions are not known
        devices = self.devices()
        edges = set(devices[:skip])
        if self.reached:
            edges.update(devices[-skip:])
        return edges


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceVotes:
    """The tally of one device."""

    device: str
    votes: float
    flows: int
    healthy_flows: int

    @property
    def hit_ratio(self) -> float:
        """Failing flows through it ÷ traced flows through it."""
        return self.flows / (self.flows + self.healthy_flows) if self.flows else 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class VoteResult:
    """The ranking (most votes first) and the suspect, if one is unambiguous."""

    ranking: tuple[DeviceVotes, ...]
    suspect: DeviceVotes | None
    flows: int


def vote(paths: Collection[TracedPath], *, min_flows: int = 3, skip_edges: int = 0) -> VoteResult:
    """Tally the votes of ``paths`` (see the module docstring); ``skip_edges``: so many
    routers from each end of a path are not suspects."""
    if min_flows < 1:
        raise ValueError(f"min_flows: {min_flows} must be at least 1")
    edges = {d for p in paths for d in p.edge_devices(skip_edges)}
    votes: dict[str, float] = {}
    flows: dict[str, set[str]] = {}
    healthy: dict[str, set[str]] = {}
    failing_flows: set[str] = set()
    union: dict[str, list[str]] = {}
    failing: dict[str, bool] = {}
    for path in sorted(paths, key=lambda p: p.flow):
        seen = union.setdefault(path.flow, [])
        seen.extend(d for d in path.devices() if d not in seen)
        failing[path.flow] = failing.get(path.flow, False) or path.failing
    for flow, devices in union.items():
        if not devices:
            continue
        if failing[flow]:
            failing_flows.add(flow)
            for device in devices:
                votes[device] = votes.get(device, 0.0) + 1.0 / len(devices)
                flows.setdefault(device, set()).add(flow)
        else:
            for device in devices:
                healthy.setdefault(device, set()).add(flow)
    ranking = sorted(
        (
            DeviceVotes(
                device=d,
                votes=round(v, 9),
                flows=len(flows[d]),
                healthy_flows=len(healthy.get(d, set())),
            )
            for d, v in votes.items()
        ),
        key=lambda r: (-r.votes, -r.flows, r.device),
    )
    suspect: DeviceVotes | None = None
    total = len(failing_flows)
    plausible = [r for r in ranking if r.hit_ratio >= MIN_HIT_RATIO and r.device not in edges]
    on_all = [r for r in plausible if r.flows >= ALL_FLOWS * total]
    top: DeviceVotes | None = None
    if len(on_all) == 1:
        top = on_all[0]
    elif not on_all and plausible and total >= MARGIN_MIN_FLOWS:
        runner_up = plausible[1].votes if len(plausible) > 1 else 0.0
        if plausible[0].votes >= MARGIN * runner_up:
            top = plausible[0]
    if top is not None and top.flows >= min_flows:
        suspect = top
    return VoteResult(ranking=tuple(ranking), suspect=suspect, flows=len(failing_flows))


def ranking_evidence(result: VoteResult, limit: int) -> list[dict[str, object]]:
    """The top of the ranking as evidence rows."""
    return [
        {"device": r.device, "votes": r.votes, "flows": r.flows, "healthy_flows": r.healthy_flows}
        for r in result.ranking[:limit]
    ]


def path_evidence(paths: Sequence[TracedPath], limit: int) -> list[dict[str, object]]:
    """Some of the paths as evidence rows."""
    return [
        {"flow": p.flow, "hops": list(p.hops), "reached": p.reached, "failing": p.failing}
        for p in paths[:limit]
    ]
