"""Topology parsing (YAML and CSV, DESIGN.md format) and the model's indexes."""

from __future__ import annotations

import pytest

from pingmesh.core.topology import (
    Server,
    dump_topology_yaml,
    parse_topology,
    topology_from_servers,
)
from pingmesh.errors import InputError, TopologyError

YAML = """\
servers:
  - {name: h21, address: 198.18.2.21, dc: dc1, podset: ps1, tor: t2}
  - {name: h11, address: 198.18.1.11, dc: dc1, podset: ps1, tor: t1}
  - {name: h12, address: 198.18.1.12, dc: dc1, podset: ps1, tor: t1}
  - {name: h31, address: 198.18.3.31, dc: dc2, podset: ps2, tor: t3}
services:            # optional: service name -> server names
  search: [h11, h21, h11]
  storage:
    - h31
"""

CSV = """\
name,address,dc,podset,tor
h21,198.18.2.21,dc1,ps1,t2
h11, 198.18.1.11 ,dc1,ps1,t1

h12,198.18.1.12,dc1,ps1,t1
h31,198.18.3.31,dc2,ps2,t3
"""

ROW1 = "  - {name: h1, address: 198.18.0.1, dc: d, podset: p, tor: t}\n"


def yaml_error(text: str) -> TopologyError:
    with pytest.raises(TopologyError) as info:
        parse_topology(text, filename="fleet.yaml")
    return info.value


def csv_error(text: str) -> TopologyError:
    with pytest.raises(TopologyError) as info:
        parse_topology(text, filename="fleet.csv")
    return info.value


# --- the happy paths ------------------------------------------------------------------------


def test_yaml_parses_servers_sorted_and_services_deduplicated() -> None:
    topology = parse_topology(YAML, filename="fleet.yaml")
    assert [s.name for s in topology.servers] == ["h11", "h12", "h21", "h31"]
    assert topology.server("h21") == Server(
        name="h21", address="198.18.2.21", dc="dc1", podset="ps1", tor="t2"
    )
    assert dict(topology.services) == {"search": ("h11", "h21"), "storage": ("h31",)}


def test_csv_parses_the_same_columns_strips_blanks_and_skips_empty_lines() -> None:
    from_csv = parse_topology(CSV, filename="FLEET.CSV")
    from_yaml = parse_topology(YAML, filename="fleet.yaml")
    assert from_csv.servers == from_yaml.servers
    assert from_csv.server("h11") is not None
    assert from_csv.server("h11").address == "198.18.1.11"  # type: ignore[union-attr]
    assert dict(from_csv.services) == {}


def test_csv_columns_may_come_in_any_order() -> None:
    text = "tor,podset,dc,address,name\nt1,p1,d1,198.18.0.1,a\n"
    topology = parse_topology(text, filename="x.csv")
    assert topology.servers == (
        Server(name="a", address="198.18.0.1", dc="d1", podset="p1", tor="t1"),
    )


def test_yaml_values_are_strings_not_yaml_booleans_or_numbers() -> None:
    text = "servers:\n  - {name: 'yes', address: '198.18.0.1', dc: 1, podset: on, tor: 007}\n"
    server = parse_topology(text, filename="x.yaml").servers[0]
    assert (server.name, server.dc, server.podset, server.tor) == ("yes", "1", "on", "007")


def test_ipv6_addresses_are_accepted() -> None:
    text = "servers:\n  - {name: h1, address: '2001:db8::1', dc: d, podset: p, tor: t}\n"
    assert parse_topology(text, filename="x.yaml").servers[0].address == "2001:db8::1"


def test_empty_services_is_allowed() -> None:
    topology = parse_topology("servers:\n" + ROW1 + "services:\n", filename="x.yaml")
    assert dict(topology.services) == {}


def test_indexes_are_sorted_and_scoped() -> None:
    topology = parse_topology(YAML, filename="fleet.yaml")
    assert topology.tors() == ("t1", "t2", "t3")
    assert topology.tors(dc="dc1") == ("t1", "t2")
    assert topology.tors(dc="nope") == ()
    assert [s.name for s in topology.tor_servers("t1")] == ["h11", "h12"]
    assert topology.tor_servers("nope") == ()
    assert topology.dcs() == ("dc1", "dc2")
    assert topology.podsets() == ("ps1", "ps2")
    assert topology.podsets(dc="dc2") == ("ps2",)
    assert topology.entities("server") == ("h11", "h12", "h21", "h31")
    assert topology.server("nope") is None
    h31 = topology.server("h31")
    assert h31 is not None
    assert [h31.entity(level) for level in ("server", "tor", "podset", "dc")] == [
        "h31",
        "t3",
        "ps2",
        "dc2",
    ]


