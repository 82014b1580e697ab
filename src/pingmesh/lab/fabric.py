"""The plan made real with ``ip`` and ``nft``, and the sweep that removes it again.

Building goes in phases so that each phase finds what it needs: namespaces, then sysctls (IPv6
off *before* interfaces exist, so veths never start duplicate-address detection), then every
veth pair at once, then addresses and links up per namespace, then routes (next hops need
their interfaces up), then an empty nftables table in every router. Most phases are one
``ip -batch`` per namespace, so a lab of a few dozen namespaces builds in seconds.

Removal never trusts the state file alone: :func:`sweep` lists every namespace whose name
starts with ``{prefix}-``, stops every process inside it (``ip netns pids``), deletes it, and
deletes the host's management interface. Deleting a namespace deletes its veths, their peers
and its nftables tables with it, so nothing of the lab is left — also after a crash half-way
through ``lab up``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from pingmesh.errors import LabError
from pingmesh.lab.commands import CommandRunner
from pingmesh.lab.faults import nft_ruleset
from pingmesh.lab.plan import MGMT_BRIDGE, NFT_TABLE, LabPlan, Link, Route
from pingmesh.lab.processes import ProcessRecord, record_of, stop_all

log = logging.getLogger(__name__)

Announce = Callable[[str], None]
ROUTE_PROTO = "static"  # lab routes carry this protocol, so re-applying finds stale ones


def _quiet(_: str) -> None:
    pass


def list_namespaces(runner: CommandRunner, prefix: str) -> tuple[str, ...]:
    """The namespaces of the lab ``prefix`` that exist now."""
    result = runner.run(["ip", "-j", "netns", "list"])
    text = result.stdout.strip()
    if not text:
        return ()
    try:
        entries = json.loads(text)
    except ValueError as exc:
        raise LabError(f"`ip -j netns list` printed something that is not JSON: {exc}") from exc
    names = [e.get("name", "") for e in entries if isinstance(e, dict)]
    return tuple(sorted(n for n in names if n.startswith(f"{prefix}-")))


def host_link_exists(runner: CommandRunner, name: str) -> bool:
    """True if the host has an interface called ``name``."""
    return runner.run(["ip", "link", "show", "dev", name], check=False).returncode == 0


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepReport:
    """What :func:`sweep` removed."""

    namespaces: int
    processes: int
    host_link: bool


def sweep(
    runner: CommandRunner,
    prefix: str,
    *,
    host_port: str | None = None,
    extra: Iterable[ProcessRecord] = (),
    announce: Announce = _quiet,
) -> SweepReport:
    """Remove every namespace of lab ``prefix`` and every process in them (see module doc).

    ``extra`` are recorded processes to stop as well (the state file's, in case one left its
    namespace); ``host_port`` defaults to ``{prefix}-m``.
    """
    namespaces = list_namespaces(runner, prefix)
    records = list(extra)
    for namespace in namespaces:
        pids = runner.run(["ip", "netns", "pids", namespace], check=False).stdout.split()
        for pid in pids:
            if pid.isdigit() and (record := record_of(int(pid), namespace)) is not None:
                records.append(record)
    unique = {(r.pid, r.start_ticks): r for r in records}  # the state and the sweep overlap
    stopped = stop_all(unique.values())
    if stopped:
        announce(f"stopped {stopped} processes")
    if namespaces:
        batch = "".join(f"netns del {ns}\n" for ns in namespaces)
        runner.run(["ip", "-force", "-batch", "-"], input_text=batch, check=False)
        left = list_namespaces(runner, prefix)
        if left:
            raise LabError(f"could not delete namespaces: {', '.join(left)}")
        announce(f"deleted {len(namespaces)} namespaces")
    port = host_port or f"{prefix}-m"
    removed_port = False
    if host_link_exists(runner, port):
        runner.run(["ip", "link", "del", "dev", port])
        removed_port = True
    return SweepReport(namespaces=len(namespaces), processes=stopped, host_link=removed_port)


class Fabric:
    """Builds and changes the namespaces, links, routes and nftables rules of one plan."""

    def __init__(
        self, plan: LabPlan, runner: CommandRunner, *, announce: Announce = _quiet
    ) -> None:
        self.plan = plan
        self._runner = runner
        self._announce = announce

    # -- building -------------------------------------------------------------------------

    def build(self) -> None:
        """Create the whole fabric; LabError if any part of it already exists."""
        plan = self.plan
        existing = list_namespaces(self._runner, plan.prefix)
        if existing:
            raise LabError(
                f"lab {plan.prefix!r} already has {len(existing)} namespaces "
                f"(e.g. {existing[0]}); run `pingmesh lab down --prefix {plan.prefix}` first"
            )
        if host_link_exists(self._runner, plan.host_port):
            raise LabError(
                f"the host already has an interface {plan.host_port}; "
                f"run `pingmesh lab down --prefix {plan.prefix}` first"
            )
        self._check_mgmt_net_free()
        nodes = plan.nodes
        self._announce(
            f"creating {len(nodes)} namespaces ({len(plan.servers)} servers, "
            f"{len(plan.routers)} routers, 1 management)"
        )
        self._batch(None, [f"netns add {n.namespace}" for n in nodes])
        self._announce("setting sysctls (forwarding, L4 multipath hash, no ICMP rate limit)")
        for index, node in enumerate(nodes, 1):
            self._sysctl(node.namespace, plan.sysctls(node.name))
            if index % 25 == 0 and index < len(nodes):
                self._announce(f"  … {index}/{len(nodes)} namespaces")
        self._announce(f"creating {len(plan.links) + len(plan.mgmt_links) + 1} veth pairs")
        lines = [self._veth(link) for link in (*plan.links, *plan.mgmt_links)]
        lines.append(
            f"link add name {plan.host_port} type veth peer name host netns {plan.mgmt.namespace}"
        )
        self._batch(None, lines)
        self._announce("addresses and links up")
        for node in nodes:
            self._batch(node.namespace, self._interface_lines(node.name))
        self._batch(
            None,
            [
                f"addr add {plan.host_mgmt_address}/{plan.mgmt_prefixlen} dev {plan.host_port}",
                f"link set {plan.host_port} up",
            ],
        )
        self._announce("ECMP routes")
        self.apply_routes(plan.routes())
        self._announce("nftables tables in the routers")
        for router in plan.routers:
            self.apply_nft(router.name, [])

    def _check_mgmt_net_free(self) -> None:
        # Any host route inside or around the management network (but the default route)
        # means another lab, or something else, already uses those addresses.
        for selector in ("root", "match"):
            routes = self._runner.run(["ip", "-j", "route", "show", selector, self.plan.mgmt_net])
            try:
                entries = json.loads(routes.stdout or "[]")
            except ValueError:  # pragma: no cover - ip prints JSON with -j
                entries = []
            for entry in entries:
                dst = entry.get("dst", "") if isinstance(entry, dict) else ""
                if dst and dst != "default":
                    raise LabError(
                        f"the host already routes {dst} (dev {entry.get('dev')}), which "
                        f"overlaps the management network {self.plan.mgmt_net}: another lab "
                        "is up; take it down, or give this one another --mgmt-net"
                    )

    def _veth(self, link: Link) -> str:
        a = self.plan.node(link.a).namespace
        b = self.plan.node(link.b).namespace
        return f"link add name {link.a_port} netns {a} type veth peer name {link.b_port} netns {b}"

    def _interface_lines(self, name: str) -> list[str]:
        plan = self.plan
        node = plan.node(name)
        lines = ["link set lo up"]
        if node.role == "mgmt":
            lines.append(f"link add name {MGMT_BRIDGE} type bridge")
            ports = ["host", *(link.b_port for link in plan.mgmt_links)]
            lines += [f"link set {port} master {MGMT_BRIDGE}" for port in ports]
            lines += [f"link set {port} up" for port in ports]
        for dev, cidr in plan.addresses(name):
            lines.append(f"addr add {cidr} dev {dev}")
        devices = sorted({dev for dev, _ in plan.addresses(name)} - {"lo"})
        lines += [f"link set {dev} up" for dev in devices]
        return lines

    # -- changing ------------------------------------------------------------------------

    def apply_routes(
        self, routes: Mapping[str, Sequence[Route]], *, only: Iterable[str] | None = None
    ) -> None:
        """Make each namespace's lab routes exactly ``routes`` (replace, then drop stale)."""
        names = set(only) if only is not None else set(routes)
        for name in sorted(names):
            namespace = self.plan.node(name).namespace
            wanted = routes.get(name, ())
            lines = [f"route replace {r.ip_args(proto=ROUTE_PROTO)}" for r in wanted]
            current = self._runner.run(
                ["ip", "-n", namespace, "-j", "route", "show", "proto", ROUTE_PROTO]
            )
            try:
                present = {e["dst"] for e in json.loads(current.stdout or "[]")}
            except (ValueError, KeyError, TypeError):  # pragma: no cover - ip prints JSON
                present = set()
            keep = {r.dst.removesuffix("/32") for r in wanted} | {r.dst for r in wanted}
            lines += [f"route del {dst} proto {ROUTE_PROTO}" for dst in sorted(present - keep)]
            if lines:
                self._batch(namespace, lines)

    def set_link(self, link: Link, *, up: bool) -> None:
        """Set both ends of a fabric link up or down."""
        state = "up" if up else "down"
        for node, port in ((link.a, link.a_port), (link.b, link.b_port)):
            self._batch(self.plan.node(node).namespace, [f"link set {port} {state}"])

    def set_ports(self, node: str, ports: Iterable[str], *, up: bool) -> None:
        """Set interfaces of one namespace up or down."""
        state = "up" if up else "down"
        self._batch(self.plan.node(node).namespace, [f"link set {p} {state}" for p in ports])

    def apply_nft(self, router: str, rules: Sequence[str]) -> None:
        """Replace ``router``'s lab table with ``rules`` in one nftables transaction."""
        namespace = self.plan.node(router).namespace
        self._runner.run(
            ["ip", "netns", "exec", namespace, "nft", "-f", "-"], input_text=nft_ruleset(rules)
        )

    def nft_drops(self, router: str) -> dict[str, int]:
        """Packets dropped per fault id at ``router`` (from the rules' counters)."""
        namespace = self.plan.node(router).namespace
        result = self._runner.run(
            ["ip", "netns", "exec", namespace, "nft", "-j", "list", "table", "inet", NFT_TABLE],
            check=False,
        )
        drops: dict[str, int] = {}
        if result.returncode != 0:
            return drops
        try:
            items = json.loads(result.stdout)["nftables"]
        except (ValueError, KeyError, TypeError):  # pragma: no cover - nft prints JSON
            return drops
        for item in items:
            rule = item.get("rule") if isinstance(item, dict) else None
            if not rule or "comment" not in rule:
                continue
            fault_id = str(rule["comment"]).split()[0]
            for expr in rule.get("expr", ()):
                if isinstance(expr, dict) and "counter" in expr:
                    drops[fault_id] = drops.get(fault_id, 0) + int(expr["counter"]["packets"])
        return drops

    def link_packets(self, node: str) -> dict[str, tuple[int, int]]:
        """(rx, tx) packets per interface of ``node`` (kernel counters)."""
        namespace = self.plan.node(node).namespace
        result = self._runner.run(["ip", "-n", namespace, "-j", "-s", "link", "show"])
        out: dict[str, tuple[int, int]] = {}
        for entry in json.loads(result.stdout or "[]"):
            stats = entry.get("stats64") or entry.get("stats") or {}
            out[entry["ifname"]] = (
                int(stats.get("rx", {}).get("packets", 0)),
                int(stats.get("tx", {}).get("packets", 0)),
            )
        return out

    # -- helpers --------------------------------------------------------------------------

    def _batch(self, namespace: str | None, lines: Sequence[str]) -> None:
        if not lines:
            return
        argv = (
            ["ip", "-batch", "-"] if namespace is None else ["ip", "-n", namespace, "-batch", "-"]
        )
        self._runner.run(argv, input_text="".join(f"{line}\n" for line in lines))

    def _sysctl(self, namespace: str, settings: Sequence[tuple[str, str]]) -> None:
        self._runner.run(
            [
                "ip",
                "netns",
                "exec",
                namespace,
                "sysctl",
                "-e",  # a key this kernel lacks (the hash seed before 6.11) is skipped
                "-q",
                "-w",
                *(f"{key}={value}" for key, value in settings),
            ]
        )
