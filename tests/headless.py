"""Headless Chromium for the tests of pages lamina writes (visualize, the docs site).

Skips with the reason when selenium, a Chromium or its driver is missing;
`.ci/run` installs all three.
"""

import shutil

import pytest

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
except ImportError:
    webdriver = None

CHROMIUM = next(filter(None, map(shutil.which, ["chromium", "chromium-browser", "google-chrome"])), None)
CHROMEDRIVER = shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(
    webdriver is None or CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs selenium (pip) and a Chromium with its driver (apt: chromium chromium-driver)",
)


def chrome(width, height, *extra_args):
    """A headless Chrome logging the console, `width` x `height`; quit it when done."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", *extra_args]:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # A driver path given outright: Selenium Manager must not go looking online.
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
