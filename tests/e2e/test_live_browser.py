"""The web page's live mode in headless Chromium: the fake microphone plays a
recording (silence, then German, then French; tests/band_oracle.py) into
the page, which streams it through an AudioWorklet to `WS /v1/stream` of a
deployment of the oracle bundle and shows what the stream says."""

import pytest
import soundfile as sf
from band_oracle import RATE, recording
from chromium import launch, open_page, sync_api
from test_serve import deployed

PARTS = [(None, 2.5), ("de", 8.0), ("fr", 10.0)]
# Audio plays at real time: French is confirmed a few seconds after it starts.
SHOWN_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def endpoint(ray_session, oracle_bundle):
    with deployed(oracle_bundle) as running:
        yield running


@pytest.fixture(scope="module")
def microphone_wav(tmp_path_factory):
    path = tmp_path_factory.mktemp("microphone") / "silence-de-fr.wav"
    sf.write(path, recording(PARTS, seed=2)[0], RATE, subtype="PCM_16")
    return path


@pytest.fixture
def page(endpoint, microphone_wav):
    with sync_api.sync_playwright() as playwright:
        chromium = launch(playwright, f"--use-file-for-fake-audio-capture={microphone_wav}%noloop")
        yield open_page(chromium.new_context(), endpoint.url)
        chromium.close()


def _wait_shown(page, language: str) -> None:
    page.wait_for_function(
        f"document.getElementById('live-language').textContent === {language!r}", timeout=SHOWN_TIMEOUT_MS
    )


def test_live_mode_shows_silence_then_german_then_french(page):
    page.click("#live")
    page.wait_for_selector("#live-panel[data-state=silence]", timeout=SHOWN_TIMEOUT_MS)
    _wait_shown(page, "de")
    assert page.get_attribute("#live-panel", "data-state") == "speech"
    _wait_shown(page, "fr")
    # The language shown is the latest window's; the bar grows once the stream confirms the change.
    page.wait_for_function(
        "[...document.querySelectorAll('#live-bar .segment')].map(b => b.dataset.language).join() === 'de,fr'",
        timeout=SHOWN_TIMEOUT_MS,
    )
    page.click("#live")  # stop: the page shows the stream's final timeline
    page.wait_for_selector("#live-panel[data-state=stopped]", timeout=SHOWN_TIMEOUT_MS)
    final = page.locator("#live-bar .segment").evaluate_all("blocks => blocks.map(b => b.dataset.language)")
    assert final == ["de", "fr"]
    assert page.text_content("#live-error") == ""
    assert page.text_content("#live-list").count(" s  ") == 2
