"""The dashboard and the report in a real headless browser (Debian's chromium + chromedriver).

Needs: ``apt-get install -y chromium chromium-driver`` (``make test`` installs them where it may)
and ``pip install selenium``; skipped with the reason when either is missing, and failed under
``CI=true``, where they must be there. Screenshots are saved in each test's tmp dir.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from payloads import AUTOLINKS, HTML, payload_run
from runs import ci_import, ci_needs
from test_report_fixture import analysed_simulated_run, write_handmade_run

from audit.dashboard.launch import RUN_DIRS_ENV, run_dirs_env, streamlit_command
from audit.report.build import build_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
webdriver = ci_import("selenium.webdriver", "selenium (pip install selenium)")
if CHROMIUM is None or CHROMEDRIVER is None:
    ci_needs("chromium and chromedriver (apt-get install -y chromium chromium-driver)")
pytestmark = [pytest.mark.browser]
PAGES = {
    "": "Bias audit: overview",
    "Term_explorer": "Term explorer",
    "Toxicity": "Toxicity",
    "Refusal": "Refusals",
    "Classification": "Zero-shot classification",
    "Generations": "Generations",
    "Compare_runs": "Compare runs",
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _use_every_chart(driver) -> None:  # type: ignore[no-untyped-def]
    """Hover each chart's plot area, toggle its first legend entry and zoom in on it."""
    from selenium.webdriver.common.action_chains import ActionChains

    for chart in driver.find_elements("css selector", ".plotly-graph-div"):
        driver.execute_script("arguments[0].scrollIntoView()", chart)
        ActionChains(driver).move_to_element(chart).pause(0.05).perform()
        legend = chart.find_elements("css selector", ".legendtoggle")
        if legend:
            driver.execute_script(
                "arguments[0].dispatchEvent(new MouseEvent('mouseup'))", legend[0]
            )
        driver.execute_script("Plotly.relayout(arguments[0], {'xaxis.range[0]': 0})", chart)


def _browser(tmp_path: Path):  # type: ignore[no-untyped-def]
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1800",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A run analysed by ``audit analyze`` and a hand-built one full of injected text."""
    root = tmp_path_factory.mktemp("browser-runs")
    return [
        analysed_simulated_run(tmp_path_factory),
        write_handmade_run(root / "run-a", n=40, payload=True),
    ]


@pytest.fixture(scope="module")
def server(runs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log = tmp_path_factory.mktemp("streamlit") / "streamlit.log"
    env = {**os.environ, RUN_DIRS_ENV: run_dirs_env(runs)}
    with open(log, "wb") as output:
        process = subprocess.Popen(
            streamlit_command(port), env=env, stdout=output, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"streamlit did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


def _wait_for(driver, css: str, text: str, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = driver.find_elements(By.CSS_SELECTOR, css)
        if any(text in element.text for element in found):
            return
        time.sleep(0.25)
    raise AssertionError(f"no {css!r} containing {text!r} within {timeout_s} s")


def _wait_until_rendered(driver, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """Content arrives over the websocket after the title, and tables draw after that: wait
    until neither the script's status widget nor a loading skeleton is seen twice in a row."""
    from selenium.webdriver.common.by import By

    busy = "[data-testid='stStatusWidget'], [data-testid='stSkeleton']"
    deadline = time.monotonic() + timeout_s
    quiet = 0
    while quiet < 2 and time.monotonic() < deadline:
        quiet = 0 if driver.find_elements(By.CSS_SELECTOR, busy) else quiet + 1
        time.sleep(0.3)


def test_every_page_renders_without_exception(server: str, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    driver = _browser(tmp_path)
    try:
        for path, title in PAGES.items():
            driver.get(f"{server}/{path}")
            _wait_for(driver, "h1", title)
            _wait_until_rendered(driver)
            driver.save_screenshot(str(tmp_path / f"page-{path or 'Home'}.png"))
            exceptions = driver.find_elements(By.CSS_SELECTOR, "[data-testid='stException']")
            assert not exceptions, f"/{path}: {exceptions[0].text[:500]}"
            assert driver.execute_script("return window.__pwned") is None, f"/{path}: script ran"
            assert not driver.find_elements(By.CSS_SELECTOR, "img[src='x']"), f"/{path}: raw <img>"
            text = driver.execute_script("return document.body.innerText")
            for raw in ("refusal_rate", "accuracy_gap", "mean_new_tokens", "share_eos"):
                assert raw not in text, f"/{path}: shows the column name {raw}"
        assert (tmp_path / "page-Home.png").stat().st_size > 10_000
    finally:
        driver.quit()


def test_report_opens_offline_inert_and_draws_charts(tmp_path: Path) -> None:
    runs = [
        write_handmade_run(tmp_path / "run-a", n=30, payload=True),
        write_handmade_run(tmp_path / "run-b", n=30, payload=True, seed=1),
    ]
    html_path, _ = build_report(runs, tmp_path / "report")
    text = _open_inert(html_path, tmp_path)
    # What a reader sees names metrics in words, never by their column names.
    for raw in ("refusal_rate", "accuracy_gap", "mean_new_tokens", "share_eos", "error_rate"):
        assert raw not in text, raw


def test_report_of_the_injection_corpus_is_inert_and_shows_it_as_text(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    run, _ = payload_run(tmp_path_factory)
    text = _open_inert(run / "report.html", tmp_path)
    for payload in (HTML[0], HTML[1], AUTOLINKS[7]):  # in the model id and group values
        assert payload in text, payload


def _open_inert(html_path: Path, tmp_path: Path) -> str:
    """Open a report offline: charts drawn and used, no script of data run, nothing fetched,
    nothing refused by its policy; returns the page's visible text."""
    driver = _browser(tmp_path)
    try:
        # Registered before the page loads (outside its policy): every refusal the policy makes.
        driver.execute_cdp_cmd(
            "Page.addScriptToEvaluateOnNewDocument",
            {
                "source": "window.__refused = []; document.addEventListener("
                "'securitypolicyviolation', e => window.__refused.push(e.violatedDirective));"
            },
        )
        url = html_path.resolve().as_uri()
        driver.get(url)
        deadline = time.monotonic() + 30
        count = 0
        while time.monotonic() < deadline and not count:
            count = driver.execute_script(
                "return document.querySelectorAll('.plotly-graph-div .main-svg').length"
            )
            time.sleep(0.25)
        driver.save_screenshot(str(tmp_path / "report.png"))
        assert count > 0, "plotly drew no chart"
        # What leads is open; the rest is folded away until the reader opens it.
        folded = driver.execute_script(
            "const d = [...document.querySelectorAll('details')];"
            "d.forEach(x => { x.open = true; }); return d.length;"
        )
        assert folded > 0, "nothing folded: every table is on the first screen"
        time.sleep(0.5)  # the charts redraw at their width once opened
        _use_every_chart(driver)
        # Plotly draws, hovers, zooms and toggles traces under a policy without 'unsafe-eval'.
        assert driver.execute_script("return window.__refused") == []
        assert driver.execute_script("return window.__pwned") is None, "injected script ran"
        requests = [
            json.loads(entry["message"])["message"]["params"]
            for entry in driver.get_log("performance")
            if '"Network.requestWillBeSent"' in entry["message"]
        ]
        from_report = [r["request"]["url"] for r in requests if r.get("documentURL") == url]
        assert from_report, "the performance log saw no request of the report at all"
        outside = [u for u in from_report if not u.startswith(("file:", "data:", "blob:"))]
        assert not outside, f"the report fetched {outside}"
        severe = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
        return str(driver.execute_script("return document.body.innerText"))
    finally:
        driver.quit()
