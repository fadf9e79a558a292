"""report.html in a real browser: Debian's Chromium, headless, driven by Playwright. The page must load with
no console error and no failed resource, show its tables, full-width training plot and thumbnails, frame the
query image apart from hits, explain a caption text several images share, show HTML from captions as text,
and render a screenshot."""
import io
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import evaluate, report
from pipeline.gallery import Gallery
from pipeline.index.faiss_indexes import IndexSpec

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


SHARED = "<script>alert(1)</script> a red <img src=x> square"  # would run, or request ./x, if not escaped


def _gallery(n: int = 40, per: int = 3) -> Gallery:
    """Random images with noisy captions, except that images 0-2 are near copies whose first captions share
    one text (as synthetic and COCO data do): image 0's top captions are that text three times."""
    g = torch.Generator().manual_seed(0)
    img = torch.randn(n, 16, generator=g)
    img[1:3] = img[0] + 0.1 * torch.randn(2, 16, generator=g)
    img = torch.nn.functional.normalize(img, dim=1)
    owner = torch.arange(n).repeat_interleave(per)
    txt = torch.nn.functional.normalize(img[owner] + 0.7 * torch.randn(n * per, 16, generator=g), dim=1)
    txt[[0, per, 2 * per]] = img[:3]
    captions = [SHARED if j in (0, per, 2 * per) else f"caption {j}" for j in range(n * per)]
    return Gallery(img, txt, owner, [f"s.tar/{i:04d}" for i in range(n)], captions)


def _jpeg(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def test_report_html_renders_without_errors(tmp_path):
    from playwright.sync_api import sync_playwright

    if CHROMIUM is None:
        pytest.fail("chromium is not installed: `make test` installs Debian's chromium (apt-get install chromium)")

    from pipeline.report_html import thumbnail

    gallery = _gallery()
    metrics = evaluate.evaluate_gallery(gallery, spec=IndexSpec(type="hnsw"))
    thumbs = {k: thumbnail(_jpeg(i)) for i, k in enumerate(report.example_keys(metrics))}
    history = [{"epoch": 0, "val/rsum": 5.0}, {"epoch": 1, "train/loss": 2.0, "val/rsum": 300.0}]
    index_meta = {"type": "hnsw", "recall@10_vs_exact": 0.99, "build_s": 0.01, "qps": 1000.0}
    report.write_report(tmp_path, metrics, index_meta, "ckpt", {}, history, {"skipped": {"val": {"corrupt_image": 1}}},
                        thumbs)
    page_path = tmp_path / "report.html"
    assert page_path.stat().st_size > 10_000  # plots and thumbnails are embedded

    problems = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.set_default_timeout(5_000)  # a local page: a missing element should fail fast, not in 30 s
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"failed request: {r.url}"))
        page.goto(page_path.as_uri())
        page.wait_for_load_state("load")
        headings = page.locator("h2").all_inner_texts()
        broken = page.evaluate("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length")
        n_images = page.evaluate("document.images.length")
        seen = _what_a_reader_sees(page)
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert not problems, problems
    assert {"Exact search", "Plots", "Caption → top-5 images", "Image → top-5 captions"} <= set(headings)
    assert any(h.startswith("Through the hnsw index") for h in headings)
    assert broken == 0 and n_images >= 3 + 25 + 5  # 3 plots, 5 x 5 caption -> image, 5 query thumbnails
    assert seen["noimg"] == 0  # every example shows its thumbnail
    assert seen["hits"] >= 1
    # the query image is framed as a query, in a colour that is not the hits' green, hit or not
    assert seen["queries"] == len(metrics["image_examples"]) and seen["query_hits"] == 0
    assert seen["query_border"] != seen["hit_border"]
    # the shared text is listed once for image 0, with a note saying which copy is its own
    assert seen["first_caps"].count("alert(1)") == 1, seen["first_caps"]
    assert "same text at ranks 1, 2 and 3: rank 1 is this image's own" in seen["first_caps"]
    assert seen["scripts"] == 0 and seen["shared_as_text"] >= 2  # HTML in a caption reads as text, both ways
    assert seen["training_w"] >= 0.95 * seen["plots_w"]  # the training curves span the page
    assert (tmp_path / "report.png").stat().st_size > 20_000


def _what_a_reader_sees(page) -> dict:
    """Counts, colours and widths from the rendered page; an image query is the block with a caption list."""
    border = "el => el ? getComputedStyle(el).borderTopColor : null"
    return {
        "noimg": page.locator(".noimg").count(),
        "hits": page.locator(".q:not(:has(ol.caps)) figure.hit").count(),
        "queries": page.locator(".q:has(ol.caps) > figure.query").count(),
        "query_hits": page.locator(".q:has(ol.caps) figure.hit").count(),
        "query_border": page.evaluate(f"({border})(document.querySelector('figure.query'))"),
        "hit_border": page.evaluate(f"({border})(document.querySelector('figure.hit'))"),
        "first_caps": page.locator("ol.caps").first.inner_text(),
        "scripts": page.evaluate("document.scripts.length"),
        "shared_as_text": page.get_by_text("<script>alert(1)</script> a red <img src=x> square").count(),
        "training_w": page.locator("img[alt=training]").bounding_box()["width"],
        "plots_w": page.locator(".plots").bounding_box()["width"],
    }
