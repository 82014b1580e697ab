"""The dashboard in a real headless Chromium, served by a real uvicorn on 127.0.0.1.

Checks that the heatmap draws every ToR pair and fills exactly the cells with data, that the
tooltip, selectors and agents table work, that no request leaves 127.0.0.1, and saves the
screenshot in docs/dashboard.png.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import uvicorn
from playwright.sync_api import expect, sync_playwright

from pingmesh.clock import FakeClock
from pingmesh.config import ServerConfig
from pingmesh.controller.topology_source import TopologySource
from pingmesh.core.topology import Topology
from pingmesh.store.results import MatrixRow, ResultsDB
from tests.web.apps import full_app
from tests.web.fleet import grid_topology, matrix_row, sla_row, window

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
BAD_TOR = "d1p2t3"  # its inbound column is red: what a sick ToR looks like (PM §5.1)


@dataclass(frozen=True, slots=True, kw_only=True)
class Expected:
    tors: int
    filled: int
    failed: int
    podsets: int
    podset_filled: int
    agents: dict[str, int]


def _tor_matrix(topology: Topology, start: int) -> list[MatrixRow]:
    """A believable 30 s ToR matrix: mostly green, a red column, holes and dead pairs."""
    tors = topology.entities("tor")
    place = {s.tor: (s.dc, s.podset) for s in topology.servers}
    rows = []
    for i, src in enumerate(tors):
        for j, dst in enumerate(tors):
            if (i * 7 + j * 3) % 13 == 5:
                continue  # no data: white
            if place[src][0] != place[dst][0] and (i + j) % 3:
                continue  # inter-DC pairs are probed by a few servers only (PM §3.3.1)
            if (i * 5 + j) % 41 == 7:
                rows.append(matrix_row("30s", start, "tor", src, dst, 12, p99_us=None, failures=12))
                continue
            if place[src] == place[dst]:
                p99 = 380.0 + 37 * ((i * 31 + j * 17) % 13)
            elif place[src][0] == place[dst][0]:
                p99 = 1100.0 + 83 * ((i * 13 + j * 7) % 17)
            else:
                p99 = 2600.0 + 61 * ((i * 11 + j * 5) % 19)
            if dst == BAD_TOR:
                p99 = 6200.0 + 450 * (i % 9)
            elif (i * 3 + j * 11) % 29 == 4:
                p99 = 4300.0  # yellow
            failures = 2 if (i + 2 * j) % 23 == 0 else 0
            rows.append(
                matrix_row("30s", start, "tor", src, dst, 60, p99_us=p99, failures=failures)
            )
    return rows


def _podset_matrix(topology: Topology, start: int) -> list[MatrixRow]:
    podsets = topology.entities("podset")
    return [
        matrix_row("30s", start, "podset", src, dst, 200, p99_us=900.0 + 100 * i + 10 * j)
        for i, src in enumerate(podsets)
        for j, dst in enumerate(podsets)
        if i != j or i % 2 == 0
    ]


def _fill(db: ResultsDB, topology: Topology, now_s: float) -> Expected:
    start = int(now_s) - 35
    tor_rows = _tor_matrix(topology, start)
    podset_rows = _podset_matrix(topology, start)
    sla = [sla_row("30s", start, "tor", tor, 100, p99_us=900.0) for tor in topology.entities("tor")]
    db.write_window(window("30s", start, 30, computed_at_s=now_s - 2), sla, tor_rows + podset_rows)
    servers = list(topology.servers)
    for k, server in enumerate(servers):
        if k % 16 == 5:
            continue  # never seen
        seen_s = now_s - (900 if k % 20 == 7 else 3 + k % 7)
        db.record_agent_seen(
            server.name, server.address, now_s=seen_s, fetched=True, pinglist_version="3f9a1c02"
        )
        db.record_agent_seen(server.name, server.address, now_s=seen_s, uploaded=True)
    db.record_agent_seen("d9p1t1s1", "198.18.200.1", now_s=now_s - 4000)  # decommissioned
    never = sum(1 for k in range(len(servers)) if k % 16 == 5)
    down = sum(1 for k in range(len(servers)) if k % 16 != 5 and k % 20 == 7)
    return Expected(
        tors=len(topology.entities("tor")),
        filled=len(tor_rows),
        failed=sum(1 for r in tor_rows if r.p99_us is None),
        podsets=len(topology.entities("podset")),
        podset_filled=len(podset_rows),
        agents={
            "up": len(servers) - never - down,
            "down": down,
            "never_seen": never,
            "removed": 1,
        },
    )


class _Server:
    """uvicorn in a background thread on a free 127.0.0.1 port."""

    def __init__(self, app: Any) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        config = uvicorn.Config(
            app, log_level="warning", lifespan="off", ws="none", http="h11", access_log=False
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    def __enter__(self) -> str:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=20)
        self._socket.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Expected]]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (Debian package chromium)")
    topology = grid_topology(dcs=2, podsets=3, tors=4, servers=2)
    now_s = float(int(time.time()))
    db = ResultsDB(tmp_path_factory.mktemp("web") / "results.sqlite")
    expected = _fill(db, topology, now_s)
    app = full_app(db, TopologySource(topology), ServerConfig(), clock=FakeClock(now_s)).app
    with _Server(app) as url:
        yield url, expected
    db.close()


@pytest.fixture(scope="module")
def browser(served: tuple[str, Expected]) -> Iterator[Any]:
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[tuple[Any, list[str], list[str]]]:
    """A page, the URLs it requested, and the errors it logged."""
    context = browser.new_context(viewport={"width": 1360, "height": 1000})
    page = context.new_page()
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on(
        "console",
        lambda message: errors.append(message.text) if message.type == "error" else None,
    )
    yield page, requests, errors
    context.close()


def _attr(page: Any, selector: str, name: str) -> int:
    return int(page.get_attribute(selector, name))


def test_dashboard_draws_the_tor_heatmap_and_agents(
    served: tuple[str, Expected], page: tuple[Any, list[str], list[str]]
) -> None:
    url, expected = served
    tab, requests, errors = page
    tab.goto(url + "/")
    tab.wait_for_selector('#heatmap[data-state="ready"][data-level="tor"]', timeout=15_000)

    canvas = "#heatmap"
    assert _attr(tab, canvas, "data-cells") == expected.tors**2
    assert _attr(tab, canvas, "data-filled") == expected.filled
    assert _attr(tab, canvas, "data-failed") == expected.failed
    assert 0 < expected.failed < expected.filled < expected.tors**2

    tab.wait_for_selector("#agents tbody tr")
    for status, count in expected.agents.items():
        assert _attr(tab, f'#agent-counts [data-status="{status}"]', "data-count") == count
    assert tab.locator("#agents tbody tr").count() == sum(expected.agents.values())
    # Trouble first: the first rows are the down agents.
    assert tab.get_attribute("#agents tbody tr:first-child", "data-status") == "down"
    assert "30s window" in tab.inner_text("#window-line")
    # The window choices are the server's kinds, the fast one first and selected.
    options = tab.locator("#window option")
    assert [options.nth(k).get_attribute("value") for k in range(options.count())] == [
        "30s",
        "10m",
    ]
    expect(tab.locator("#window")).to_have_value("30s")

    # Hover the bad ToR's column in row 1: the tooltip names the pair and the value.
    tors = sorted({f"d{d}p{p}t{t}" for d in (1, 2) for p in (1, 2, 3) for t in (1, 2, 3, 4)})
    col = tors.index(BAD_TOR)
    box = tab.locator(canvas).bounding_box()
    cell = _attr(tab, canvas, "data-cell-px")
    x = box["x"] + _attr(tab, canvas, "data-origin-x") + col * cell + cell / 2
    y = box["y"] + _attr(tab, canvas, "data-origin-y") + 1 * cell + cell / 2
    tab.mouse.move(x, y)
    tooltip = tab.wait_for_selector("#tooltip:not([hidden])")
    text = tooltip.inner_text()
    assert f"{tors[1]} → {BAD_TOR}" in text
    assert "6.65 ms" in text
    assert "over the SLA" in text

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(SCREENSHOT), full_page=True)

    # The level selector redraws with the podset matrix.
    tab.select_option("#level", "podset")
    tab.wait_for_selector('#heatmap[data-state="ready"][data-level="podset"]')
    assert _attr(tab, canvas, "data-cells") == expected.podsets**2
    assert _attr(tab, canvas, "data-filled") == expected.podset_filled
    assert "level=podset" in tab.evaluate("location.hash")

    # The 10m window does not exist: an empty grid and a note, not 30 s data in disguise.
    tab.select_option("#window", "10m")
    tab.wait_for_selector('#heatmap[data-state="ready"][data-window="10m"]')
    assert _attr(tab, canvas, "data-filled") == 0
    assert "no 10m window" in tab.inner_text("#heatmap-note")

    assert errors == []
    _assert_local_only(requests)


def test_docs_page_renders_the_openapi_document(
    served: tuple[str, Expected], page: tuple[Any, list[str], list[str]]
) -> None:
    url, _ = served
    tab, requests, errors = page
    tab.goto(url + "/docs")
    tab.wait_for_selector('body[data-state="ready"]', timeout=15_000)
    titles = tab.locator(".doc-endpoint h3").all_inner_texts()
    assert any("/api/v1/heatmap" in t for t in titles)
    assert any("/api/v1/agents" in t for t in titles)
    assert tab.locator("#schema-HeatmapOut").count() == 1
    # Try it: the form for /api/v1/agents sends the request and shows the answer.
    agents = tab.locator('[id="op-get-/api/v1/agents"]')
    agents.locator("button").click()
    expect(agents.locator("pre")).to_have_text(re.compile(r"^200 OK\n\{"))
    assert errors == []
    _assert_local_only(requests)


def test_a_refused_question_shows_why_instead_of_stale_cells(
    served: tuple[str, Expected], page: tuple[Any, list[str], list[str]]
) -> None:
    url, _ = served
    tab, requests, _ = page
    tab.goto(url + "/#/overview?dc=d7")
    tab.wait_for_selector('#heatmap[data-state="refused"]', state="attached", timeout=15_000)
    assert _attr(tab, "#heatmap", "data-cells") == 0
    assert "'d7' is not a DC of the topology" in tab.inner_text("#heatmap-note")
    # The selector falls back to every DC and the link is corrected.
    expect(tab.locator("#dc")).to_have_value("")
    assert "dc=" not in tab.evaluate("location.hash")
    _assert_local_only(requests)


def _assert_local_only(requests: list[str]) -> None:
    assert requests
    outside = [u for u in requests if urlsplit(u).hostname != "127.0.0.1"]
    assert outside == []
