"""The bandwidth page in a real headless Chromium: graphs, top talkers, selection."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect, sync_playwright

from pingmesh.clock import SystemClock
from pingmesh.store.bandwidth import BandwidthStore
from pingmesh.store.results import ResultsDB
from pingmesh.web.app import create_app
from pingmesh.web.bandwidth_api import BandwidthService
from tests.web.test_bandwidth_api import Served, fill

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run"]
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "bandwidth.png"


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    db = ResultsDB(tmp_path_factory.mktemp("bw") / "r.sqlite")
    store = BandwidthStore(db.database)
    fill(store, time.time())  # the page asks for ranges ending now
    service = BandwidthService(store, clock=SystemClock())
    with Served(create_app([service.router])) as base:
        yield base
    db.close()


@pytest.fixture
def page(url: str) -> Iterator[tuple[Any, list[str]]]:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        hosts: list[str] = []
        page.on("request", lambda request: hosts.append(urlsplit(request.url).hostname or ""))
        yield page, hosts
        browser.close()


def test_the_page_draws_the_busiest_interface_and_lists_top_talkers(
    page: tuple[Any, list[str]], url: str
) -> None:
    browser_page, hosts = page
    browser_page.goto(f"{url}/bandwidth#range=15m")
    chart = browser_page.locator("#rate-chart")
    expect(chart).not_to_have_attribute("data-points", "0", timeout=20_000)
    assert int(chart.get_attribute("data-points")) >= 10
    rows = browser_page.locator("#top-table tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("db1")  # 50 kB/s in: the top talker
    # The busiest non-loopback interface is chosen, and the choice is in the URL.
    assert "agent=db1" in browser_page.url
    assert "iface=eth0" in browser_page.url
    expect(browser_page.locator("#series-line")).to_contain_text("db1 · eth0")
    # Clicking a talker graphs it.
    rows.nth(1).click()
    expect(browser_page.locator("#series-line")).to_contain_text("web1 · eth0")
    expect(browser_page.locator("#series-line")).to_contain_text("↑ 80.0 kbit/s")
    browser_page.locator("#rate-chart").hover(position={"x": 900, "y": 100})
    expect(browser_page.locator("#tooltip")).to_be_visible()
    expect(browser_page.locator("#tooltip")).to_contain_text("upload")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    browser_page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert set(hosts) == {"127.0.0.1"}  # nothing is loaded from anywhere else


def test_a_range_without_data_says_so(page: tuple[Any, list[str]], url: str) -> None:
    browser_page, _ = page
    browser_page.goto(f"{url}/bandwidth#range=5m&agent=nobody&iface=eth9")
    expect(browser_page.locator("#refresh-state")).to_contain_text("updated", timeout=20_000)
    # The data ends now and covers 10 minutes, so 5 minutes has data; an unknown agent does not.
    expect(browser_page.locator("#iface")).not_to_have_value("nobody\u0000eth9")
