"""Open a page in Debian's headless Chromium (through chromedriver) and report what a person would
see: console errors, network requests, how many Vega marks each chart drew, and whatever a caller's
`inspect` step found by using the page (clicks included) before the console was read."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
MISSING = ("Debian's chromium and chromium-driver are needed for the browser test; "
           "`make test` installs them (apt-get install chromium chromium-driver)")


@dataclass
class PageCheck:
    console_errors: list[str]
    requests: list[str]
    marks_per_chart: list[int]
    inspected: Any = None


def check_page(page: Path, screenshot: Path, profile: Path, wait_seconds: float = 30,
               inspect: Callable[[Any], Any] | None = None) -> PageCheck:
    """Open `page`, wait until every chart drew marks, run `inspect(driver)` (its result is returned as
    `inspected`; console errors it causes are caught like any other), take a screenshot."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    assert shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER), MISSING
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1500,1200", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(page.resolve().as_uri())
        count_marks = ("return Array.from(document.querySelectorAll('.vega-embed')).map("
                       "e => e.querySelectorAll('svg .role-mark > *').length)")
        WebDriverWait(driver, wait_seconds).until(
            lambda d: (lambda m: len(m) > 0 and all(n > 0 for n in m))(d.execute_script(count_marks)))
        marks = driver.execute_script(count_marks)
        inspected = inspect(driver) if inspect is not None else None
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1500, min(int(height) + 100, 12000))
        driver.save_screenshot(str(screenshot))
        errors = [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        requests = []
        for entry in driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") == "Network.requestWillBeSent":
                url = message["params"]["request"]["url"]
                if url.startswith(("http://", "https://", "ws://", "wss://", "ftp://")):
                    requests.append(url)  # chrome:// (the browser's own pages), file:, data: and blob: stay local
        return PageCheck(errors, requests, marks, inspected)
    finally:
        driver.quit()
