"""Headless Chromium for the web page's tests: Debian's `chromium`, driven by
Playwright through `executable_path` (no browser download). Importing this
skips the importing test module when either is missing."""

import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing: pip install -e '.[dev]'")
if CHROMIUM is None:
    pytest.skip("Debian's chromium is missing: apt-get install chromium (make test does)", allow_module_level=True)


def launch(playwright, *args: str):
    """Chromium with fake media devices standing in for a microphone; root
    in a container has no sandbox."""
    return playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=["--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream", *args],
    )


def open_page(context, url: str):
    """The endpoint's page in `context`, the microphone allowed, once it has
    shown what the model knows."""
    context.grant_permissions(["microphone"], origin=url)
    page = context.new_page()
    page.goto(f"{url}/")
    page.wait_for_function("document.getElementById('model').textContent.includes('knows')")
    return page
