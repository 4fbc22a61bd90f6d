"""Fixtures shared across test folders."""

import pytest

CHROMIUM = "/usr/bin/chromium"
# exactly the flags CI uses: no sandbox (containers), nothing that phones home or updates itself
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the whole session (Playwright's sync API allows one driver per process)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # never `playwright install`: the system's Chromium is the browser under test
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
