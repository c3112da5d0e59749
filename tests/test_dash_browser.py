"""The dashboard in a real headless Chromium (Debian's ``/usr/bin/chromium`` via Playwright).

One synthetic lake, one in-process server on 127.0.0.1 (free port) and one
browser for the module; every wait is bounded. Each test also checks that the
browser console stayed free of errors.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import lake_fixtures as lf
import pytest

from dash_app.app import create_app
from dash_app.server import BackgroundServer
from storage.lake import open_lake

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("ALPHA_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
WAIT_MS = 20_000
POLL_MS = 1000


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("lake")
    lf.demo_lake(root)
    lf.large_run(root)
    lf.in_progress_run(root, "list-live", steps=20, total=400, symbio=False)
    return open_lake(str(root))


@pytest.fixture(scope="module")
def server(lake) -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(lake, poll_ms=POLL_MS)) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (install Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


class Tab:
    """A page plus the console errors and Dash callback responses it saw."""

    def __init__(self, page, base_url: str) -> None:
        self.page, self.base_url = page, base_url
        self.errors: list[str] = []
        self.updates: list[dict] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("response", self._response)

    def _response(self, resp) -> None:
        if "_dash-update-component" in resp.url and resp.status == 200:
            try:
                self.updates.append(resp.json())
            except Exception:  # noqa: BLE001 - a body we cannot read is not a test result
                pass
        elif resp.status >= 400:
            self.errors.append(f"HTTP {resp.status} {resp.url}")

    def open(self, path: str, ready: str) -> None:
        self.page.goto(self.base_url + path, timeout=WAIT_MS)
        self.page.wait_for_selector(ready, timeout=WAIT_MS)

    def js(self, script: str, arg=None):
        return self.page.evaluate(script, arg)

    def graph(self, card: str, expr: str):
        """Evaluate ``expr`` on the Plotly div of chart card ``card`` (bound to ``gd``)."""
        return self.js(
            f"() => {{ const gd = document.querySelector('#card-{card} .js-plotly-plot'); return {expr}; }}"
        )

    def count(self, selector: str) -> int:
        return self.page.locator(selector).count()

    def assert_clean_console(self) -> None:
        assert self.errors == [], self.errors


@pytest.fixture
def tab(browser, server) -> Iterator[Tab]:
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.set_default_timeout(WAIT_MS)
    t = Tab(page, server.url)
    yield t
    page.close()


def wait_graphs(tab: Tab, *cards: str) -> None:
    for card in cards:
        tab.page.wait_for_selector(f"#card-{card} .js-plotly-plot .main-svg", timeout=WAIT_MS)


def test_runs_list_filters_sorts_and_selects_for_compare(tab: Tab, lake) -> None:
    tab.open("/", "#runs-table td.dash-cell")
    rows = tab.page.locator("#runs-table tr:has(td.dash-cell)")
    assert rows.count() == 7
    text = tab.page.inner_text("#runs-table")
    for run_id in ("plain-0001", "symbio-0001", "search-0001", "live-0001", "large-0001"):
        assert run_id in text
    assert "Symbio · search" in text and "60 / 5,000" in text
    link = tab.page.locator("#runs-table a", has_text="symbio-0001")
    assert link.get_attribute("href") == "/runs/symbio-0001"

    status_filter = tab.page.locator('th.dash-filter[data-dash-column="status"] input[type=text]')
    status_filter.fill("running")
    status_filter.press("Enter")
    tab.page.wait_for_function(
        "() => document.querySelectorAll('#runs-table tr td.dash-cell.column-0').length === 2",
        timeout=WAIT_MS,
    )
    running = tab.page.inner_text("#runs-table")
    assert "live-0001" in running and "list-live" in running and "plain-0001" not in running
    status_filter.fill("")
    status_filter.press("Enter")
    tab.page.wait_for_function(
        "() => document.querySelectorAll('#runs-table tr td.dash-cell.column-0').length === 7",
        timeout=WAIT_MS,
    )

    tab.page.locator(
        'th.dash-header[data-dash-column="best_val_loss"] .column-header--sort'
    ).click()
    first = tab.page.locator("#runs-table tr td.dash-cell.column-7").first.inner_text()
    values = [
        v
        for v in tab.page.locator("#runs-table tr td.dash-cell.column-7").all_inner_texts()
        if v.strip()
    ]
    assert first == values[0] and values == sorted(values, key=float)

    # a running run's progress follows the lake while the list is open
    assert "20 / 400" in tab.page.inner_text("#runs-table")
    lf.append_steps(lake, "list-live", 21, 180, total=400, symbio=False)
    tab.page.wait_for_function(
        "() => document.querySelector('#runs-table').innerText.includes('200 / 400')",
        timeout=WAIT_MS,
    )

    checks = tab.page.locator("#runs-table td.dash-select-cell input")
    checks.nth(0).check()
    checks.nth(1).check()
    tab.page.wait_for_function(
        "() => document.querySelector('#compare-link').getAttribute('href').includes(',')",
        timeout=WAIT_MS,
    )
    href = tab.page.locator("#compare-link").get_attribute("href")
    assert href.startswith("/compare?runs=") and len(href.split("=")[1].split(",")) == 2
    tab.assert_clean_console()


def test_plain_run_has_clip_chart_and_no_symbio_sections(tab: Tab) -> None:
    tab.open("/runs/plain-0001", "#run-page")
    wait_graphs(tab, "loss", "lr", "grad_norm", "tokens_per_sec", "ms_per_iter", "clip")
    assert tab.graph("loss", "gd.data[0].x.length") == 300
    assert tab.graph("loss", "gd.data[1].x.length") == 6  # val loss every 50 steps
    assert tab.graph("clip", "gd.data.map(t => t.name)") == ["clip_coef", "clip_pct"]
    assert tab.graph("clip", "gd.layout.yaxis2.side") == "right"
    for symbio_only in (
        "#symbio-badge",
        "#symbio-tiles",
        "#section-cusum",
        "#section-batch",
        "#panel-symbio-config",
    ):
        assert tab.count(symbio_only) == 0, symbio_only
    assert tab.page.inner_text("#run-status") == "completed"
    tab.assert_clean_console()


def test_symbio_run_shows_every_symbio_section(tab: Tab, tmp_path_factory) -> None:
    tab.open("/runs/symbio-0001", "#run-page")
    wait_graphs(
        tab,
        "loss",
        "clip",
        "cusum",
        "weight_entropy",
        "effective_rank",
        "free_energy",
        "fitness",
        "batch",
    )
    wait_graphs(tab, "information_plane", "mi_trajectory")
    assert tab.page.inner_text("#symbio-badge") == "Symbio"
    assert tab.page.inner_text("#activation-tag") == "SwiGLU"
    assert tab.count("#search-mode-tag") == 0
    assert tab.count("#symbio-tiles .tile") == 8
    assert tab.count("#symbio-tiles .sparkline") >= 6
    labels = tab.page.locator("#symbio-tiles .tile-label").all_inner_texts()
    assert [t.lower() for t in labels] == [
        "weight entropy", "effective rank", "free energy", "population entropy",
        "complexity", "fitness", "cusum alerts", "batch size",
    ]  # fmt: skip

    cusum = tab.graph(
        "cusum",
        "({names: gd.data.map(t => t.name), shapes: gd.layout.shapes.map(s => [s.y0, s.line.dash]),"
        " hover: gd._fullLayout.hovermode, alerts: gd.data.slice(4).map(t => t.x.length)})",
    )
    assert cusum["names"][:4] == ["cusum_grad", "cusum_clip", "cusum_tps", "cusum_val"]
    assert cusum["shapes"] == [[3.5, "dash"]]  # the run's cusumSensitivity
    assert cusum["hover"] == "x unified"
    assert sum(cusum["alerts"]) > 0

    assert tab.graph("batch", "gd.data[0].line.shape") == "hv"
    assert tab.graph("batch", "gd.layout.annotations.length") > 0
    assert tab.graph("weight_entropy", "gd.data[0].x.length") == 600 // 50
    assert tab.graph("information_plane", "gd.data[0].marker.showscale") is True

    panel = tab.page.locator("#panel-symbio-config")
    panel.locator("summary").click()
    config = json.loads(panel.locator("pre").inner_text())
    assert config["cusumSensitivity"] == 3.5
    shots = Path(os.environ.get("ALPHA_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    tab.page.screenshot(path=str(shots / "symbio-run.png"), full_page=True)
    tab.assert_clean_console()


def test_search_run_ranks_candidates_and_highlights_the_winner(tab: Tab) -> None:
    tab.open("/runs/search-0001", "#candidate-table td.dash-cell")
    wait_graphs(tab, "activation_distribution")
    assert tab.page.inner_text("#search-mode-tag") == "FFN Activation Search"
    assert tab.graph("activation_distribution", "gd.data.every(t => t.stackgroup === 'act')")
    rows = tab.page.locator("#candidate-table tr:has(td.dash-cell)")
    assert rows.count() == 8
    winner = tab.page.locator(
        "#candidate-table tr:has(td[data-dash-column='winner']:has-text('★'))"
    )
    assert winner.count() == 1
    other = tab.page.locator("#candidate-table tr:has(td.dash-cell)").nth(3)
    bg = "el => getComputedStyle(el.querySelector('td[data-dash-column=\"candidate_id\"]')).backgroundColor"
    assert winner.evaluate(bg) != other.evaluate(bg)
    # sorted by best val loss: the winner comes first and has rank 1
    first = rows.nth(0)
    assert "★" in first.inner_text()
    # sortable by any column: sort by generation
    tab.page.locator(
        '#candidate-table th.dash-header[data-dash-column="generation"] .column-header--sort'
    ).click()
    gens = tab.page.locator("#candidate-table td[data-dash-column='generation']").all_inner_texts()
    assert gens == sorted(gens)
    tab.assert_clean_console()


def test_live_run_appends_points_while_open(tab: Tab, lake) -> None:
    tab.open("/runs/live-0001", "#run-page")
    wait_graphs(tab, "loss", "cusum", "batch")
    before = tab.graph("loss", "gd.data[0].x.length")
    assert before == 60
    lf.append_steps(lake, "live-0001", 61, 30, total=5000)
    tab.page.wait_for_function(
        "() => document.querySelector('#card-loss .js-plotly-plot').data[0].x.length >= 90",
        timeout=WAIT_MS,
    )
    assert tab.graph("loss", "gd.data[0].x.length") == 90
    assert tab.graph("loss", "gd.data[0].x[89]") == 90
    tab.page.wait_for_function(
        "() => document.querySelector('#tile-step .tile-value').innerText.startsWith('90')",
        timeout=WAIT_MS,
    )
    # the poll answered with extendData for the graphs, never a whole figure
    polls = [u for u in tab.updates if "run-cursor" in u.get("response", {})]
    assert polls, "no live poll seen"
    props = {p for u in polls for v in u["response"].values() if isinstance(v, dict) for p in v}
    assert "extendData" in props and "figure" not in props
    tab.assert_clean_console()


def test_compare_overlays_runs_and_diffs_configs(tab: Tab) -> None:
    tab.open("/compare?runs=plain-0001,symbio-0001", "#config-diff td.dash-cell")
    wait_graphs(tab, "compare_loss", "compare_val_loss")
    assert tab.graph("compare_loss", "gd.data.map(t => t.name)") == ["plain-0001", "symbio-0001"]
    text = tab.page.inner_text("#config-diff")
    assert "train.lr" in text and "train.activation" in text
    tab.assert_clean_console()


def test_100k_step_run_renders(tab: Tab) -> None:
    tab.open("/runs/large-0001", "#run-page")
    wait_graphs(tab, "loss", "cusum", "batch", "mi_trajectory")
    n = tab.graph("loss", "gd.data[0].x.length")
    assert 200 < n <= 2000
    assert tab.graph("loss", "gd.data[0].x[gd.data[0].x.length - 1]") == 100_000
    tab.assert_clean_console()


def test_bad_run_id_in_url_is_refused(tab: Tab) -> None:
    tab.open("/runs/..%2F..%2Fetc%2Fpasswd", ".empty")
    assert "Bad request" in tab.page.inner_text(".empty")
    tab.assert_clean_console()
