"""The fleet's topology: servers placed in DC → podset → ToR, and optional services.

The topology file is YAML (or CSV with the same columns)::

    servers:
      - {name: h11, address: 198.18.1.11, dc: dc1, podset: ps1, tor: t1}
    services:            # optional: service name -> server names
      search: [h11, h21]

Names of servers, ToRs, podsets and DCs are global: a ToR belongs to exactly one podset and a
podset to exactly one DC, so ``tor``/``t2`` names one thing everywhere (API, heatmap, incidents).
Parsing takes text, not a path, so that this module stays free of I/O; every error names the
file, the line and the field at fault.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from pingmesh.errors import TopologyError

LEVELS = ("server", "tor", "podset", "dc")
Level = Literal["server", "tor", "podset", "dc"]
COLUMNS = ("name", "address", "dc", "podset", "tor")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Server:
    """One server of the fleet."""

    name: str
    address: str
    dc: str
    podset: str
    tor: str

    def __post_init__(self) -> None:
        for column in COLUMNS:
            value = getattr(self, column)
            if column == "address":
                try:
                    ipaddress.ip_address(value)
                except ValueError:
                    raise ValueError(f"{column}: {value!r} is not an IP address") from None
            elif not isinstance(value, str) or not _NAME_RE.match(value):
                raise ValueError(
                    f"{column}: {value!r} is not a valid name "
                    "(letters, digits, '.', '_', ':', '-'; at most 128)"
                )

    def entity(self, level: Level) -> str:
        """The name of the entity that contains this server at ``level``."""
        match level:
            case "server":
                return self.name
            case "tor":
                return self.tor
            case "podset":
                return self.podset
            case "dc":
                return self.dc


@dataclass(frozen=True, slots=True, kw_only=True)
class Topology:
    """A validated topology with the indexes that pinglist generation and analysis need.

    Servers are kept sorted by name; every derived list is sorted too, so that any two replicas
    that load the same file see exactly the same order.
    """

    servers: tuple[Server, ...]
    services: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    _by_name: dict[str, Server] = field(init=False, repr=False, compare=False)
    _by_tor: dict[str, tuple[Server, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name: dict[str, Server] = {}
        addresses: dict[str, str] = {}
        tor_home: dict[str, tuple[str, str]] = {}
        podset_home: dict[str, str] = {}
        for server in self.servers:
            if server.name in by_name:
                raise ValueError(f"name: duplicate server {server.name!r}")
            if server.address in addresses:
                raise ValueError(
                    f"address: {server.address} is used by both "
                    f"{addresses[server.address]!r} and {server.name!r}"
                )
            home = tor_home.setdefault(server.tor, (server.dc, server.podset))
            if home != (server.dc, server.podset):
                raise ValueError(
                    f"tor: {server.tor!r} is already in {home[0]}/{home[1]}, "
                    f"not {server.dc}/{server.podset}"
                )
            dc = podset_home.setdefault(server.podset, server.dc)
            if dc != server.dc:
                raise ValueError(f"podset: {server.podset!r} is already in {dc}, not {server.dc}")
            by_name[server.name] = server
            addresses[server.address] = server.name
        for service, members in self.services.items():
            if not _NAME_RE.match(service):
                raise ValueError(f"services: {service!r} is not a valid service name")
            for member in members:
                if member not in by_name:
                    raise ValueError(f"services: {service!r} names unknown server {member!r}")
        ordered = tuple(sorted(self.servers, key=lambda s: s.name))
        by_tor: dict[str, list[Server]] = {}
        for server in ordered:
            by_tor.setdefault(server.tor, []).append(server)
        object.__setattr__(self, "servers", ordered)
        object.__setattr__(self, "_by_name", by_name)
        object.__setattr__(self, "_by_tor", {t: tuple(s) for t, s in sorted(by_tor.items())})

    def server(self, name: str) -> Server | None:
        """The server called ``name``, or None."""
        return self._by_name.get(name)

    def tor_servers(self, tor: str) -> tuple[Server, ...]:
        """The servers under ``tor``, sorted by name."""
        return self._by_tor.get(tor, ())

    def tors(self, *, dc: str | None = None) -> tuple[str, ...]:
        """The ToR names (of one DC, if given), sorted."""
        return tuple(t for t, members in self._by_tor.items() if dc is None or members[0].dc == dc)

    def entities(self, level: Level) -> tuple[str, ...]:
        """The sorted names of every entity at ``level``."""
        return tuple(sorted({s.entity(level) for s in self.servers}))

    def dcs(self) -> tuple[str, ...]:
        """The DC names, sorted."""
        return self.entities("dc")

    def podsets(self, *, dc: str | None = None) -> tuple[str, ...]:
        """The podset names (of one DC, if given), sorted."""
        return tuple(sorted({s.podset for s in self.servers if dc is None or s.dc == dc}))


def parse_topology(text: str, *, filename: str) -> Topology:
    """Parse a topology from ``text``; CSV if ``filename`` ends in ``.csv``, YAML otherwise.

    Raises :class:`TopologyError` naming the file, line and field at fault.
    """
    services: dict[str, tuple[str, ...]] = {}
    if filename.lower().endswith(".csv"):
        rows = _csv_rows(text, filename)
    else:
        rows, services = _yaml_rows(text, filename)
    servers: list[Server] = []
    first_line: dict[tuple[str, str], int] = {}  # (column, value) -> line that introduced it
    tor_home: dict[str, tuple[str, str]] = {}
    podset_home: dict[str, str] = {}
    for line, row in rows:
        for column in COLUMNS:
            if column not in row or row[column] in (None, ""):
                raise TopologyError("is missing", file=filename, line=line, field=column)
        unknown = sorted(set(row) - set(COLUMNS))
        if unknown:
            raise TopologyError(
                f"unknown column (expected {', '.join(COLUMNS)})",
                file=filename,
                line=line,
                field=unknown[0],
            )
        try:
            server = Server(**{c: str(row[c]) for c in COLUMNS})
        except ValueError as exc:
            column, _, problem = str(exc).partition(": ")
            raise TopologyError(problem, file=filename, line=line, field=column) from exc
        for column in ("name", "address"):
            value = getattr(server, column)
            earlier = first_line.setdefault((column, value), line)
            if earlier != line:
                what = "server" if column == "name" else "address"
                raise TopologyError(
                    f"duplicate {what} {value!r} (first on line {earlier})",
                    file=filename,
                    line=line,
                    field=column,
                )
        home = tor_home.setdefault(server.tor, (server.dc, server.podset))
        if home != (server.dc, server.podset):
            raise TopologyError(
                f"ToR {server.tor!r} is in {home[0]}/{home[1]} on line "
                f"{first_line['tor', server.tor]}, not in {server.dc}/{server.podset}",
                file=filename,
                line=line,
                field="tor",
            )
        first_line.setdefault(("tor", server.tor), line)
        dc = podset_home.setdefault(server.podset, server.dc)
        if dc != server.dc:
            raise TopologyError(
                f"podset {server.podset!r} is in {dc} on line "
                f"{first_line['podset', server.podset]}, not in {server.dc}",
                file=filename,
                line=line,
                field="podset",
            )
        first_line.setdefault(("podset", server.podset), line)
        servers.append(server)
    if not servers:
        raise TopologyError("no servers", file=filename, field="servers")
    return Topology(servers=tuple(servers), services=services)


def _csv_rows(text: str, filename: str) -> list[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None:
        raise TopologyError("empty file", file=filename, line=1)
    header = [h.strip() for h in reader.fieldnames]
    for column in COLUMNS:
        if column not in header:
            raise TopologyError("missing from the header", file=filename, line=1, field=column)
    for column in header:
        if column not in COLUMNS:
            raise TopologyError(
                f"unknown column (expected {', '.join(COLUMNS)})",
                file=filename,
                line=1,
                field=column,
            )
    rows: list[tuple[int, dict[str, Any]]] = []
    for record in reader:
        if None in record:
            raise TopologyError(
                "more values than columns", file=filename, line=reader.line_num, field=None
            )
        cleaned = {k.strip(): (v or "").strip() for k, v in record.items()}
        if not any(cleaned.values()):
            continue
        rows.append((reader.line_num, cleaned))
    return rows


def _yaml_rows(
    text: str, filename: str
) -> tuple[list[tuple[int, dict[str, Any]]], dict[str, tuple[str, ...]]]:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise TopologyError(f"not valid YAML: {problem}", file=filename, line=line) from exc
    if root is None:
        raise TopologyError("empty file", file=filename, field="servers")
    if not isinstance(root, yaml.MappingNode):
        raise TopologyError(
            "the top level must be a mapping with 'servers'", file=filename, line=_line(root)
        )
    top = _mapping(root, filename, "top level")
    for key, (key_node, _) in top.items():
        if key not in ("servers", "services"):
            raise TopologyError(
                "unknown key (expected 'servers' and optional 'services')",
                file=filename,
                line=_line(key_node),
                field=key,
            )
    servers_node = top["servers"][1] if "servers" in top else None
    if not isinstance(servers_node, yaml.SequenceNode):
        raise TopologyError(
            "must be a list of servers",
            file=filename,
            line=_line(servers_node or root),
            field="servers",
        )
    rows: list[tuple[int, dict[str, Any]]] = []
    for item in servers_node.value:
        if not isinstance(item, yaml.MappingNode):
            raise TopologyError(
                "each server must be a mapping", file=filename, line=_line(item), field="servers"
            )
        row = {
            key: _scalar(value_node, filename, key)
            for key, (_, value_node) in _mapping(item, filename, "servers").items()
        }
        rows.append((_line(item), row))
    services: dict[str, tuple[str, ...]] = {}
    services_node = top["services"][1] if "services" in top else None
    if services_node is not None and not (
        isinstance(services_node, yaml.ScalarNode) and services_node.value in ("", "null", "~")
    ):
        if not isinstance(services_node, yaml.MappingNode):
            raise TopologyError(
                "must map service names to lists of servers",
                file=filename,
                line=_line(services_node),
                field="services",
            )
        known = {str(row.get("name")) for _, row in rows}
        for service, (key_node, value_node) in _mapping(
            services_node, filename, "services"
        ).items():
            if not _NAME_RE.match(service):
                raise TopologyError(
                    f"{service!r} is not a valid service name",
                    file=filename,
                    line=_line(key_node),
                    field="services",
                )
            if not isinstance(value_node, yaml.SequenceNode):
                raise TopologyError(
                    "must be a list of server names",
                    file=filename,
                    line=_line(value_node),
                    field=f"services.{service}",
                )
            members = []
            for member_node in value_node.value:
                member = _scalar(member_node, filename, f"services.{service}")
                if member not in known:
                    raise TopologyError(
                        f"unknown server {member!r}",
                        file=filename,
                        line=_line(member_node),
                        field=f"services.{service}",
                    )
                members.append(member)
            services[service] = tuple(sorted(set(members)))
    return rows, services


def _mapping(
    node: yaml.MappingNode, filename: str, field: str
) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    """The keys of a YAML mapping with their nodes; a key given twice is an error."""
    out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key_node, value_node in node.value:
        key = _scalar(key_node, filename, field)
        if key in out:
            raise TopologyError(
                f"given twice (first on line {_line(out[key][0])})",
                file=filename,
                line=_line(key_node),
                field=key,
            )
        out[key] = (key_node, value_node)
    return out


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _scalar(node: yaml.Node, filename: str, field: str) -> str:
    if not isinstance(node, yaml.ScalarNode):
        raise TopologyError("must be a plain value", file=filename, line=_line(node), field=field)
    return str(node.value)


def topology_from_servers(
    servers: Iterable[Server], services: Mapping[str, Iterable[str]] | None = None
) -> Topology:
    """Build a topology in code (tests, the demo, the lab)."""
    return Topology(
        servers=tuple(servers),
        services={k: tuple(sorted(set(v))) for k, v in (services or {}).items()},
    )


def dump_topology_yaml(topology: Topology) -> str:
    """The topology as YAML in the file format that :func:`parse_topology` reads."""
    doc: dict[str, Any] = {
        "servers": [{c: getattr(s, c) for c in COLUMNS} for s in topology.servers]
    }
    if topology.services:
        doc["services"] = {k: list(v) for k, v in topology.services.items()}
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=None)
