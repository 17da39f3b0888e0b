"""The README's screenshot: the web page of `dashclip serve` on a real model and index, in headless chromium.

    python benchmarks/web_page_screenshot.py [--model runs/demo/model --index runs/demo/index]
        [--query "red dress for a party"] [--filter gender:Women] [--out docs/web-page.png]

Serves the model and index in this process (the same `create_app` as `dashclip serve`), types the query
into the search box, waits for the product images, optionally clicks a filter chip, and saves the page.
Needs Debian's chromium and the playwright package (`DASHCLIP_BROWSER=1 bash scripts/install.sh`).
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGES_LOADED = """() => {
  const imgs = [...document.querySelectorAll('#results .card img')];
  return imgs.length >= 6 && imgs.slice(0, 6).every(i => i.complete && i.naturalWidth > 0);
}"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=REPO / "runs" / "demo" / "model")
    ap.add_argument("--index", type=Path, default=REPO / "runs" / "demo" / "index")
    ap.add_argument("--catalog", type=Path, default=None)
    ap.add_argument("--query", default="red dress for a party")
    ap.add_argument("--filter", default=None, help="field:value of a chip to click, e.g. gender:Women")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "web-page.png")
    args = ap.parse_args()

    from playwright.sync_api import sync_playwright

    from dashclip.serving.search import Searcher
    from dashclip.serving.service import create_app, serve_in_background

    app = create_app(Searcher.open(args.model, args.index, args.catalog), watch_seconds=0)
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with serve_in_background(app) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url + "/")
        page.fill("#q", args.query)
        page.press("#q", "Enter")
        page.wait_for_selector("body[data-state=results]")
        page.wait_for_function(IMAGES_LOADED, timeout=30_000)
        if args.filter:
            field, value = args.filter.split(":", 1)
            page.locator(f'#filters .chip[data-field="{field}"][data-value="{value}"]').click()
            page.wait_for_timeout(500)
            page.wait_for_selector("body[data-state=results]")
            page.wait_for_function(IMAGES_LOADED, timeout=30_000)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out))
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
