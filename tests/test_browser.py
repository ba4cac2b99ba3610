"""The web app in a real headless Chromium, driven by Playwright: search, open a result, ask, see the index.

Chromium comes from the system (`make test` installs the Debian package chromium-headless-shell); no
browser is downloaded. Screenshots go to the test's temporary folder, or to $MMODAL_SCREENSHOTS (`make
screenshots` takes the README's).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from mmodal.data.generate import generate_shapes

CHROMIUM_NAMES = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")
TIMEOUT_MS = 60_000


def chromium() -> str:
    for name in (os.environ.get("MMODAL_CHROMIUM"), *CHROMIUM_NAMES):
        if name and (found := shutil.which(name)):
            return found
    pytest.fail(
        "no Chromium found: install the chromium-headless-shell package (make test does) or set MMODAL_CHROMIUM"
    )


@pytest.fixture()
def page(served):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(TIMEOUT_MS)
        yield page
        browser.close()


def _screenshot(page, path: Path) -> None:
    """The page once every event has finished (Gradio dims an output while its event is pending)."""
    page.wait_for_function("!document.querySelector('.pending, .eta-bar, .progress-text')")
    page.screenshot(path=str(path), full_page=True)


@pytest.fixture()
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("MMODAL_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.mark.slow
def test_search_open_a_result_ask_and_add_a_folder(page, served, dataset, model, shots, tmp_path):
    collection, url, _ = served
    page.goto(url)
    query = max((q for q in dataset.queries if q.kind == "object"), key=lambda q: len(q.relevant))
    page.locator("#query-text textarea").fill(query.text)
    page.locator("#search-button").click()
    thumbnails = page.locator("#results img")
    thumbnails.first.wait_for(state="visible")
    page.wait_for_function("document.querySelectorAll('#results img').length >= 12")
    assert thumbnails.count() >= 12
    assert page.locator("#results").inner_text().count("·") >= 12  # captions carry name and score

    thumbnails.first.click()
    picked = page.locator("#picked img")
    picked.wait_for(state="visible")
    assert "gradio_api/file=" in picked.get_attribute("src")
    _screenshot(page, shots / "search.png")

    record = next(q for q in dataset.questions if q.type == "count")
    image_file = dataset.root / next(r.file for r in dataset.images if r.id == record.image_id)
    with Image.open(image_file) as picture:
        expected = model.ask([picture.convert("RGB")], [record.question], alternatives=3)[0]
    page.get_by_role("tab", name="Ask").click()
    page.locator("#ask-image input[type=file]").set_input_files(str(image_file))
    page.locator("#ask-image img").wait_for(state="visible")
    page.locator("#question textarea").fill(record.question)
    page.locator("#ask-button").click()
    page.wait_for_function("document.querySelector('#answer textarea').value.length > 0")
    assert page.locator("#answer textarea").input_value() == expected.answer
    _screenshot(page, shots / "ask.png")

    page.get_by_role("tab", name="Index").click()
    assert page.locator("#model-choice input").input_value() == "shapes"  # the index's model, while it may change
    extra = tmp_path / "more"
    generate_shapes(extra, n=4, seed=123, split="test", n_queries=1, workers=1)
    page.locator("#folder textarea").fill(str(extra / "images"))
    page.locator("#add-button").click()
    page.wait_for_function("document.querySelector('#summary textarea').value.includes('indexed')")
    assert "indexed 4 new" in page.locator("#summary textarea").input_value()
    stats = page.locator("#index-stats")
    page.wait_for_function(f"document.querySelector('#index-stats').innerText.includes('{extra.name}')")
    shown = "".join(stats.inner_text().split())
    assert f'"images":{collection.stats()["images"]},' in shown
    _screenshot(page, shots / "index.png")


@pytest.mark.slow
def test_the_page_says_which_words_it_does_not_know(page, served):
    _, url, _ = served
    page.goto(url)
    page.locator("#query-text textarea").fill("show me a zorbly blue square")
    page.locator("#search-button").click()
    page.wait_for_function("document.querySelector('#heard-note').innerText.includes('zorbly')")
    assert "does not know" in page.locator("#heard-note").inner_text()
    page.locator("#results img").first.wait_for(state="visible")  # the words it knows still search


def _toast(page, words: str) -> str:
    """The text of the error the page shows, once it names ``words``."""
    toast = page.locator(".toast-body").filter(has_text=words).first
    toast.wait_for(state="visible")
    return toast.inner_text()


@pytest.mark.slow
def test_the_page_says_what_it_did(page, served, dataset, tmp_path):
    """Each thing a search, a question or the Index tab has to tell, told in the page's own words."""
    from mmodal.data.audio import read_audio
    from mmodal.search import Query
    from mmodal.shapes.semantics import parse_statement
    from tests.test_rest import NOWHERE

    collection, url, _ = served
    page.goto(url)
    page.locator("#search-button").click()
    assert "--" not in _toast(page, "type what you look for")  # words for a page, not a shell's flags

    text = next(t for t in NOWHERE if not any(parse_statement(t).holds(r.scene) for r in dataset.images))
    page.locator("#query-text textarea").fill(text)
    page.locator("#search-button").click()
    page.wait_for_function("document.querySelector('#heard-note').innerText.includes('nothing matches')")
    assert f'nothing matches "{text}"' in page.locator("#heard-note").inner_text()
    page.locator("#results img").first.wait_for(state="visible")  # and the closest images are shown

    spoken = next((q for q in dataset.queries if q.audio), None)
    if spoken is not None:
        clip = dataset.root / spoken.audio
        _, transcript = collection.searcher().listen(Query(audio=read_audio(clip)))
        page.locator("#query-text textarea").fill("")
        page.locator("#query-audio input[type=file]").set_input_files(str(clip))
        page.locator("#query-audio audio, #query-audio .waveform-container").first.wait_for(state="attached")
        page.locator("#search-button").click()
        page.locator("#heard textarea").wait_for(state="visible")
        page.wait_for_function("document.querySelector('#heard textarea').value.length > 0")
        assert page.locator("#heard textarea").input_value() == transcript.text
        assert transcript.summary() in page.locator("#heard-note").inner_text()

    picture = dataset.root / dataset.images[0].file
    page.get_by_role("tab", name="Ask").click()
    page.locator("#ask-image input[type=file]").set_input_files(str(picture))
    page.locator("#ask-image img").wait_for(state="visible")
    page.locator("#question textarea").fill("how many zorbly squares are there?")
    page.locator("#ask-button").click()
    page.wait_for_function("document.querySelector('#answer-note').innerText.includes('zorbly')")
    assert re.fullmatch(r"\d{1,3}%", page.locator("#confidence textarea").input_value())  # as a percentage

    page.get_by_role("tab", name="Index").click()
    single = tmp_path / "one.png"
    Image.new("RGB", (64, 64), "red").save(single)
    for folder, words in ((collection.index_dir, "this index's own folder"), (single, "is a file")):
        page.locator("#folder textarea").fill(str(folder))
        page.locator("#add-button").click()
        assert words in _toast(page, words)
