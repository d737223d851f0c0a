"""The HTML report in a real browser: headless Chromium (Debian's ``chromium``), driven through
Selenium and the system's ``chromedriver``, so nothing is downloaded.

It must render without console errors and without fetching anything, every heatmap link must
land on its scenario's section, the plots must be drawn, and a click must show a whole array.
A missing Chromium fails the test (CI installs it, see .ci/run) unless XBN_ALLOW_MISSING names
``chromium`` (or is 1/all/true), the convention of tests/test_installed.py. Set
XBN_SCREENSHOT=path.png to keep a full-page screenshot of the page under test.
"""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import pytest

from xbn.profiles.facts import profile_matrix
from xbn.report import render
from xbn.report.html_parts import anchor
from xbn.report.plots import has_drift

from .frameworks import missing
from .plugins.drifting import small_report

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _missing() -> list[str]:
    absent = [f"{p} (apt-get install chromium chromium-driver)"
              for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        absent.append("selenium (pip install -e '.[dev]')")
    return absent


@pytest.fixture(scope="module")
def driver():
    absent = _missing()
    if absent:
        missing("chromium", f"the browser test needs {', '.join(absent)}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-extensions", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    browser.set_page_load_timeout(60)
    yield browser
    browser.quit()


@pytest.fixture(scope="module")
def report():
    with pytest.MonkeyPatch.context() as mp:
        yield small_report(mp, ("seed-keras", "batch-of-one", "variance-update-n5", "bare-call"))


@pytest.fixture(scope="module")
def page(report, tmp_path_factory, driver):
    path = tmp_path_factory.mktemp("html") / "index.html"
    path.write_text(render(report, "html", matrix=profile_matrix()), encoding="utf-8")
    driver.get(path.as_uri())
    return path


def _top(driver):
    driver.execute_script("window.location.hash = ''; window.scrollTo(0, 0);")


def test_renders_without_console_errors_and_fetches_nothing(driver, page):
    assert driver.title == "xbn report"
    assert driver.find_element("css selector", "h1").is_displayed()
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not errors, errors
    fetched = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert fetched == []


def test_heatmap_links_land_on_their_sections(driver, page, report):
    links = driver.find_elements("css selector", "table.heatmap td a")
    hrefs = [a.get_attribute("href").split("#", 1)[1] for a in links]
    assert len(hrefs) == len(report.scenarios) * 3  # three frameworks besides the reference
    for i, target in enumerate(hrefs):
        _top(driver)
        driver.find_elements("css selector", "table.heatmap td a")[i].click()
        landed = driver.execute_script("""
            const el = document.getElementById(location.hash.slice(1));
            if (!el) return null;
            const r = el.getBoundingClientRect();
            return {hash: location.hash.slice(1), section: el.closest('section').id,
                    top: r.top, bottom: r.bottom, height: innerHeight,
                    column: el.textContent};""")
        assert landed is not None, target
        scenario, framework = target[2:].split("--")
        assert landed["hash"] == target and landed["section"] == anchor(scenario)
        assert landed["column"] == framework
        assert -1 <= landed["top"] < landed["height"] and landed["bottom"] > 0, landed
    _top(driver)


def test_plots_are_drawn(driver, page, report):
    plots = driver.find_elements("css selector", "figure.plot svg")
    expected = [s.name for s in report.scenarios if has_drift(report.drift, s.name)]
    assert expected and len(plots) == len(expected)
    for svg in plots:
        size = svg.size
        assert size["width"] > 400 and size["height"] > 100, size
        assert len(svg.find_elements("css selector", "path")) > 20
    first = driver.find_element("css selector", f"#{anchor(expected[0])} figure.plot svg")
    assert first.is_displayed()


def test_a_click_shows_the_whole_array(driver, page):
    _top(driver)
    cell = driver.find_element("css selector", f"#{anchor('bare-call')} table.values details")
    whole = cell.find_element("css selector", "code.whole")
    assert not whole.is_displayed()
    summary = cell.find_element("css selector", "summary")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", summary)
    summary.click()
    assert whole.is_displayed() and whole.text.startswith("[[4.421809, 7.6417885], [")
    shot = os.environ.get("XBN_SCREENSHOT")
    if shot:  # a full-page picture for a person to look at; never part of the repository
        data = driver.execute_cdp_cmd("Page.captureScreenshot",
                                      {"captureBeyondViewport": True, "format": "png"})
        Path(shot).write_bytes(base64.b64decode(data["data"]))
