"""The web page in a real headless browser (Playwright driving Debian's chromium) against the service run by
uvicorn on loopback: type a query, see product images load, apply a filter chip, see the results change;
the empty and error states; a screenshot is saved to test-artifacts/web-page.png."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dashclip.settings import REPO_ROOT
from test_search_fixtures import shared_shop

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO_ROOT / "test-artifacts"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="needs Debian's chromium (apt-get install chromium) for the browser test")


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    return shared_shop(tmp_path_factory)


@pytest.fixture(scope="module")
def base_url(shop):
    from dashclip.serving.search import Searcher
    from dashclip.serving.service import create_app, serve_in_background

    with serve_in_background(create_app(Searcher(shop.model, shop.index, shop.catalog), watch_seconds=0)) as url:
        yield url


@pytest.fixture(scope="module")
def page():
    pytest.importorskip("playwright.sync_api", reason="needs the playwright Python package (pip install playwright)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1360, "height": 1500})
        yield page
        browser.close()


IMAGES_LOADED = """() => {
  const imgs = [...document.querySelectorAll('#results .card img')];
  return imgs.length >= 6 && imgs.slice(0, 6).every(i => i.complete && i.naturalWidth > 0);
}"""


def card_ids(page) -> list[int]:
    return [int(x) for x in page.eval_on_selector_all("#results .card[data-id]", "cs => cs.map(c => c.dataset.id)")]


def test_search_filter_and_screenshot(page, base_url, shop):
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(base_url + "/")
    assert page.is_visible("#welcome")
    page.fill("#q", "red summer dress")
    page.press("#q", "Enter")
    page.wait_for_selector("body[data-state=results]")
    page.wait_for_function(IMAGES_LOADED, timeout=15_000)
    before = card_ids(page)
    assert len(before) == 24  # a page of results
    assert "products" in page.inner_text("#status") and "red summer dress" in page.inner_text("#status")
    first_title = page.inner_text("#results .card .title")
    assert first_title == shop.catalog.product(before[0])["title"]

    chip = page.locator('#filters .chip[data-field="gender"][data-value="Men"]')
    chip.click()
    page.wait_for_function("ids => { const now = [...document.querySelectorAll('#results .card[data-id]')]"
                           ".map(c => c.dataset.id).join(); return document.body.dataset.state === 'results' "
                           "&& now !== ids.join(); }", arg=[str(i) for i in before])
    page.wait_for_function(IMAGES_LOADED, timeout=15_000)
    after = card_ids(page)
    assert after != before and after
    assert {shop.catalog.product(i)["gender"] for i in after} == {"Men"}
    assert page.get_attribute('#filters .chip[data-field="gender"][data-value="Men"]', "aria-pressed") == "true"
    assert "filter=gender%3AMen" in page.url
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-page.png"), full_page=True)
    assert (ARTIFACTS / "web-page.png").stat().st_size > 10_000

    page.click("#results .card >> nth=0")  # the product dialog
    page.wait_for_selector("#product-dialog[open]")
    assert page.inner_text("#dialog-title") == shop.catalog.product(after[0])["title"]
    page.keyboard.press("Escape")
    assert not errors, errors


def test_empty_and_error_states(page, base_url):
    page.goto(base_url + "/?q=dress&filter=gender:Unisex&filter=category:Dresses")
    page.wait_for_selector("body[data-state=empty]")
    assert page.is_visible("#empty") and "Nothing matches these filters" in page.inner_text("#empty")
    page.click("#clear-filters")
    page.wait_for_selector("body[data-state=results]")
    assert len(card_ids(page)) > 0

    page.goto(base_url + "/?q=dress&filter=size:M")
    page.wait_for_selector("body[data-state=error]")
    assert "unknown filter field 'size'" in page.inner_text("#error")
