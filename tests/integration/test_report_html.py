"""report.html in a real browser: Debian's Chromium, headless, driven by Playwright. The page must load with
no console error and no failed resource, show its tables, plots and thumbnails, and render a screenshot."""
import io
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import evaluate, report
from pipeline.encoder import Gallery
from pipeline.indexes import IndexSpec

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _gallery(n: int = 40, per: int = 3) -> Gallery:
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(n, 16, generator=g), dim=1)
    owner = torch.arange(n).repeat_interleave(per)
    txt = torch.nn.functional.normalize(img[owner] + 0.7 * torch.randn(n * per, 16, generator=g), dim=1)
    return Gallery(img, txt, owner, [f"s.tar/{i:04d}" for i in range(n)], [f"caption {j}" for j in range(n * per)])


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
    thumbs = {k: thumbnail(_jpeg(i)) for i, k in enumerate(evaluate.example_keys(metrics))}
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
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"failed request: {r.url}"))
        page.goto(page_path.as_uri())
        page.wait_for_load_state("load")
        headings = page.locator("h2").all_inner_texts()
        broken = page.evaluate("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length")
        n_images = page.evaluate("document.images.length")
        hits = page.locator("figure.hit").count()
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert not problems, problems
    assert {"Exact search", "Plots", "Caption → top-5 images", "Image → top-5 captions"} <= set(headings)
    assert any(h.startswith("Through the hnsw index") for h in headings)
    assert broken == 0 and n_images >= 3 + 25  # 3 plots, 5 x 5 caption -> image thumbnails
    assert hits >= 1
    assert (tmp_path / "report.png").stat().st_size > 20_000
