"""Search by photo on the web page (issue 20), in headless chromium as tests/test_web_page.py: pick a photo,
refine it with words, drop one on the page, "Similar" on a result, and a non-image refused with a message."""
from __future__ import annotations

import base64

import pytest

from dashclip.serving.search import Searcher
from test_web_page import CHROMIUM, base_url, card_ids, page, shop  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(not __import__("pathlib").Path(CHROMIUM).exists(),
                                reason="needs Debian's chromium (apt-get install chromium) for the browser test")


def wait_for_new_results(page, before: list) -> list[int]:
    page.wait_for_function("ids => { const now = [...document.querySelectorAll('#results .card[data-id]')]"
                           ".map(c => c.dataset.id).join(); return document.body.dataset.state === 'results' "
                           "&& now !== ids.join(); }", arg=[str(i) for i in before])
    return card_ids(page)


def test_photo_words_drop_and_similar(page, base_url, shop, tmp_path):
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    s = Searcher(shop.model, shop.index, shop.catalog)
    photo = shop.catalog.image_path(shop.catalog.product(100)["image"])
    raw = photo.read_bytes()
    page.goto(base_url + "/")
    page.set_input_files("#photo", str(photo))
    page.wait_for_selector("body[data-state=results]")
    got = card_ids(page)
    assert got == [h.id for h in s.search_image(raw, k=24)]
    assert "for your photo" in page.inner_text("#status") and page.is_visible("#photo-chip")

    page.fill("#q", "in red")
    page.press("#q", "Enter")
    got = wait_for_new_results(page, got)
    assert got == [h.id for h in s.search_image(raw, k=24, text="in red")]
    assert "your photo + “in red”" in page.inner_text("#status")

    page.click("#results .card >> nth=0 >> .similar")                 # "Similar" on the first result
    first = got[0]
    got = wait_for_new_results(page, got)
    assert got == [h.id for h in s.search_similar(first, k=24)] and first not in got
    assert "like “" in page.inner_text("#status") and f"similar={first}" in page.url
    assert not page.is_visible("#product-dialog")                     # the card's own click did not fire

    other = shop.catalog.image_path(shop.catalog.product(110)["image"]).read_bytes()
    page.evaluate("""b64 => { const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer(); dt.items.add(new File([bytes], 'drop.jpg', {type: 'image/jpeg'}));
        document.querySelector('main').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true})); }""",
                  base64.b64encode(other).decode())
    got = wait_for_new_results(page, got)
    assert got == [h.id for h in s.search_image(other, k=24, text="")]
    assert not errors, errors


def test_a_non_image_is_refused_with_a_message(page, base_url, tmp_path):
    fake = tmp_path / "holiday.jpg"
    fake.write_text("<html>not a photo</html>")
    page.goto(base_url + "/")
    page.set_input_files("#photo", {"name": "holiday.jpg", "mimeType": "image/jpeg", "buffer": fake.read_bytes()})
    page.wait_for_selector("body[data-state=error]")
    assert "not an image" in page.inner_text("#error")