def test_dump_then_parse_round_trips() -> None:
    topology = parse_topology(YAML, filename="fleet.yaml")
    again = parse_topology(dump_topology_yaml(topology), filename="again.yaml")
    assert again == topology
    assert dict(again.services) == dict(topology.services)


def test_topology_from_servers_validates_like_the_parser() -> None:
    a = Server(name="a", address="198.18.0.1", dc="d", podset="p", tor="t")
    b = Server(name="b", address="198.18.0.1", dc="d", podset="p", tor="t")
    with pytest.raises(ValueError, match="address"):
        topology_from_servers([a, b])
    with pytest.raises(ValueError, match="unknown server 'zz'"):
        topology_from_servers([a], {"svc": ["zz"]})


def test_topology_error_is_an_input_error() -> None:
    assert isinstance(yaml_error(""), InputError)


# --- every error names the file, the line and the field -------------------------------------


def test_missing_field() -> None:
    text = "servers:\n" + ROW1 + "  - {name: h2, dc: d, podset: p, tor: t}\n"
    err = yaml_error(text)
    assert (err.file, err.line, err.field) == ("fleet.yaml", 3, "address")
    assert str(err) == "fleet.yaml:3: field 'address': is missing"


def test_empty_field_counts_as_missing() -> None:
    text = "servers:\n  - {name: h1, address: 198.18.0.1, dc: '', podset: p, tor: t}\n"
    err = yaml_error(text)
    assert (err.line, err.field) == (2, "dc")


def test_bad_address() -> None:
    text = "servers:\n" + ROW1 + "  - {name: h2, address: 198.18.0.999, dc: d, podset: p, tor: t}\n"
    err = yaml_error(text)
    assert (err.file, err.line, err.field) == ("fleet.yaml", 3, "address")
    assert "'198.18.0.999' is not an IP address" in str(err)


def test_bad_name() -> None:
    text = "servers:\n  - {name: 'h 1', address: 198.18.0.1, dc: d, podset: p, tor: t}\n"
    err = yaml_error(text)
    assert (err.line, err.field) == (2, "name")
    assert "not a valid name" in err.problem


def test_duplicate_name() -> None:
    text = "servers:\n" + ROW1 + "  - {name: h1, address: 198.18.0.2, dc: d, podset: p, tor: t}\n"
    err = yaml_error(text)
    assert (err.file, err.line, err.field) == ("fleet.yaml", 3, "name")
    assert "duplicate server 'h1' (first on line 2)" in str(err)


def test_duplicate_address() -> None:
    text = "servers:\n" + ROW1 + "  - {name: h2, address: 198.18.0.1, dc: d, podset: p, tor: t}\n"
    err = yaml_error(text)
    assert (err.file, err.line, err.field) == ("fleet.yaml", 3, "address")
    assert "duplicate address '198.18.0.1' (first on line 2)" in str(err)


def test_tor_in_two_podsets() -> None:
    text = "servers:\n" + ROW1 + "  - {name: h2, address: 198.18.0.2, dc: d, podset: q, tor: t}\n"
    err = yaml_error(text)
    assert (err.file, err.line, err.field) == ("fleet.yaml", 3, "tor")
    assert "ToR 't' is in d/p on line 2, not in d/q" in str(err)


def test_tor_in_two_podsets_names_the_offending_line_not_a_later_good_one() -> None:
    text = (
        "servers:\n"
        + ROW1
        + "  - {name: h2, address: 198.18.0.2, dc: d, podset: q, tor: t}\n"
        + "  - {name: h3, address: 198.18.0.3, dc: d, podset: p, tor: t}\n"
    )
    assert yaml_error(text).line == 3


def test_podset_in_two_dcs() -> None:
    text = "servers:\n" + ROW1 + "  - {name: h2, address: 198.18.0.2, dc: e, podset: p, tor: u}\n"
    err = yaml_error(text)
    assert (err.line, err.field) == (3, "podset")
    assert "podset 'p' is in d on line 2, not in e" in str(err)


def test_bad_yaml_names_the_line() -> None:
    err = yaml_error("servers:\n  - {name: h1, address: 198.18.0.1\n  - x\n")
    assert err.file == "fleet.yaml"
    assert err.line == 4
    assert "not valid YAML" in str(err)


def test_unknown_top_level_key() -> None:
    err = yaml_error("servers:\n" + ROW1 + "extra: 1\n")
    assert err.field == "extra"
    assert err.line is not None
    assert "unknown key" in str(err)


def test_unknown_server_key() -> None:
    text = "servers:\n  - {name: h1, address: 198.18.0.1, dc: d, podset: p, tor: t, rack: r}\n"
    err = yaml_error(text)
    assert (err.file, err.line, err.field) == ("fleet.yaml", 2, "rack")
    assert "unknown column" in str(err)


