"""report.md / report.html formatting and the report's plots, from a hand-written metrics dict: hits marked
one way everywhere, repeated caption texts explained, captions escaped, plots with readable ticks. No Ray, no
browser (tests/integration/test_report_html.py looks at the page in Chromium)."""
import re

import pytest
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from pipeline import report
from pipeline.report_html import plot_rank_histogram

XSS = "<script>alert(1)</script> a *cat* on an <img src=x> mat | [link](http://x)"
BLOCK = {"R@1": 10.0, "R@5": 40.0, "R@10": 60.0, "medr": 7.0, "meanr": 9.5}


def _caps(*rows):
    return [{"caption": c, "score": 0.9 - 0.1 * i, "hit": h} for i, (c, h) in enumerate(rows)]


def _metrics() -> dict:
    top = [{"key": f"s.tar/<b>{i}</b>", "score": 0.5, "hit": i == 1} for i in range(3)]
    return {
        "i2t": BLOCK, "t2i": BLOCK, "rsum": 220.0, "n_images": 4, "n_captions": 12,
        "examples": [{"query": XSS, "truth": "s.tar/<b>1</b>", "top": top}],
        "image_examples": [
            # a miss: none of the top captions is the query image's
            {"query": "s.tar/0", "top": _caps(("a dog", False), ("a cat", False))},
            # one text held by three images: the query's own copy is at rank 2
            {"query": "s.tar/1", "top": _caps(("a red square", False), ("a red square", True),
                                              ("a dog", False), ("a red square", False), ("a cat", True))},
            # the same text at two ranks, neither the query's
            {"query": "s.tar/2", "top": _caps(("a dog", False), ("a dog", False), (XSS, False))},
        ],
        "ranks": {"i2t": [1, 1, 2, 3, 5, 8, 40], "t2i": [1, 2, 2, 4, 9, 13, 21, 30, 1, 1, 6, 2]},
    }


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    index = {"type": "flat", "recall@10_vs_exact": 1.0, "build_s": 0.0, "qps": 1.0}
    history = [{"epoch": 0, "val/rsum": 5.0}, {"epoch": 1, "train/loss": 2.0, "val/rsum": 9.0}]
    report.write_report(out, _metrics(), index, "ckpt", {}, history)
    return (out / "report.md").read_text(), (out / "report.html").read_text(encoding="utf-8")


def _image_queries(page: str) -> list[str]:
    """The page's image -> captions blocks, one string each."""
    return re.findall(r"<div class='q[^']*'>(?:(?!<div class='q).)*?</ol></div>", page)


def test_query_frame_is_neutral_hits_green_everywhere(written):
    _, page = written
    blocks = _image_queries(page)
    assert len(blocks) == 3
    for block in blocks:  # the query image is neither a hit nor a miss: its frame says "query", hit or not
        assert re.findall(r'<figure class="(\w+)"', block) == ["query"]
    assert "<li value='1' class='miss'>a dog" in blocks[0] and "class='hit'" not in blocks[0]
    assert re.search(r"figure\.hit\{[^}]*border-color:#2a2", page)  # the one green, in both directions
    assert re.search(r"li\.hit\{color:#161", page)
    assert not re.search(r"figure\.query\{[^}]*#2a2", page)


def test_repeated_caption_text_is_listed_once_and_explained(written):
    _, page = written
    own, others = _image_queries(page)[1:3]
    assert own.count("a red square") == 1  # once, at its best rank, ticked because one copy is the query's
    items = re.findall(r"<li value='(\d)' class='(\w+)'>(.*?)</li>", own)
    assert [(v, c) for v, c, _ in items] == [("1", "hit"), ("3", "miss"), ("5", "hit")]
    assert "✓" in items[0][2]
    assert "same text at ranks 1, 2 and 4: rank 2 is this image's own, ranks 1 and 4 belong to other images" \
           in items[0][2]
    assert "same text" not in items[1][2] + items[2][2]
    assert others.count("a dog") == 1
    assert "same text at ranks 1 and 2, each the caption of another image" in others


