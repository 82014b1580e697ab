"""Every page in a real headless Chromium against a running ``pingmesh server`` (uvicorn on
127.0.0.1) with a day of history and raw probes, a real SMTP server (aiosmtpd) and a real
webhook receiver.

- the drill-down: heatmap cell → its server pairs → the pair's SmokePing graph → raw probes
  with 5-tuples; the node page (forward and reverse); the topology (red links when a rule
  fires); SLAs per scope and per service; times in the browser's zone or UTC;
- an incident injected into the results database shows on the alerts page, its alert
  reaches the SMTP server and the webhook receiver exactly once, the dashboard sounds until
  it is acknowledged, and after the incident closes the recovery notice arrives, once;
- every request stays on 127.0.0.1; screenshots of the main pages go to docs/.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect, sync_playwright
from pydantic import SecretStr

from pingmesh.alerts.notifiers import verify_signature
from pingmesh.config import (
    AlertRuleConfig,
    AlertsConfig,
    AnalysisConfig,
    ServerConfig,
    SmtpNotifierConfig,
    WebhookNotifierConfig,
)
from pingmesh.controller.topology_source import TopologySource
from pingmesh.core.topology import dump_topology_yaml
from pingmesh.server.app import PingmeshServer
from pingmesh.store.incidents import Detection
from tests.alerts.receivers import Delivery, Mailbox, smtp_server, webhook_sink
from tests.web.mesh import HEALTHY_PAIR, SICK_TOR, fill_history, fill_raw, mesh_topology

pytestmark = [pytest.mark.browser, pytest.mark.slow]

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
DOCS = Path(__file__).resolve().parents[2] / "docs"
SMTP_PASSWORD = "smtp-pw-never-shown"
HOOK_SECRET = "hook-secret-never-shown"
INCIDENT_SUBJECT = f"black_hole@tor/{SICK_TOR}"


class ServerThread:
    """``PingmeshServer.run()`` on an event loop of its own, in a thread; cancelled on exit."""

    def __init__(self, server: PingmeshServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.task: asyncio.Task[None] | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.error: BaseException | None = None

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.task = self.loop.create_task(self.server.run())
        try:
            self.loop.run_until_complete(self.task)
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.loop.close()

    def __enter__(self) -> str:
        self.server.bind()
        self.thread.start()
        deadline = time.monotonic() + 30
        while self.server._uvicorn is None or not self.server._uvicorn.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {self.error!r}")
            time.sleep(0.05)
        return self.server.url

    def __exit__(self, *exc: object) -> None:
        if self.task is not None:
            self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the server did not stop"


@dataclass
class Fleet:
    url: str
    server: PingmeshServer
    box: Mailbox
    hooks: list[Delivery]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (Debian package chromium)")
    data = tmp_path_factory.mktemp("server")
    topology = mesh_topology()
    topology_file = data / "topology.yaml"
    topology_file.write_text(dump_topology_yaml(topology), encoding="utf-8")
    with (
        smtp_server(user="alerts", password=SMTP_PASSWORD) as (smtp_port, box),
        webhook_sink() as (hook_url, hooks),
    ):
        config = ServerConfig(
            listen="127.0.0.1:0",
            data_dir=data / "data",
            topology=topology_file,
            # The analysis never catches up to now: the windows are the ones written here.
            # No detector or rollup either: the incident is the one this test injects.
            analysis=AnalysisConfig(lag_s=40 * 86400, detect=False, rollups=False),
            alerts=AlertsConfig(
                evaluate_every_s=0.3,
                default_rules=False,
                rules=(
                    AlertRuleConfig(id="incidents", scope="incident"),
                    AlertRuleConfig(
                        id="tor-p99",
                        scope="link",
                        level="tor",
                        window="30s",
                        latency_us=5000.0,
                        n=2,
                        m=3,
                        severity="warning",
                    ),
                ),
                smtp=(
                    SmtpNotifierConfig(
                        host="127.0.0.1",
                        port=smtp_port,
                        security="plain",
                        username="alerts",
                        password=SecretStr(SMTP_PASSWORD),
                        sender="pingmesh@example.test",
                        recipients=("oncall@example.test",),
                    ),
                ),
                webhooks=(WebhookNotifierConfig(url=hook_url, secret=SecretStr(HOOK_SECRET)),),
                trace_wait_s=0.0,
                retry_after_s=1.0,
            ),
        )
        server = PingmeshServer(config, TopologySource.from_file(topology_file))
        now_s = time.time()
        fill_history(server.db, topology, now_s)
        fill_raw(server.raw, topology, now_s)
        with ServerThread(server) as url:
            yield Fleet(url=url, server=server, box=box, hooks=hooks)


@pytest.fixture(scope="module")
def browser(fleet: Fleet) -> Iterator[Any]:
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@dataclass
class Tab:
    page: Any
    requests: list[str]
    errors: list[str]

    def check_clean(self) -> None:
        assert self.errors == []
        assert self.requests
        outside = [u for u in self.requests if urlsplit(u).hostname != "127.0.0.1"]
        assert outside == []


@pytest.fixture
def tab(browser: Any) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": 1360, "height": 950}, timezone_id="UTC")
    page = context.new_page()
    t = Tab(page=page, requests=[], errors=[])
    page.on("request", lambda r: t.requests.append(r.url))
    page.on("pageerror", lambda e: t.errors.append(str(e)))
    page.on("console", lambda m: t.errors.append(m.text) if m.type == "error" else None)
    yield t
    context.close()


def _shot(page: Any, name: str) -> None:
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / name), full_page=True)


def _wait(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def test_drill_down_from_a_heatmap_cell_to_raw_probes(fleet: Fleet, tab: Tab) -> None:
    page = tab.page
    page.goto(f"{fleet.url}/")
    page.wait_for_selector('#heatmap[data-state="ready"][data-level="tor"]', timeout=20_000)
    tors = sorted({s.tor for s in fleet.server.source.topology.servers})
    canvas = "#heatmap"
    box = page.locator(canvas).bounding_box()
    cell = int(page.get_attribute(canvas, "data-cell-px"))
    ox = int(page.get_attribute(canvas, "data-origin-x"))
    oy = int(page.get_attribute(canvas, "data-origin-y"))
    row, col = tors.index("d1p1t1"), tors.index(SICK_TOR)
    page.mouse.click(box["x"] + ox + col * cell + cell / 2, box["y"] + oy + row * cell + cell / 2)

    # The cell's pairs: server i of d1p1t1 → server i of the sick ToR.
    page.wait_for_selector('[data-page="pair"][data-state="ready"]')
    assert "#/pair?" in page.evaluate("location.hash")
    rows = page.locator("#pairs tbody tr[data-pair]")
    expect(rows).to_have_count(3)
    assert page.locator("#cell-chart").get_attribute("data-state") == "ready"
    _shot(page, "pairs.png")

    # One pair's history: the SmokePing graph and its raw probes with 5-tuples.
    rows.first.locator("a.go").click()
    page.wait_for_selector('[data-page="history"][data-state="ready"]')
    chart = page.locator("#history-chart")
    assert int(chart.get_attribute("data-filled")) > 10
    probes = page.locator("#probes tbody tr[data-outcome]")
    expect(probes.first).to_be_visible()
    text = probes.first.inner_text()
    assert "tcp 198.18." in text
    assert ":9781" in text
    assert page.locator('#probes tbody tr[data-outcome="timeout"]').count() > 0
    page.check("#failed-only")
    expect(page.locator('#probes tbody tr[data-outcome="ok"]')).to_have_count(0)
    _shot(page, "history.png")
    tab.check_clean()


def test_history_times_follow_the_browser_zone_or_utc(fleet: Fleet, browser: Any) -> None:
    context = browser.new_context(viewport={"width": 1200, "height": 800},
                                  timezone_id="Asia/Shanghai")  # fmt: skip
    page = context.new_page()
    src, dst = HEALTHY_PAIR
    # A fixed range: 2 hours that start at 00:00 UTC, i.e. 08:00 in Shanghai.
    start, end = "2000-01-01T00:00:00Z", "2000-01-01T02:00:00Z"
    page.goto(f"{fleet.url}/#/history?src={src}&dst={dst}&start={start}&end={end}")
    page.wait_for_selector('[data-page="history"][data-state="ready"]', timeout=20_000)
    ticks = page.get_attribute("#history-chart", "data-ticks")
    assert ticks is not None
    assert ticks.split(",")[0] == "08:00"
    assert "Asia/Shanghai (UTC+08:00)" in page.inner_text('[data-page="history"] .range .zone')
    assert page.input_value('[data-page="history"] .range-start') == "2000-01-01T08:00"
    page.check("#utc")
    expect(page.locator("#history-chart")).to_have_attribute(
        "data-ticks", re.compile(r"^1-01,00:30,01:00")
    )  # midnight: the date
    assert "UTC" in page.inner_text('[data-page="history"] .range .zone')
    page.uncheck("#utc")
    context.close()


def test_node_page_shows_forward_and_reverse_graphs(fleet: Fleet, tab: Tab) -> None:
    page = tab.page
    page.goto(f"{fleet.url}/#/node?name=d1p1t1s1")
    page.wait_for_selector('[data-page="node"][data-state="ready"]', timeout=20_000)
    forward = page.locator("#forward canvas[data-peer]")
    reverse = page.locator("#reverse canvas[data-peer]")
    assert forward.count() == reverse.count() > 5  # symmetric pinglists
    assert int(forward.first.get_attribute("data-filled")) > 0
    # The page says which windows the graphs are made of (the last 6 h: 35 or 36 ten-minute
    # windows, as the clock falls).
    assert re.search(r"\b3[56] 10m windows\.", page.inner_text('[data-page="node"] .hint'))
    page.locator("#forward a.thumb").first.click()
    page.wait_for_selector('[data-page="history"][data-state="ready"]')
    assert "src=d1p1t1s1" in page.evaluate("location.hash")
    page.goto(f"{fleet.url}/#/node?name=d1p1t1s1")
    page.wait_for_selector('[data-page="node"][data-state="ready"]')
    _shot(page, "node.png")
    tab.check_clean()


def test_topology_turns_red_where_a_rule_fires(fleet: Fleet, tab: Tab) -> None:
    page = tab.page
    page.goto(f"{fleet.url}/#/topology?level=tor")
    page.wait_for_selector('[data-page="topology"][data-state="ready"]', timeout=20_000)
    # The tor-p99 rule fires on every link into the sick ToR (its inbound P99 is 9 ms).
    page.wait_for_selector(f'#topology path[data-link="d1p1t1->{SICK_TOR}"][data-alerting="1"]',
                           timeout=20_000)  # fmt: skip
    healthy = page.locator('#topology path[data-link="d1p1t1->d1p1t2"]')
    assert healthy.get_attribute("data-alerting") == "0"
    assert healthy.get_attribute("stroke") != "#d1453b"
    assert page.locator("#topology circle.node").count() == 12
    _shot(page, "topology.png")
    page.select_option("#topo-level", "dc")
    expect(page.locator("#topology circle.node")).to_have_count(2)
    tab.check_clean()


def test_sla_pages_per_scope_and_per_service(fleet: Fleet, tab: Tab) -> None:
    page = tab.page
    page.goto(f"{fleet.url}/#/sla?scope=tor")
    page.wait_for_selector('[data-page="sla"][data-state="ready"]', timeout=20_000)
    expect(page.locator("#sla-table tbody tr[data-entity]")).to_have_count(12)
    page.locator('#sla-table a[data-entity="d1p1t1"]').click()
    page.wait_for_selector('#sla-chart[data-state="ready"]')
    page.select_option("#sla-scope", "service")
    expect(page.locator("#sla-table tbody tr[data-entity]")).to_have_count(2)
    assert "search (12 servers)" in page.inner_text('[data-page="sla"]')
    _shot(page, "sla.png")
    tab.check_clean()


def _for_alert(fleet: Fleet, alert_id: str) -> tuple[list[str], list[str]]:
    mails = [
        str(m["X-Pingmesh-Event"]) for m in list(fleet.box.messages)
        if m["X-Pingmesh-Alert"] == alert_id
    ]  # fmt: skip
    hooks = [d.json()["event"] for d in list(fleet.hooks) if d.json()["alert"]["id"] == alert_id]
    return mails, hooks


def test_an_injected_incident_alerts_once_sounds_and_recovers_once(fleet: Fleet, tab: Tab) -> None:
    page = tab.page
    page.goto(f"{fleet.url}/#/alerts")
    page.wait_for_selector('[data-page="alerts"][data-state="ready"]', timeout=20_000)

    store = fleet.server.incidents
    hole = Detection(
        kind="black_hole",
        scope="tor",
        entity=SICK_TOR,
        summary=f"ToR {SICK_TOR} black-holes 3 server pairs",
        evidence={"pairs": [["d1p1t1s1", f"{SICK_TOR}s1"]]},
    )
    store.reconcile([hole], kinds={"black_hole"}, now_s=time.time())

    row = page.locator(f'#active-alerts [data-subject="{INCIDENT_SUBJECT}"]')
    expect(row).to_be_visible(timeout=30_000)
    alert_id = row.get_attribute("data-alert")
    assert alert_id
    _wait(lambda: _for_alert(fleet, alert_id) == (["firing"], ["firing"]))

    # The webhook is signed with the secret; neither secret shows on any page.
    (delivery,) = [d for d in fleet.hooks if d.json()["alert"]["id"] == alert_id]
    headers = {k.lower(): v for k, v in delivery.headers.items()}
    assert verify_signature(HOOK_SECRET.encode(), headers["x-pingmesh-timestamp"],
                            delivery.body, headers["x-pingmesh-signature"])  # fmt: skip
    (mail,) = [m for m in fleet.box.messages if m["X-Pingmesh-Alert"] == alert_id]
    assert mail["Subject"].startswith("[pingmesh] FIRING critical: ToR d1p2t3 black-holes")
    assert fleet.box.logins
    assert set(fleet.box.logins) == {"alerts"}

    # The alarm (on by default) plays while an alert is neither acknowledged nor muted, once
    # the browser allows sound: any click on the page is the gesture it waits for.
    assert page.get_attribute("body", "data-sound") in {"blocked", "playing"}
    page.locator('[data-page="alerts"] h2').first.click()
    page.wait_for_selector('body[data-sound="playing"]', timeout=15_000)
    expect(page.locator("body")).to_have_attribute("data-beeps", re.compile(r"^[1-9]"))
    page.locator(f'#active-alerts [data-alert="{alert_id}"] a.summary-link').click()
    page.wait_for_selector(f'#alert-detail [data-alert="{alert_id}"]')
    assert "d1p1t1s1" in page.inner_text("#alert-detail")
    _shot(page, "alerts.png")
    buttons = page.locator("#active-alerts button.ack:not([disabled])")
    while (left := buttons.count()) > 0:
        buttons.first.click()
        expect(buttons).to_have_count(left - 1)
    page.wait_for_selector('body[data-sound="armed"]', timeout=20_000)

    # The incident ends: one recovery notice on each notifier, and nothing more after it.
    store.reconcile([], kinds={"black_hole"}, now_s=time.time())
    _wait(lambda: _for_alert(fleet, alert_id) == (["firing", "resolved"], ["firing", "resolved"]))
    time.sleep(1.5)  # several more engine passes
    assert _for_alert(fleet, alert_id) == (["firing", "resolved"], ["firing", "resolved"])
    page.goto(f"{fleet.url}/#/alerts?id={alert_id}")
    page.wait_for_selector(f'#alert-detail [data-alert="{alert_id}"][data-state="resolved"]',
                           timeout=20_000)  # fmt: skip
    everything = page.content() + "".join(d.body.decode() for d in fleet.hooks)
    assert SMTP_PASSWORD not in everything
    assert HOOK_SECRET not in everything
    tab.check_clean()
