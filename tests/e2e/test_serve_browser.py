"""The endpoint's web page in headless Chromium (tests/e2e/chromium.py): what
a person sees after uploading or recording audio."""

import pytest
from chromium import launch, open_page, sync_api
from test_serve import classifier, deployed, german_wav, long_wav  # noqa: F401 (fixtures)

ANSWER_TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def endpoint(ray_session, small_bundle):
    with deployed(small_bundle) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, endpoint):
    context = browser.new_context()
    yield open_page(context, endpoint.url)
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