def test_captions_and_keys_are_escaped_in_markdown_and_html(written):
    md, page = written
    for text in (md, page):
        assert "<script" not in text and "<img src=x" not in text and "<b>1</b>" not in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    line = next(ln for ln in md.splitlines() if "alert(1)" in ln)
    # markdown punctuation from a caption is literal: no emphasis, link or table cell made of it
    assert r"a \*cat\* on" in line and r"\| \[link\](http://x)" in line
    assert "&lt;b&gt;1&lt;/b&gt; ✓" in line


@pytest.fixture
def figures(monkeypatch):
    """The figures a plotting function saves, kept for inspection instead of being written."""
    saved = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: saved.append(fig))
    return saved


def _visible_ticks(ax, minor=False):
    ax.figure.canvas.draw()
    lo, hi = sorted(ax.get_xlim())
    return [(t.get_position()[0], t.get_text()) for t in ax.get_xticklabels(minor=minor)
            if lo <= t.get_position()[0] <= hi]


def test_training_plot_is_wide_with_whole_epoch_ticks(figures, tmp_path):
    history = [{"epoch": 0, "val/rsum": 5.0}, {"epoch": 1, "train/loss": 2.0, "val/rsum": 300.0}]
    assert report.plot_history(history, tmp_path / "training.png")
    (fig,) = figures
    assert fig.get_figwidth() >= 10  # drawn for the page's full width, not shrunk beside another plot
    for ax in fig.axes:
        ticks = [x for x, _ in _visible_ticks(ax)]
        assert ticks and all(float(x).is_integer() for x in ticks), ticks
        assert ax.get_xlim()[0] <= 0 and ax.get_xlim()[1] >= 1  # both panels span every epoch, 0 included


def test_rank_histogram_has_plain_ticks_and_bars_that_do_not_overlap(figures, tmp_path):
    assert plot_rank_histogram(_metrics()["ranks"], tmp_path / "ranks.png")
    (fig,) = figures
    (ax,) = fig.axes
    labels = [text for _, text in _visible_ticks(ax)]
    # plain ranks on log-spaced bins ending where recall@K is read; no 10^0 or 2×10^0
    assert labels == ["1", "2", "3–5", "6–10", "11–20", "21–50"], labels
    assert all(text == "" for _, text in _visible_ticks(ax, minor=True))
    bars = sorted((p.get_x(), p.get_x() + p.get_width()) for p in ax.patches
                  if isinstance(p, Rectangle) and p.get_height() > 0)
    assert len(bars) >= 2
    assert all(right <= nxt + 1e-9 for (_, right), (nxt, _) in zip(bars, bars[1:])), bars
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["image → text", "text → image"]
    # each direction's bars are shares of its own queries, every query counted (the worst rank, 40, included)
    assert [round(sum(b.get_height() for b in c), 6) for c in ax.containers] == [100.0, 100.0]
    assert ax.containers[0][0].get_height() == pytest.approx(100 * 2 / 7)  # i2t ranks 1, 1 of 7: R@1


def test_a_gallery_image_holding_most_captions_is_named_in_the_report(tmp_path):
    import torch

    from pipeline.evaluate import caption_concentration
    from pipeline.gallery import Gallery

    def gallery(owners, n):
        return Gallery(torch.zeros(n, 2), torch.zeros(len(owners), 2), torch.tensor(owners),
                       [f"s.tar/{i}" for i in range(n)], ["c"] * len(owners))

    assert caption_concentration(gallery([0, 1, 2, 3, 4, 5, 6, 7] * 5, 8)) is None  # five each: balanced
    lopsided = caption_concentration(gallery([3] * 99 + [0], 10))
    assert lopsided == {"key": "s.tar/3", "share": 0.99, "captions": 99}
    index = {"type": "flat", "recall@10_vs_exact": 1.0, "build_s": 0.0, "qps": 1.0}
    report.write_report(tmp_path, _metrics() | {"caption_concentration": lopsided}, index, "ckpt", {})
    md = (tmp_path / "report.md").read_text()
    assert "one gallery image, `s.tar/3`, holds 99% of the captions (99)" in md
    assert "caption_concentration" in (tmp_path / "report.json").read_text()
