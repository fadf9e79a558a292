"""report.html: one self-contained page (plots and thumbnails embedded as data URIs, no script, no external
resource) with the recall tables, recall@K curves, the rank histogram, training curves and example queries
both ways with hits marked. Formatting only: every number comes from report.json."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_recall_curves(curves: dict, path: Path) -> bool:
    """Recall@K for K = 1..50, both directions."""
    if not curves:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for d, label in (("i2t", "image → text"), ("t2i", "text → image")):
        ax.plot(range(1, len(curves[d]) + 1), curves[d], label=label)
    ax.set(xlabel="K", ylabel="Recall@K (%)", ylim=(0, 101), title="recall@K")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_rank_histogram(ranks: dict, path: Path) -> bool:
    """How far down the list the right answer sits, both directions, on log-spaced bins."""
    if not ranks:
        return False
    import numpy as np

    plt = _plt()
    top = max(max(ranks["i2t"], default=1), max(ranks["t2i"], default=1), 2)
    bins = np.unique(np.geomspace(1, top + 1, 30).astype(int))
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for d, label in (("i2t", "image → text"), ("t2i", "text → image")):
        ax.hist(ranks[d], bins=bins, alpha=0.6, label=label)
    ax.set(xscale="log", xlabel="rank of the ground truth (1 = first)", ylabel="queries", title="rank histogram")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def thumbnail(data: bytes, side: int = 96) -> str:
    """Image bytes -> a JPEG data URI of at most side x side pixels."""
    from PIL import Image

    from pipeline.data.transforms import decode_image

    img = decode_image(data)
    img.thumbnail((side, side), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _table(head: list[str], rows: list[list]) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _recall_rows(block: dict, ks: list[str]) -> list[list]:
    return [[name, *(f"{block[d][k]:.1f}" for k in ks), f"{block[d]['medr']:.0f}", f"{block[d]['meanr']:.1f}"]
            for d, name in (("i2t", "image → text"), ("t2i", "text → image"))]


def _img(uri: str | None, key: str, hit: bool = False) -> str:
    cls = "hit" if hit else "miss"
    inner = f'<img src="{uri}" alt="{html.escape(key)}">' if uri else '<div class="noimg">no image</div>'
    return f'<figure class="{cls}">{inner}<figcaption>{html.escape(key.rsplit("/", 1)[-1])}</figcaption></figure>'


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.3em .7em;text-align:right}
th{background:#f3f3f3}td:first-child{text-align:left}.plots img{max-width:49%}.q{margin:1em 0}
figure{display:inline-block;margin:.2em;text-align:center;font-size:.75em;border:3px solid #ddd;padding:2px}
figure.hit{border-color:#2a2}figure img{display:block;width:96px;height:96px;object-fit:cover}
.noimg{width:96px;height:96px;background:#eee}ol.caps li.hit{color:#161;font-weight:600}code{font-size:.9em}"""


def write_html(out: Path, report: dict, plots: list[Path], thumbs: dict[str, str]) -> Path:
    """report.html in `out` from the report dict, the PNG plots and key -> thumbnail data URIs."""
    ks = [k for k in report["i2t"] if k.startswith("R@")]
    head = ["direction", *ks, "medr", "meanr"]
    parts = [f"<h1>Retrieval report</h1><p>Checkpoint <code>{html.escape(str(report['checkpoint']))}</code> — "
             f"{report['n_images']} images, {report['n_captions']} captions; rsum <b>{report['rsum']:.1f}</b>"
             + (f" (untrained: {report['untrained_rsum']:.1f})" if "untrained_rsum" in report else "") + "</p>",
             "<h2>Exact search</h2>", _table(head, _recall_rows(report, ks))]
    if report.get("comparison"):
        rows = report["comparison"]
        parts += ["<h2>Checkpoints compared (same gallery)</h2>", _table(
            ["checkpoint", *(f"i2t {k}" for k in ks), *(f"t2i {k}" for k in ks), "rsum", "medr i2t / t2i"],
            [[html.escape(r["label"]), *(f"{r['i2t'][k]:.1f}" for k in ks), *(f"{r['t2i'][k]:.1f}" for k in ks),
              f"{r['rsum']:.1f}", f"{r['i2t']['medr']:.0f} / {r['t2i']['medr']:.0f}"] for r in rows])]
    if report.get("baselines"):
        from pipeline.report import baseline_rows

        parts += ["<h2>Baselines (same validation set)</h2>", _table(
            ["model", *(f"i2t {k}" for k in ks), *(f"t2i {k}" for k in ks), "rsum"],
            [[html.escape(r["label"]), *(f"{r['i2t'][k]:.1f}" for k in ks), *(f"{r['t2i'][k]:.1f}" for k in ks),
              f"{r['rsum']:.1f}"] for r in baseline_rows(report)])]
    for name, block in (report.get("protocols") or {}).items():
        parts += [f"<h2>COCO {html.escape(name.upper())} protocol</h2>", _table(head, _recall_rows(block, ks))]
    approx, idx = report.get("approximate"), report["index"]
    if approx:
        rk = [k for k in approx if k.startswith("R@")]
        parts += [f"<h2>Through the {html.escape(approx['type'])} index (text → image)</h2>",
                  _table(["search", *rk], [["exact", *(f"{report['t2i'][k]:.1f}" for k in rk)],
                                           [approx["type"], *(f"{approx[k]:.1f}" for k in rk)]])]
    zs = report.get("zero_shot")
    if zs:
        parts += [f"<h2>Zero-shot classification ({zs['classes']} classes, prompt “{html.escape(zs['prompt'])}”)"
                  "</h2>", _table([k for k in zs if k.startswith("top")],
                                  [[f"{zs[k]:.1f}" for k in zs if k.startswith("top")]])]
    parts.append(f"<p>Index: {html.escape(str(idx.get('type')))}, recall@10 vs exact "
                 f"{idx.get('recall@10_vs_exact')}, built in {idx.get('build_s') or 0:.3f} s, "
                 f"{idx.get('qps') or 0:.0f} queries/s.</p>")
    if plots:
        parts += ["<h2>Plots</h2><div class='plots'>"] + [f'<img src="{_png(p)}" alt="{p.stem}">' for p in plots]
        parts.append("</div>")
    if report.get("examples"):
        parts.append("<h2>Caption → top-5 images</h2>")
        for ex in report["examples"]:
            imgs = "".join(_img(thumbs.get(t["key"]), t["key"], t["hit"]) for t in ex["top"])
            parts.append(f"<div class='q'><p><i>{html.escape(ex['query'])}</i></p>{imgs}</div>")
    if report.get("image_examples"):
        parts.append("<h2>Image → top-5 captions</h2>")
        for ex in report["image_examples"]:
            caps = "".join(f"<li class='{'hit' if t['hit'] else 'miss'}'>{html.escape(t['caption'])} "
                           f"({t['score']:.2f}){' ✓' if t['hit'] else ''}</li>" for t in ex["top"])
            parts.append(f"<div class='q'>{_img(thumbs.get(ex['query']), ex['query'], True)}"
                         f"<ol class='caps'>{caps}</ol></div>")
    skipped = {s: by for s, by in (report.get("data", {}).get("skipped") or {}).items() if by}
    parts.append("<h2>Data</h2><p>" + ("; ".join(f"{html.escape(s)}: " + ", ".join(
        f"{html.escape(r)} ×{n}" for r, n in by.items()) for s, by in skipped.items()) or "No sample was skipped.")
        + "</p>")
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Retrieval report</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
