"""Headless Chromium for the tests that look at a page as a person does: Debian's chromium driven through
its own chromedriver (no browser download; `make test` installs both when it runs as root)."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from typing import Iterator

import pytest


@contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator["object"]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver:  # a failure, not a skip: the README's screenshots come from these tests
        pytest.fail("headless Chromium is needed: apt-get install chromium chromium-driver (make test does it as root)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield browser
    finally:
        browser.quit()
