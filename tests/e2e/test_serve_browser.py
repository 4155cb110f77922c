"""The endpoint's web page in headless Chromium (Debian's `chromium`, driven
by Playwright through `executable_path`; no browser download): what a person
sees after uploading or recording audio."""

import shutil

import pytest
from test_serve import classifier, deployed, german_wav, long_wav  # noqa: F401 (fixtures)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing: pip install -e '.[dev]'")
if CHROMIUM is None:
    pytest.skip("Debian's chromium is missing: apt-get install chromium (make test does)", allow_module_level=True)

ANSWER_TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def endpoint(ray_session, small_bundle):
    with deployed(small_bundle) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            # root in a container has no sandbox; the fake devices stand in for a microphone.
            args=["--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"],
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, endpoint):
    context = browser.new_context()
    context.grant_permissions(["microphone"], origin=endpoint.url)
    page = context.new_page()
    page.goto(f"{endpoint.url}/")
    page.wait_for_function("document.getElementById('model').textContent.includes('knows')")
    yield page
    context.close()


def shown_answer(page) -> dict:
    page.wait_for_selector("#result[data-state=done], #result[data-state=error]", timeout=ANSWER_TIMEOUT_MS)
    assert page.get_attribute("#result", "data-state") == "done", page.text_content("#error")
    return {
        "language": page.text_content("#language"),
        "bars": page.locator(".bar-row").evaluate_all("rows => rows.map(r => r.dataset.language)"),
        "timeline": page.locator("#timeline-bar .segment").evaluate_all("blocks => blocks.map(b => b.dataset.language)"),
        "timeline_visible": page.is_visible("#timeline"),
    }


def test_uploading_speech_shows_the_classifiers_language(page, classifier, german_wav, tmp_path):  # noqa: F811
    path = tmp_path / "guten-morgen.wav"
    path.write_bytes(german_wav)
    page.set_input_files("#file", str(path))
    shown = shown_answer(page)
    wanted = classifier.classify(classifier.load_audio(german_wav))
    assert shown["language"] == wanted.language
    assert shown["bars"] == list(wanted.probabilities)
    assert not shown["timeline_visible"]


def test_long_audio_shows_the_timeline(page, classifier, long_wav, tmp_path):  # noqa: F811
    path = tmp_path / "announcements.wav"
    path.write_bytes(long_wav)
    page.set_input_files("#file", str(path))
    shown = shown_answer(page)
    wanted = classifier.classify(classifier.load_audio(long_wav), segments=True)
    assert shown["language"] == wanted.language
    assert shown["timeline_visible"]
    assert shown["timeline"] == [segment.language for segment in wanted.segments]


def test_recording_from_the_microphone_gets_an_answer(page, classifier):  # noqa: F811
    page.click("#record")
    page.wait_for_selector("#record.recording")
    page.wait_for_timeout(3000)
    page.click("#record")
    shown = shown_answer(page)
    assert shown["language"] in classifier.labels.codes