def test_service_naming_an_unknown_server() -> None:
    err = yaml_error("servers:\n" + ROW1 + "services:\n  search:\n    - h1\n    - h9\n")
    assert (err.file, err.line, err.field) == ("fleet.yaml", 6, "services.search")
    assert "unknown server 'h9'" in str(err)


def test_services_must_be_a_mapping_of_lists() -> None:
    err = yaml_error("servers:\n" + ROW1 + "services: [a]\n")
    assert (err.line, err.field) == (3, "services")
    err = yaml_error("servers:\n" + ROW1 + "services:\n  s: h1\n")
    assert (err.line, err.field) == (4, "services.s")


def test_structure_errors() -> None:
    assert yaml_error("- a\n").line == 1
    err = yaml_error("servers: 3\n")
    assert (err.line, err.field) == (1, "servers")
    err = yaml_error("servers:\n  - h1\n")
    assert (err.line, err.field) == (2, "servers")
    err = yaml_error("servers:\n  - {name: [h1], address: 198.18.0.1, dc: d, podset: p, tor: t}\n")
    assert (err.line, err.field) == (2, "name")


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_empty_yaml_file(text: str) -> None:
    err = yaml_error(text)
    assert err.file == "fleet.yaml"
    assert err.field == "servers"
    assert "empty file" in str(err)


def test_yaml_without_servers() -> None:
    err = yaml_error("servers: []\n")
    assert (err.file, err.field) == ("fleet.yaml", "servers")
    assert "no servers" in str(err)


def test_empty_csv_file() -> None:
    err = csv_error("")
    assert (err.file, err.line) == ("fleet.csv", 1)
    assert "empty file" in str(err)


def test_csv_header_only() -> None:
    err = csv_error("name,address,dc,podset,tor\n")
    assert (err.file, err.field) == ("fleet.csv", "servers")


def test_csv_header_missing_a_column() -> None:
    err = csv_error("name,address,dc,podset\nh1,198.18.0.1,d,p\n")
    assert (err.file, err.line, err.field) == ("fleet.csv", 1, "tor")
    assert "missing from the header" in str(err)


def test_csv_unknown_column() -> None:
    err = csv_error("name,address,dc,podset,tor,rack\nh1,198.18.0.1,d,p,t,r\n")
    assert (err.file, err.field) == ("fleet.csv", "rack")
    assert err.line == 1  # the header names the column


def test_csv_bad_address_and_missing_value() -> None:
    good = "name,address,dc,podset,tor\nh1,198.18.0.1,d,p,t\n"
    err = csv_error(good + "h2,nope,d,p,t\n")
    assert (err.file, err.line, err.field) == ("fleet.csv", 3, "address")
    err = csv_error(good + "h2,198.18.0.2,,p,t\n")
    assert (err.line, err.field) == (3, "dc")


def test_csv_more_values_than_columns() -> None:
    err = csv_error("name,address,dc,podset,tor\nh1,198.18.0.1,d,p,t,extra\n")
    assert (err.file, err.line) == ("fleet.csv", 2)
    assert "more values than columns" in str(err)


def test_csv_duplicate_name_counts_real_lines() -> None:
    err = csv_error("name,address,dc,podset,tor\nh1,198.18.0.1,d,p,t\n\nh1,198.18.0.2,d,p,t\n")
    assert (err.file, err.line, err.field) == ("fleet.csv", 4, "name")
    assert "first on line 2" in str(err)


def test_csv_duplicate_address_and_tor_conflicts() -> None:
    head = "name,address,dc,podset,tor\nh1,198.18.0.1,d,p,t\n"
    err = csv_error(head + "h2,198.18.0.1,d,p,t\n")
    assert (err.line, err.field) == (3, "address")
    err = csv_error(head + "h2,198.18.0.2,d,q,t\n")
    assert (err.line, err.field) == (3, "tor")


def test_key_given_twice_in_one_server_is_an_error() -> None:
    err = yaml_error(
        "servers:\n  - {name: a, name: b, address: 198.18.0.1, dc: d, podset: p, tor: t}\n"
    )
    assert (err.line, err.field) == (2, "name")
    assert "given twice" in str(err)


def test_unknown_top_level_key_names_its_own_line() -> None:
    err = yaml_error("servers:\n" + ROW1 + "switches: []\n")
    assert (err.line, err.field) == (3, "switches")


def test_invalid_service_name_names_its_line() -> None:
    err = yaml_error("servers:\n" + ROW1 + "services:\n  'bad name': [h1]\n")
    assert (err.line, err.field) == (4, "services")
